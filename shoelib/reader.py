"""Reports for the people who read them: a reader version of every executed notebook and an
index of the run.

Beside each executed notebook `NN_name.ipynb` the runner writes

- `NN_name.html`: the full version, code and outputs (the record of what ran);
- `NN_name.reader.html`: outputs only, titled after the notebook and the run, its parameters
  shown once as a table, the cells tagged `summary` first;

and `index.html`: each notebook's key figures (read from the `summary.json` it wrote), a
verdict line and links to both versions. The index is plain HTML with its style inline and
no script, so it reads the same offline.

    python -m shoelib.reader reports/demo     # (re)write both versions and the index
"""

from __future__ import annotations

import ast
import copy
import html
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

from shoelib import report
from shoelib.io import write_text
from shoelib.paths import RunPaths, slug

READER_SUFFIX = ".reader.html"
SUMMARY_TAG = "summary"  # cells shown first in the reader version


@dataclass(frozen=True)
class Parameter:
    name: str
    value: Any
    help: str
    overridden: bool  # the run (profile or -p) set another value than the notebook's default


def parameters(nb: nbformat.NotebookNode) -> list[Parameter]:
    """The parameters an executed notebook ran with: its `parameters` cell's defaults, with
    the values papermill injected in their place."""
    from papermill.translators import PythonTranslator

    cell = next((c for c in nb.cells if "parameters" in c.metadata.get("tags", [])), None)
    injected = nb.metadata.get("papermill", {}).get("parameters", {}) or {}
    declared = PythonTranslator.inspect(cell) if cell is not None else []
    out = []
    for p in declared:
        try:
            default = ast.literal_eval(p.default)
        except (ValueError, SyntaxError):
            default = p.default
        value = injected.get(p.name, default)
        out.append(Parameter(p.name, value, p.help or "", value != default))
    return out


def notebook_title(nb: nbformat.NotebookNode, fallback: str) -> str:
    """The first markdown heading ("01 · Catalogue analysis"), else `fallback`."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return fallback


def failure(nb: nbformat.NotebookNode) -> str | None:
    """How the run of this notebook failed ("ValueError: ... in cell 3"), or None."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return f"{out.get('ename')}: {out.get('evalue')} (cell {cell.get('execution_count')})"
    return "failed" if nb.metadata.get("papermill", {}).get("exception") else None


def parameters_markdown(params: list[Parameter]) -> str:
    rows = ["| parameter | value | what it is |", "|:--|:--|:--|"]
    for p in params:
        value = report.text(json.dumps(p.value, ensure_ascii=False) if not isinstance(p.value, str)
                            else p.value)
        mark = " (notebook default differs)" if p.overridden else ""
        rows.append(f"| `{p.name}` | {value or '&quot;&quot;'}{mark} | {report.text(p.help)} |")
    return "\n".join(rows)


def reader_notebook(nb: nbformat.NotebookNode, run: str, full_name: str) -> nbformat.NotebookNode:
    """A copy of `nb` for readers: no parameter cells (their values become one table under
    the introduction), the cells tagged `summary` first."""
    params = parameters(nb)
    reader = copy.deepcopy(nb)
    drop = {"parameters", "injected-parameters"}
    cells = [c for c in reader.cells if not drop & set(c.metadata.get("tags", []))]
    first = [c for c in cells if SUMMARY_TAG in c.metadata.get("tags", [])]
    rest = [c for c in cells if c not in first]
    intro, rest = (rest[:1], rest[1:]) if rest and rest[0].cell_type == "markdown" else ([], rest)
    table = nbformat.v4.new_markdown_cell(
        f"**Run `{report.text(run)}`.** This is the reader version: outputs only. Code and every "
        f"output: [{full_name}]({full_name}).\n\n"
        # a long list starts folded, so that the first result stays near the top
        f"<details{' open' if len(params) <= 8 else ''}><summary>Parameters of this run "
        f"({len(params)})</summary>\n\n"
        f"{parameters_markdown(params)}\n\n</details>")
    reader.cells = [*intro, table, *first, *rest]
    return reader


def _export(nb: nbformat.NotebookNode, title: str, **options: Any) -> str:
    from nbconvert import HTMLExporter

    nb = copy.copy(nb)
    nb.metadata = {**nb.metadata, "title": title}  # the page title; nbconvert's default: "Notebook"
    body, _ = HTMLExporter(**options).from_notebook_node(nb)
    return body


def render(notebook_path: Path) -> tuple[Path, Path]:
    """Write the full (`NN_name.html`) and reader (`NN_name.reader.html`) versions of an
    executed notebook; the run is named after the folder it lies in."""
    nb = nbformat.read(notebook_path, as_version=4)
    run = notebook_path.parent.name
    title = f"{notebook_title(nb, notebook_path.stem)} · run {run}"
    full = write_text(notebook_path.with_suffix(".html"), _export(nb, title))
    reader = reader_notebook(nb, run, full.name)
    body = _export(reader, title, exclude_input=True, exclude_input_prompt=True,
                   exclude_output_prompt=True)
    return full, write_text(notebook_path.with_suffix(READER_SUFFIX), body)


