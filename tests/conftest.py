"""Fixtures shared across test modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shoelib.paths import PROJECT_ROOT


@pytest.fixture(scope="session")
def real_sample_dir() -> Path:
    """../shared/real-sample: real styles.csv + 900 photos. Read-only: copy what you modify."""
    path = Path(os.environ.get("SHOELIB_REAL_SAMPLE", PROJECT_ROOT.parent / "shared" / "real-sample"))
    if not (path / "styles.csv").exists():
        pytest.skip(f"real sample not found at {path} (set SHOELIB_REAL_SAMPLE)")
    return path


@pytest.fixture(scope="session")
def real_catalog_dir() -> Path:
    """../shared/real-catalog: real styles.csv + 9,286 photos at 224 px. Read-only."""
    path = Path(os.environ.get("SHOELIB_REAL_CATALOG",
                               PROJECT_ROOT.parent / "shared" / "real-catalog"))
    if not (path / "styles.csv").exists():
        pytest.skip(f"real catalogue not found at {path} (set SHOELIB_REAL_CATALOG)")
    return path


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    """The tiny offline SD pipeline in diffusers folder layout, built once per test session."""
    from shoelib.tiny_sd import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: the tiny model's tensors are too small to split, and on
    a busy 2-core machine a second OpenMP thread spin-waiting made each step several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
