"""Where things live: the project root, and the per-run folders every notebook agrees on."""

from __future__ import annotations

import re
from collections.abc import Callable
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


def shown(path: str | Path) -> str:
    """`path` as a report prints it: relative to the project root where it lies inside it
    (`data/demo/analysis`), so that a shared report names no folder of the machine that ran
    it; other paths as given."""
    try:
        return str(Path(path).resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def slug(text: str) -> str:
    """'Casual Shoes' -> 'casual_shoes' (folder names)."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


class PathNameError(ValueError):
    """A parameter that would become a file or folder name but cannot be one safely."""


# One name, never a path: no separator, no "." or ".." (the first character is a letter or
# digit), nothing a shell or another OS would read specially.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def path_name(param: str, value: object, derive: Callable[[str], str] | None = None) -> str:
    """`value` (or `derive(value)`, e.g. its slug) checked as one file/folder name, so that a
    parameter can never place anything outside its parent folder and so outside `output_root`.

    Args:
        param: the parameter the user set, named in the error.
        value: what the user set.
        derive: how the name is made from `value`; None: `value` is the name.
    Raises:
        PathNameError: not text or a whole number, or a name that is empty, holds a path separator, starts with
            "." or has characters other than letters, digits, ".", "_" and "-".
    """
    # A number is fine (`-p run_name 2` arrives as an int); anything else is not a name.
    text = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else None
    name = (derive(text) if derive else text) if text is not None else None
    if name is None or not _NAME.fullmatch(name):
        rule = ("needs 1-128 letters or digits" if derive else
                "use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit "
                "(no '/' and no '..'), e.g. 'demo_2'")
        raise PathNameError(f"{param}={value!r} cannot name a folder: {rule}")
    return name


@dataclass(frozen=True)
class RunPaths:
    """The folders one run writes, all under `output_root`."""

    root: Path

    @classmethod
    def from_param(cls, output_root: str | Path) -> RunPaths:
        return cls(resolve(output_root))

    def relative(self, value: object) -> object:
        """A path under `root` as summaries store it, relative to `root`, so that a moved or
        copied output_root still finds its files (`locate` reads it back). Anything else
        (other paths, text, numbers) is returned unchanged; a list or tuple (several
        categories' folders), item by item, as a list."""
        if isinstance(value, list | tuple):
            return [self.relative(v) for v in value]
        if isinstance(value, str | Path) and Path(value).is_absolute():
            try:
                return str(Path(value).relative_to(self.root))
            except ValueError:
                pass
        return value

    def locate(self, stored: str | Path) -> Path:
        """The file a summary names: relative paths are under `root`, absolute ones as given."""
        path = Path(stored)
        return path if path.is_absolute() else self.root / path

    @property
    def analysis(self) -> Path:
        return self.root / "analysis"

    def processed(self, category: str) -> Path:
        return self.root / "processed" / path_name("category", category, slug)

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

    def synthetic_run(self, run_name: str) -> Path:
        """synthetic/<run_name>/: one run of 06, the run 07 evaluates."""
        return self.synthetic / path_name("run_name", run_name)

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation"

    @property
    def cache(self) -> Path:
        return self.root / "cache"
