"""Parameters that become file or folder names stay inside their folder."""

from __future__ import annotations

import pytest
import yaml

from shoelib import generate as G
from shoelib import run
from shoelib.evaluation import load_eval_sets
from shoelib.paths import CONFIGS_DIR, PathNameError, RunPaths, path_name


@pytest.mark.parametrize("value", ["../../esc06", "..", ".", "/tmp/x", "a/b", "a\\b", ".hidden",
                                   "", "run name", "x" * 129, None, True, 1.5, ["demo"]])
def test_path_name_refuses_anything_but_one_plain_name(value):
    with pytest.raises(PathNameError, match=r"^run_name=.* cannot name a folder: use 1-128 letters"):
        path_name("run_name", value)


@pytest.mark.parametrize("value, name", [("demo", "demo"), ("v1.2_lr-1e4", "v1.2_lr-1e4"), (2, "2")])
def test_path_name_keeps_plain_names(value, name):
    assert path_name("run_name", value) == name


def test_run_folder_and_category_folder_stay_under_output_root(tmp_path):
    paths = RunPaths(tmp_path)
    assert paths.synthetic_run("v1") == tmp_path / "synthetic" / "v1"
    with pytest.raises(PathNameError, match=r"run_name='\.\./\.\./esc06'"):
        paths.synthetic_run("../../esc06")
    assert paths.processed("Casual Shoes") == tmp_path / "processed" / "casual_shoes"
    # The slug removes separators; a category with nothing left would write into processed/.
    with pytest.raises(PathNameError, match=r"category='\.\./\*' cannot name a folder: needs"):
        paths.processed("../*")


def test_generate_and_evaluate_refuse_an_escaping_run_name(tmp_path):
    demo = yaml.safe_load((CONFIGS_DIR / "demo.yaml").read_text())
    params = {**demo, "output_root": str(tmp_path), "run_name": "../../esc06", "model": "x"}
    with pytest.raises(PathNameError, match="run_name="):
        G.configs_from_params(params)
    with pytest.raises(PathNameError, match="run_name="):
        load_eval_sets(tmp_path, "Casual Shoes", "../../esc06")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_06_refuses_a_run_name_that_leaves_output_root(tmp_path, capsys):
    out = tmp_path / "a" / "b"
    code = run.main(["--profile", "demo", "--only", "06", "-p", "output_root", str(out),
                     "-p", "run_name", "../../esc06", "--reports-dir", str(tmp_path / "reports")])
    assert code == 1
    assert "PathNameError: run_name='../../esc06' cannot name a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"]  # nothing else was written
