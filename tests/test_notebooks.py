"""Notebook sources: stripped of outputs, one documented `parameters` cell, profiles that fit them."""

from __future__ import annotations

import ast

import nbformat
import pytest
import yaml

from shoelib import run
from shoelib.paths import CONFIGS_DIR

NOTEBOOKS = run.discover_notebooks()


@pytest.mark.parametrize("step", NOTEBOOKS, ids=lambda s: s.name)
def test_notebook_is_stripped(step):
    nb = nbformat.read(step.path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{step.name}: outputs stored"


@pytest.mark.parametrize("step", NOTEBOOKS, ids=lambda s: s.name)
def test_parameters_cell_is_flat_literals_with_comments(step):
    nb = nbformat.read(step.path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{step.name}: {len(tagged)} cells tagged 'parameters'"
    names = set()
    for line in tagged[0].source.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        code, sep, comment = line.partition("#")
        assert sep and comment.strip(), f"{step.name}: parameter without a comment: {line!r}"
        node = ast.parse(code).body[0]
        assert isinstance(node, ast.Assign), f"{step.name}: not an assignment: {line!r}"
        ast.literal_eval(node.value)  # flat literal, no expressions
        names.add(node.targets[0].id)
    # papermill skips a line with a second "=" (e.g. in its comment) with only a log warning:
    # the parameter would silently never be injected
    assert run.declared_parameters(step) == names, f"{step.name}: papermill cannot read every line"


@pytest.mark.parametrize("profile", sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml")))
def test_every_profile_key_is_declared_by_a_notebook(profile):
    params = yaml.safe_load((CONFIGS_DIR / f"{profile}.yaml").read_text())
    run.check_keys(params, {s.name: run.declared_parameters(s) for s in NOTEBOOKS})
