"""Run the notebook chain headless with papermill.

    python -m shoelib.run --profile demo                 # 01 -> 07 on the embedded default
    python -m shoelib.run --profile full --from 05       # resume the real job at training
    python -m shoelib.run --profile demo --only 01,02 -p data_root data/raw/fashion-dataset

Each notebook gets the keys of `configs/<profile>.yaml` (plus `-p` overrides) that its
`parameters` cell declares, and is written to `reports/<run>/NN_name.ipynb` with its full
`.html` and its reader version `.reader.html` beside it, and an `index.html` of the run
(`shoelib.reader`). The run stops at the first failing notebook and names the cell.

`<run>` is the profile when the run writes into the profile's own `output_root`, else the
name of the `output_root` folder, so that a run with other data never overwrites the
profile's reports; `--reports-dir` chooses the folder.

The kernel ends with the runner: on SIGTERM or SIGINT the runner shuts the kernel's process
group (the kernel and its worker processes) down and exits, and on Linux a SIGKILLed runner
takes its kernel along too (shoelib.processes), so no orphan keeps writing into the run.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import os
import re
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jupyter_client.manager import AsyncKernelManager

from shoelib import reader
from shoelib.paths import CONFIGS_DIR, NOTEBOOKS_DIR, PROJECT_ROOT, REPORTS_DIR, resolve, shown
from shoelib.processes import die_with_parent


class RunError(Exception):
    """A user mistake in the run request (unknown profile, key or notebook)."""


@dataclass(frozen=True)
class Step:
    number: str  # "01"
    path: Path   # notebooks/01_analysis.ipynb

    @property
    def name(self) -> str:
        return self.path.stem


def discover_notebooks(notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Step]:
    steps = [Step(p.name[:2], p) for p in sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb"))]
    if not steps:
        raise RunError(f"no notebooks named NN_*.ipynb in {notebooks_dir}")
    return steps


def select_steps(steps: list[Step], only: str | None, start: str | None) -> list[Step]:
    """`only`: comma-separated numbers ("01,02"); `start`: first number to run ("03")."""
    numbers = [s.number for s in steps]

    def check(n: str) -> str:
        n = n.strip().zfill(2)
        if n not in numbers:
            raise RunError(f"notebook {n!r} does not exist; choose from {', '.join(numbers)}")
        return n

    if only:
        wanted = {check(n) for n in only.split(",")}
        steps = [s for s in steps if s.number in wanted]
    if start:
        first = check(start)
        steps = [s for s in steps if s.number >= first]
    return steps


def load_profile(profile: str, configs_dir: Path = CONFIGS_DIR) -> dict[str, Any]:
    path = configs_dir / f"{profile}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in configs_dir.glob("*.yaml"))
        raise RunError(f"profile {profile!r} has no {path}; known profiles: {', '.join(known)}")
    params = yaml.safe_load(path.read_text()) or {}
    if not isinstance(params, dict):
        raise RunError(f"{path} must be a mapping of key: value, got {type(params).__name__}")
    return params


# Whole numbers joined by colons: YAML 1.1 reads `3:4` as the base-60 number 184.
_RATIO = re.compile(r"^\d+(:\d+)+$")


def parse_overrides(pairs: list[list[str]]) -> dict[str, Any]:
    """`-p key value` pairs; values are read as YAML scalars, so `40` is an int, `true` a bool,
    except a ratio such as `3:4` (06's aspect_ratio), which stays text."""
    return {key: value if _RATIO.match(value.strip()) else yaml.safe_load(value)
            for key, value in pairs}


def declared_parameters(step: Step) -> dict[str, Any]:
    """The names the notebook's `parameters` cell declares, with their default values."""
    import papermill

    params = papermill.inspect_notebook(str(step.path))
    if not params:
        raise RunError(f"{step.path.name} has no cell tagged 'parameters'")
    return {name: ast.literal_eval(p["default"]) for name, p in params.items()}


def as_declared_type(value: Any, default: Any) -> Any:
    """A text value read as a number where the parameter's default is a number.

    YAML reads `1e-4` (without a dot) as text, so `-p learning_rate 1e-4` would reach the
    notebook as a string; a text that is no number stays text, and the notebook's config
    names the parameter.
    """
    if isinstance(default, bool) or not isinstance(default, int | float) or not isinstance(value, str):
        return value
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def check_keys(params: dict[str, Any], declared: dict[str, Any]) -> None:
    """Every key must be used by some notebook: a typo must not silently run the defaults."""
    known = set().union(*declared.values())
    for key in params:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise RunError(f"parameter {key!r} is declared by no notebook{hint}")


def typed_parameters(params: dict[str, Any], declared: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`params` checked against the notebooks' parameters (`check_keys`), each text value read
    as a number where the parameter's default is one (`as_declared_type`)."""
    check_keys(params, declared)
    defaults = {k: v for names in declared.values() for k, v in names.items()}
    return {k: as_declared_type(v, defaults[k]) for k, v in params.items()}


def reports_folder(profile: str, params: dict[str, Any], reports_dir: Path | None = None,
                   configs_dir: Path = CONFIGS_DIR) -> Path:
    """Where a run's reports go: `reports_dir` if given; reports/<profile> when the run
    writes into the profile's own output_root; else reports/<name of output_root>.

    Raises:
        RunError: output_root's folder name is another profile's name (its reports would
            replace that profile's); the message says to pass --reports-dir.
    """
    if reports_dir is not None:
        return reports_dir
    own = load_profile(profile, configs_dir).get("output_root")
    output_root = params.get("output_root", own)
    if output_root is None or (own is not None and resolve(str(output_root)) == resolve(str(own))):
        return REPORTS_DIR / profile
    name = resolve(str(output_root)).name
    if (configs_dir / f"{name}.yaml").exists():
        raise RunError(f"output_root {output_root} would write its reports into reports/{name}/, "
                       f"the {name} profile's; pass --reports-dir <folder> (or name the output "
                       "folder otherwise)")
    return REPORTS_DIR / name


class RunnerBoundKernelManager(AsyncKernelManager):
    """Starts the kernel so that it is killed when the runner process ends, however it ends."""

    async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
        runner = os.getpid()
        await super()._async_launch_kernel(kernel_cmd, preexec_fn=lambda: die_with_parent(runner),
                                           **kw)


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM stops the run as Ctrl-C does, so the same clean-up runs (nbclient shuts the
    kernel's process group down, the runner exits 130). SIGINT gets the same handler too: a
    runner started as a background job inherits SIGINT ignored, and Ctrl-C must still stop it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_step(step: Step, params: dict[str, Any], out_dir: Path) -> Path:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / step.path.name
    try:
        with sigterm_as_interrupt():
            papermill.execute_notebook(
                str(step.path),
                str(output),
                parameters=params,
                cwd=str(PROJECT_ROOT),
                progress_bar=True,
                report_mode=False,
                kernel_manager_class=RunnerBoundKernelManager,
            )
    except PapermillExecutionError as err:
        reader.render(output)  # the failed run is a record too
        reader.write_index(out_dir)
        raise RunError(
            f"{step.name} failed in cell {err.exec_count} ({err.ename}: {err.evalue})\n"
            f"  full traceback: {output.with_suffix('.html')}"
        ) from None
    reader.render(output)
    return output


def run(profile: str, only: str | None = None, start: str | None = None,
        overrides: dict[str, Any] | None = None, reports_dir: Path | None = None) -> list[Path]:
    params = {**load_profile(profile), **(overrides or {})}
    all_steps = discover_notebooks()
    steps = select_steps(all_steps, only, start)
    # Keys are checked against every notebook, not just the selected ones: one profile
    # file serves them all.
    declared = {s.name: declared_parameters(s) for s in all_steps}
    params = typed_parameters(params, declared)
    if profile == "demo":
        from shoelib.demo import ensure_demo_assets

        ensure_demo_assets()
    out_dir = reports_folder(profile, params, reports_dir)
    written = []
    for step in steps:
        t0 = time.perf_counter()
        print(f"[{step.name}] running ...", flush=True)
        step_params = {k: v for k, v in params.items() if k in declared[step.name]}
        written.append(run_step(step, step_params, out_dir))
        print(f"[{step.name}] done in {time.perf_counter() - t0:.1f} s -> "
              f"{shown(written[-1].with_suffix(reader.READER_SUFFIX))}", flush=True)
    index = reader.write_index(out_dir)
    print(f"reports: {shown(out_dir)}/ (start with {shown(index)})", flush=True)
    return written



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shoelib.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="demo", help="configs/<profile>.yaml (demo | full)")
    parser.add_argument("--only", help="comma-separated notebook numbers, e.g. 01,02")
    parser.add_argument("--from", dest="start", help="first notebook number to run, e.g. 03")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="override one parameter (repeatable)")
    parser.add_argument("--reports-dir", type=Path,
                        help="default: reports/<profile> with the profile's own output_root, "
                             "else reports/<output_root folder name>")
    args = parser.parse_args(argv)
    try:
        run(args.profile, args.only, args.start, parse_overrides(args.p), args.reports_dir)
    except RunError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the kernel is already shut down
        print("error: interrupted; the kernel was stopped. Rerun the same command to resume",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
