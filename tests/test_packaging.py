"""Every package the code imports is declared in pyproject.toml, so a fresh install has it."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from shoelib.paths import PROJECT_ROOT


def _sources() -> dict[str, str]:
    """Python source of shoelib/, benchmarks/ and the notebooks' code cells, by file."""
    out = {str(p): p.read_text() for folder in ("shoelib", "benchmarks")
           for p in sorted((PROJECT_ROOT / folder).glob("*.py"))}
    for nb in sorted((PROJECT_ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        out[str(nb)] = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return out


def _imported_top_level_names(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    # A benchmark may import another one (they run as scripts from benchmarks/).
    local = {p.stem for p in (PROJECT_ROOT / "benchmarks").glob("*.py")}
    return names - set(sys.stdlib_module_names) - {"shoelib"} - local


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _dependencies() -> list[str]:
    """The `dependencies` list of pyproject.toml (read as text: tomllib needs Python 3.11)."""
    text = (PROJECT_ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    return re.findall(r'^\s*"([^"]+)",', block, re.M)


def _optional_dependencies() -> list[str]:
    """Every package of pyproject.toml's extras (`name = ["pkg==1.0", ...]` lines)."""
    text = (PROJECT_ROOT / "pyproject.toml").read_text()
    block = re.search(r"^\[project\.optional-dependencies\](.*?)^\[", text, re.S | re.M).group(1)
    return re.findall(r'"([^"]+)"', block)


def test_every_imported_package_is_a_declared_dependency():
    """A package imported anywhere is a dependency or in an extra (e.g. `cuda`)."""
    declared = {_normalise(re.split(r"[<>=!~\[; ]", d)[0])
                for d in _dependencies() + _optional_dependencies()}
    providers = importlib.metadata.packages_distributions()
    undeclared = {}
    for path, source in _sources().items():
        for name in _imported_top_level_names(source):
            if not {_normalise(d) for d in providers.get(name, [name])} & declared:
                undeclared.setdefault(name, path)
    assert undeclared == {}, f"imported but not in pyproject dependencies: {undeclared}"


def test_dependencies_are_pinned_to_the_installed_versions():
    specs = _dependencies()
    assert any(s.startswith("torch==") for s in specs)  # the list was found
    for spec in specs:
        name, version = spec.split("==")
        assert importlib.metadata.version(name).split("+")[0] == version, spec  # 2.13.0+cpu


def test_make_lab_allows_root_only_as_root():
    """Jupyter refuses to run as root without --allow-root: `make lab` adds it for root (a
    container's usual user) and only then."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    plan = subprocess.run(["make", "-n", "lab"], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, check=True).stdout
    line = next(line for line in plan.splitlines() if "jupyter lab" in line)
    args = subprocess.run(["sh", "-c", line.replace(".venv/bin/jupyter lab", "echo", 1)],
                          capture_output=True, text=True, check=True).stdout.split()
    assert args[0] == "notebooks/"
    assert ("--allow-root" in args) == (os.geteuid() == 0)
