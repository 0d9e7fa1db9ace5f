"""Where things live: the project root, and the per-run folders every notebook agrees on."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIGS_DIR = PROJECT_ROOT / "configs"
NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
REPORTS_DIR = PROJECT_ROOT / "reports"
DEMO_DIR = PROJECT_ROOT / "data" / "demo"
ASSETS_DIR = PROJECT_ROOT / "assets"  # shipped with the repository: demo photos, models


def resolve(path: str | Path) -> Path:
    """A path from a parameter: absolute as given, relative to the project root otherwise.

    Notebooks run with notebooks/ as working directory (JupyterLab) or the project root
    (papermill); resolving against the root makes the same parameter mean the same folder.
    """
    p = Path(path).expanduser()
    return p if p.is_absolute() else PROJECT_ROOT / p


def slug(text: str) -> str:
    """'Casual Shoes' -> 'casual_shoes' (folder names)."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


@dataclass(frozen=True)
class RunPaths:
    """The folders one run writes, all under `output_root`."""

    root: Path

    @classmethod
    def from_param(cls, output_root: str | Path) -> RunPaths:
        return cls(resolve(output_root))

    @property
    def analysis(self) -> Path:
        return self.root / "analysis"

    def processed(self, category: str) -> Path:
        return self.root / "processed" / slug(category)

    @property
    def env(self) -> Path:
        return self.root / "environment"

    @property
    def inference(self) -> Path:
        return self.root / "inference"

    @property
    def lora(self) -> Path:
        return self.root / "lora"

    @property
    def synthetic(self) -> Path:
        return self.root / "synthetic"

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation"

    @property
    def cache(self) -> Path:
        return self.root / "cache"
