"""The papermill runner: selection, parameter checks, failure reporting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml

from shoelib import run
from shoelib.paths import PROJECT_ROOT
from shoelib.run import RunError, Step


def _notebook(path: Path, params_src: str, body_src: str) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(params_src)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body_src)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def _steps(*numbers: str) -> list[Step]:
    return [Step(n, Path(f"{n}_x.ipynb")) for n in numbers]


def test_select_only_and_from():
    steps = _steps("01", "02", "03", "04")
    assert [s.number for s in run.select_steps(steps, "02,4", None)] == ["02", "04"]
    assert [s.number for s in run.select_steps(steps, None, "03")] == ["03", "04"]
    assert [s.number for s in run.select_steps(steps, None, None)] == ["01", "02", "03", "04"]


def test_select_unknown_notebook_names_the_choices():
    with pytest.raises(RunError, match=r"'09' does not exist; choose from 01, 02"):
        run.select_steps(_steps("01", "02"), "09", None)


def test_overrides_are_yaml_scalars():
    got = run.parse_overrides([["max_train_steps", "40"], ["device", "cpu"], ["flip", "true"]])
    assert got == {"max_train_steps": 40, "device": "cpu", "flip": True}


def test_a_ratio_override_stays_text_not_yaml_base_60():
    assert yaml.safe_load("3:4") == 184  # what YAML 1.1 makes of it
    got = run.parse_overrides([["aspect_ratio", "3:4"], ["aspect_ratio_quoted", '"16:9"']])
    assert got == {"aspect_ratio": "3:4", "aspect_ratio_quoted": "16:9"}


def test_unknown_key_is_an_error_with_suggestion():
    declared = {"01_analysis": {"data_root", "category"}, "05_train": {"max_train_steps"}}
    with pytest.raises(RunError, match=r"'max_train_step' is declared by no notebook; did you mean max_train_steps"):
        run.check_keys({"data_root": "x", "max_train_step": 3}, declared)
    run.check_keys({"data_root": "x", "max_train_steps": 3}, declared)  # all known: no error


def test_unknown_profile_lists_known(tmp_path):
    (tmp_path / "demo.yaml").write_text("a: 1\n")
    with pytest.raises(RunError, match=r"profile 'ful' has no .*known profiles: demo"):
        run.load_profile("ful", tmp_path)
    assert run.load_profile("demo", tmp_path) == {"a": 1}


def test_notebook_without_parameters_cell_is_refused(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    nbformat.write(nb, tmp_path / "01_x.ipynb")
    with pytest.raises(RunError, match="no cell tagged 'parameters'"):
        run.declared_parameters(Step("01", tmp_path / "01_x.ipynb"))


def test_run_step_injects_parameters_and_renders_html(tmp_path):
    src = _notebook(tmp_path / "01_ok.ipynb", "answer = 1  # a number",
                    "assert answer == 42, answer\nprint('answer', answer)")
    out = run.run_step(Step("01", src), {"answer": 42}, tmp_path / "reports")
    executed = nbformat.read(out, as_version=4)
    assert "answer 42" in "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert out.with_suffix(".html").stat().st_size > 1000


def test_failing_notebook_names_cell_and_error(tmp_path):
    src = _notebook(tmp_path / "02_bad.ipynb", "n = 1  # a number", "raise ValueError(f'n={n} is wrong; use 2')")
    with pytest.raises(RunError, match=r"02_bad failed in cell \d+ \(ValueError: n=1 is wrong; use 2\)"):
        run.run_step(Step("02", src), {}, tmp_path / "reports")
    assert (tmp_path / "reports" / "02_bad.html").exists()  # the failed run is kept as a record


def test_main_reports_user_errors_without_traceback(capsys):
    assert run.main(["--profile", "no-such-profile"]) == 1
    assert "error: profile 'no-such-profile'" in capsys.readouterr().err


# Starts shoelib's image workers, then blocks in native code holding the GIL (as a long
# decode or tensor op may), where ipykernel's own parent polling cannot run.
BUSY_WITH_WORKERS = """
import ctypes, os
from PIL import Image
from shoelib import images
for i in range(8):
    Image.new("RGB", (16, 16)).save(f"{folder}/src{i}.png")
jobs = [(f"{folder}/src{i}.png", f"{folder}/dst{i}.png") for i in range(8)]
results = images.prepare_images(jobs, images.PrepareConfig(size=8), workers=2, progress=False)
next(results)  # the pool is up, its workers wait for more
open(f"{folder}/kernel.pid", "w").write(str(os.getpid()))
ctypes.PyDLL(None).sleep(600)
"""
RUNNER = "import sys; from pathlib import Path; from shoelib.run import Step, run_step; " \
         "run_step(Step('01', Path(sys.argv[1])), {}, Path(sys.argv[2]))"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT],
                         ids=lambda sig: sig.name)
def test_a_stopped_runner_takes_its_kernel_and_workers_along(tmp_path, sig):
    import psutil

    src = _notebook(tmp_path / "01_busy.ipynb", f"folder = {str(tmp_path)!r}", BUSY_WITH_WORKERS)
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(src), str(tmp_path / "reports")],
                              env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "kernel.pid").is_file() and time.monotonic() < deadline:
            assert runner.poll() is None, "the runner ended before the notebook got busy"
            time.sleep(0.1)
        kernel = psutil.Process(int((tmp_path / "kernel.pid").read_text()))
        family = [kernel, *kernel.children(recursive=True)]
        assert kernel.ppid() == runner.pid and len(family) == 3  # kernel + 2 image workers
        runner.send_signal(sig)
        runner.wait(timeout=60)
        _, alive = psutil.wait_procs(family, timeout=20)
        alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
        assert alive == [], f"survived {signal.Signals(sig).name} of the runner: {alive}"
    finally:
        if runner.poll() is None:
            for proc in psutil.Process(runner.pid).children(recursive=True):
                proc.kill()
            runner.kill()
        runner.wait()


def test_text_becomes_a_number_where_the_parameters_cell_holds_one():
    declared = {s.name: run.declared_parameters(s) for s in run.discover_notebooks()}
    got = run.typed_parameters(
        run.parse_overrides([["learning_rate", "1e-4"], ["max_train_steps", "40"],
                             ["top_n", "abc"], ["run_name", "v1e-4"], ["lora_path", "none"]]),
        declared)
    assert got == {"learning_rate": 1e-4, "max_train_steps": 40, "top_n": "abc",
                   "run_name": "v1e-4", "lora_path": "none"}
    assert type(got["learning_rate"]) is float and type(got["max_train_steps"]) is int
    assert run.declared_parameters(run.discover_notebooks()[0])["top_n"] == 15


def test_a_bad_parameter_stops_the_run_with_the_notebooks_one_line_error(tmp_path):
    step = run.discover_notebooks()[0]  # 01_analysis checks its parameters in its first code cell
    # (cell 3 in papermill's count: the injected parameters are cell 2)
    with pytest.raises(RunError) as err:
        run.run_step(step, {"top_n": "abc", "output_root": str(tmp_path / "out")},
                     tmp_path / "reports")
    first_line = str(err.value).splitlines()[0]
    assert first_line == (f"{step.name} failed in cell 3 (CatalogError: top_n='abc' (it is text) "
                          "must be a whole number >= 1; use e.g. 15)")
    assert not (tmp_path / "out").exists()  # nothing was written before the check