# --- the run index

Figures = list[tuple[str, str]]


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _n(value: Any, digits: int = 3) -> str:
    return report.number(value, digits)


def _analysis(paths: RunPaths, p: dict) -> Figures:
    s = _read(paths.analysis / "summary.json")
    if s is None:
        return []
    return [("rows read", _n(s.get("rows_read"))),
            (f"{p.get('category', 'category')} rows", _n(s.get("category_rows"))),
            ("readable images", f"{_n(s.get('images_ok'))} of {_n(s.get('category_rows'))}"),
            ("rows pandas' on_bad_lines='skip' would lose", _n(s.get("rows_lost_by_pandas_skip")))]


def _prepared(paths: RunPaths, p: dict) -> Figures:
    s = _read(paths.processed(p.get("category", "")) / "summary.json")
    if s is None:
        return []
    splits = s.get("splits") or {}
    rows = [("images prepared", _n(s.get("exported"))),
            ("splits", " / ".join(f"{k} {_n(v)}" for k, v in splits.items())),
            ("rows skipped", _n(s.get("skipped_rows")))]
    if shares := s.get("foreground_share_mean"):
        rows.append(("mean foreground share", " / ".join(f"{k} {_n(v, 3)}"
                                                         for k, v in shares.items())))
    return rows


def _environment(paths: RunPaths, p: dict) -> Figures:
    s = _read(paths.env / "env.json")
    if s is None:
        return []
    return [("device", f"{s.get('device')} ({s.get('dtype')})"), ("why", str(s.get("reason", "")))]


def _inference(paths: RunPaths, p: dict) -> Figures:
    s = _read(paths.inference / "summary.json")
    if s is None:
        return []
    rows = [("test images passing the checks", f"{_n(s.get('n_ok'))} of {_n(s.get('n_images'))}"),
            ("seconds per image (steady)", _n(s.get("seconds_steady")))]
    for m in (s.get("base_check") or {}).get("measures", []):
        rows.append((f"base model: {m['measure']}",
                     f"{m['generated']} vs real {m['real photos']} (N {m['n']})"))
    return rows


def _lora(paths: RunPaths, p: dict) -> Figures:
    s = _read(paths.lora / "summary.json")
    if s is None:
        return []
    rows = [("LoRA steps", _n(s.get("steps"))),
            ("training images", _n((s.get("dataset") or {}).get("num_train_images")))]
    val = s.get("val_loss") or []
    if val:
        (first_step, first), (last_step, last) = val[0], val[-1]
        rows.append(("validation loss", f"{_n(first, 4)} (step {first_step}) → "
                                        f"{_n(last, 4)} (step {last_step})"))
    foreground = s.get("val_loss_foreground") or []
    if foreground:
        (first_step, first), (last_step, last) = foreground[0], foreground[-1]
        rows.append(("validation loss on the product", f"{_n(first, 4)} (step {first_step}) → "
                                                       f"{_n(last, 4)} (step {last_step})"))
    return rows


def _synthetic(paths: RunPaths, p: dict) -> Figures:
    rows = []
    for key in ("run_name", "base_run_name"):
        if not p.get(key):
            continue
        try:
            folder = paths.synthetic_run(p[key])
        except ValueError:
            continue
        s = _read(folder / "summary.json")
        if s is not None:
            rows.append((f"images generated ({p[key]})",
                         f"{_n(s.get('n_images'))} of {_n(s.get('n_planned'))}, "
                         f"{_n(s.get('n_failed'))} given up, "
                         f"{_n(s.get('seconds_per_image'))} s per image"))
    return rows


def _interval(row: dict) -> str:
    value = _n(row.get("value"))
    if row.get("value") is None:
        return f"— ({row.get('note', '')})"
    return value + (f" ± {_n(row['std'])}" if row.get("std") is not None else "")


def _headline_n(row: dict) -> str:
    return ", ".join(f"{k.removeprefix('n_')} {_n(row[k])}" for k in ("n_real", "n_synthetic")
                     if row.get(k) is not None)


def _evaluation(paths: RunPaths, p: dict) -> Figures:
    s = _read(paths.evaluation / "summary.json")
    if s is None:
        return []
    rows = []
    for r in s.get("results", [])[:4]:  # the fidelity rows lead 07's table
        rows.append((r["name"], f"{_interval(r)} (N: {_headline_n(r) or '—'})"))
    for r in s.get("base_vs_lora") or []:
        cells = [f"{k} {_n(v)}" for k, v in r.items()
                 if k not in ("measure", "verdict") and not report.is_missing(v)]
        rows.append((f"base vs LoRA: {r.get('measure')}",
                     f"{'; '.join(cells)} → {r.get('verdict', '')}"))
    return rows


def _human(paths: RunPaths, p: dict) -> Figures:
    s = _read(paths.evaluation / "summary.json") or {}
    human = s.get("human")
    if not human:
        return [("ratings", "none yet (rate in JupyterLab with 08)")]
    return [(k, str(v)) for k, v in human.items() if isinstance(v, int | float | str)][:6]


def _study(paths: RunPaths, p: dict) -> Figures:
    if not p.get("run_name"):
        return []
    s = _read(paths.root / "study" / slug(p["run_name"]) / "summary.json")
    if s is None:
        return []
    rows = []
    for task, t in (s.get("tasks") or {}).items():
        for r in t.get("summary", []):
            if r.get("fraction") in (0.1, 1.0) or r.get("fraction") is None:
                rows.append((f"{task}: {r['training_set']}",
                             f"accuracy {_n(r['accuracy'])} [{_n(r['accuracy_lo'])}, "
                             f"{_n(r['accuracy_hi'])}] (N test {_n(r['n_test'])})"))
    rows += [("verdict", line) for line in s.get("lines", []) if "10% real" in line]
    return rows


KEY_FIGURES: dict[str, Callable[[RunPaths, dict], Figures]] = {
    "01": _analysis, "02": _prepared, "03": _environment, "04": _inference, "05": _lora,
    "06": _synthetic, "07": _evaluation, "08": _human, "09": _study}


@dataclass(frozen=True)
class Entry:
    notebook: Path
    title: str
    failure: str | None
    figures: Figures


def entries(reports_dir: Path) -> list[Entry]:
    """One entry per executed notebook in `reports_dir`, with its key figures."""
    out = []
    for path in sorted(reports_dir.glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        params = {p.name: p.value for p in parameters(nb)}
        figures: Figures = []
        extract = KEY_FIGURES.get(path.name[:2])
        if extract and "output_root" in params:
            try:
                figures = extract(RunPaths.from_param(params["output_root"]), params)
            except (KeyError, TypeError, ValueError) as err:
                figures = [("key figures", f"unreadable summary ({type(err).__name__}: {err})")]
        out.append(Entry(path, notebook_title(nb, path.stem), failure(nb), figures))
    return out


def verdict(items: list[Entry]) -> str:
    """One line: did every notebook run, and what did the evaluation conclude."""
    failed = [e for e in items if e.failure]
    line = (f"All {len(items)} notebooks ran." if not failed else
            f"{len(items) - len(failed)} of {len(items)} notebooks ran; "
            f"{failed[0].notebook.stem} failed: {failed[0].failure}.")
    lora = [v for e in items if e.notebook.name.startswith("07")
            for k, v in e.figures if k.startswith("base vs LoRA")]
    if lora:
        line += " Base model vs LoRA: " + "; ".join(
            f"{k.removeprefix('base vs LoRA: ')} {v.rsplit('→ ', 1)[-1]}"
            for e in items for k, v in e.figures if k.startswith("base vs LoRA")) + "."
    return line


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       color: #222; line-height: 1.4; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.15rem; margin: 1.6rem 0 0.3rem; }
.verdict { padding: 0.6rem 0.9rem; background: #eef4ff; border-left: 4px solid #3b6fd8; }
.failed { color: #b00020; font-weight: 600; }
table { border-collapse: collapse; margin: 0.3rem 0; }
td { padding: 0.15rem 0.8rem 0.15rem 0; vertical-align: top; text-align: left; }
td.figure { color: #555; }
.links a { margin-right: 1rem; }
"""


def index_html(reports_dir: Path, items: list[Entry]) -> str:
    run = reports_dir.name
    esc = html.escape
    parts = [f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
             f"<title>Run {esc(run)}: reports</title><style>{STYLE}</style></head><body>",
             f"<h1>Run <code>{esc(run)}</code>: reports</h1>",
             f"<p class='verdict'>{esc(verdict(items))}</p>"]
    for e in items:
        stem = e.notebook.stem
        parts.append(f"<h2>{esc(e.title)}</h2>")
        if e.failure:
            parts.append(f"<p class='failed'>failed: {esc(e.failure)}</p>")
        if e.figures:
            parts.append("<table>" + "".join(
                f"<tr><td class='figure'>{esc(k)}</td><td>{esc(v)}</td></tr>"
                for k, v in e.figures) + "</table>")
        links = [(f"{stem}{READER_SUFFIX}", "reader version"), (f"{stem}.html", "full version"),
                 (f"{stem}.ipynb", "executed notebook")]
        parts.append("<p class='links'>" + "".join(
            f"<a href='{esc(href)}'>{esc(text)}</a>" for href, text in links
            if (reports_dir / href).exists()) + "</p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_index(reports_dir: Path) -> Path:
    """reports_dir/index.html for the executed notebooks it holds."""
    return write_text(reports_dir / "index.html", index_html(reports_dir, entries(reports_dir)))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: python -m shoelib.reader REPORTS_FOLDER (e.g. reports/demo)", file=sys.stderr)
        return 1
    folder = Path(args[0])
    for nb in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
        render(nb)
    print(write_index(folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
