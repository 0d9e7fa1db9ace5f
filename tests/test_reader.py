"""Reports for readers: the reader version of an executed notebook, the run index, and where
a run's reports go."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest

from shoelib import reader, run
from shoelib.paths import REPORTS_DIR
from shoelib.run import RunError, Step

FIGURE_CELL = """
import json, pathlib
import matplotlib.pyplot as plt
for k in range(2):
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, k + 1])
    plt.show()
out = pathlib.Path(output_root) / "analysis"
out.mkdir(parents=True, exist_ok=True)
(out / "summary.json").write_text(json.dumps({"rows_read": 12345, "category_rows": 67,
                                              "images_ok": 60, "rows_lost_by_pandas_skip": 4}))
print("secret_code_marker" [:6])
"""


@pytest.fixture(scope="module")
def story(tmp_path_factory) -> tuple[Path, Path]:
    """(executed notebook, its output_root): a small notebook with two figures, run once by
    the runner into reports/myrun."""
    tmp_path = tmp_path_factory.mktemp("story")
    return executed(tmp_path), tmp_path / "out"


def executed(tmp_path: Path, name: str = "01_story.ipynb") -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(
        'output_root = "nowhere"  # run folder\nthreshold = 0.5  # how strict')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# 01 · A story\n\nWhat it shows."), params,
                nbformat.v4.new_markdown_cell("## 1. Figures"),
                nbformat.v4.new_code_cell(FIGURE_CELL)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    src = tmp_path / "src" / name
    src.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, src)
    return run.run_step(Step(name[:2], src), {"output_root": str(tmp_path / "out")},
                        tmp_path / "reports" / "myrun")


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a" and "href" in attrs:
            self.hrefs.append(attrs["href"])
        if tag in ("script", "link", "img") and (attrs.get("src") or attrs.get("href")):
            self.srcs.append(attrs.get("src") or attrs.get("href"))


def test_reader_version_hides_code_keeps_every_figure_and_shows_parameters_once(story):
    notebook, out = story
    full = notebook.with_suffix(".html").read_text(encoding="utf-8")
    read = notebook.with_suffix(reader.READER_SUFFIX).read_text(encoding="utf-8")
    # the code is in the full version, not in the reader's
    assert 'jp-InputArea-editor"' in full and "secret_code_marker" in full
    assert 'jp-InputArea-editor"' not in read and "secret_code_marker" not in read
    assert '<div class="highlight' not in read  # no highlighted code block (<pre>) at all
    # every figure of the full version, the same images
    figures = re.findall(r'<img[^>]*src="data:image/png;base64,([^"]+)"', full)
    assert len(figures) == 2
    assert re.findall(r'<img[^>]*src="data:image/png;base64,([^"]+)"', read) == figures
    # an informative title, not nbconvert's "Notebook"
    assert "<title>01 · A story · run myrun</title>" in read
    assert "<title>01 · A story · run myrun</title>" in full
    # the parameters once, as a table: the run's value (injected), the default's help text
    assert read.count("<code>output_root</code>") == 1
    assert str(out) in read and "(notebook default differs)" in read
    assert "<code>threshold</code></td>" in read and "how strict" in read
    assert "nowhere" not in read  # the default that the run replaced is not shown
    assert "secret" in read  # outputs stay


def test_index_links_resolve_and_show_key_figures(story):
    notebook, _ = story
    index = reader.write_index(notebook.parent)
    page = index.read_text(encoding="utf-8")
    links = Links()
    links.feed(page)
    assert sorted(links.hrefs) == sorted(["01_story.reader.html", "01_story.html",
                                          "01_story.ipynb"])
    for href in links.hrefs:
        assert (index.parent / href).is_file(), href
    assert links.srcs == []  # nothing fetched: readable offline
    assert "rows read</td><td>12,345</td>" in page  # from the notebook's summary.json
    assert "All 1 notebooks ran." in page


def test_a_failed_notebook_is_in_the_index_with_its_error(tmp_path):
    src = tmp_path / "02_bad.ipynb"
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("n = 1  # a number")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# 02 · Bad"), params,
                nbformat.v4.new_code_cell("raise ValueError('n is wrong; use 2')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, src)
    with pytest.raises(RunError):
        run.run_step(Step("02", src), {}, tmp_path / "reports")
    page = (tmp_path / "reports" / "index.html").read_text(encoding="utf-8")
    assert "0 of 1 notebooks ran; 02_bad failed: ValueError: n is wrong; use 2" in page
    assert (tmp_path / "reports" / "02_bad.reader.html").is_file()


def test_reader_notebook_puts_summary_cells_first():
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("x = 1  # one")
    params.metadata["tags"] = ["parameters"]
    injected = nbformat.v4.new_code_cell("x = 2")
    injected.metadata["tags"] = ["injected-parameters"]
    heading = nbformat.v4.new_markdown_cell("## 8. Summary")
    summary = nbformat.v4.new_code_cell("display(table)")
    for cell in (heading, summary):
        cell.metadata["tags"] = [reader.SUMMARY_TAG]
    nb.cells = [nbformat.v4.new_markdown_cell("# 07 · Evaluate"), params, injected,
                nbformat.v4.new_code_cell("detail = 1"), heading, summary]
    nb.metadata["papermill"] = {"parameters": {"x": 2}}
    out = reader.reader_notebook(nb, "demo", "07_evaluate.html")
    assert [c.source for c in out.cells][0] == "# 07 · Evaluate"
    assert "| `x` | 2 (notebook default differs) | one |" in out.cells[1].source
    assert [c.source for c in out.cells][2:] == ["## 8. Summary", "display(table)", "detail = 1"]


@pytest.fixture()
def configs(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "demo.yaml").write_text("output_root: data/demo\n")
    (folder / "full.yaml").write_text("output_root: data/full\n")
    return folder


def test_reports_are_keyed_by_run(configs, tmp_path):
    def folder(profile, params, reports_dir=None):
        return run.reports_folder(profile, params, reports_dir, configs)

    assert folder("demo", {"output_root": "data/demo"}) == REPORTS_DIR / "demo"
    assert folder("demo", {"output_root": "data/demo/"}) == REPORTS_DIR / "demo"
    assert folder("demo", {}) == REPORTS_DIR / "demo"
    assert folder("demo", {"output_root": str(tmp_path / "kaggle")}) == REPORTS_DIR / "kaggle"
    assert folder("full", {"output_root": "data/full"}) == REPORTS_DIR / "full"
    assert folder("demo", {"output_root": "x"}, tmp_path / "mine") == tmp_path / "mine"
    with pytest.raises(RunError, match=r"output_root /tmp/a/full would write its reports into "
                                       r"reports/full/, the full profile's; pass --reports-dir"):
        folder("demo", {"output_root": "/tmp/a/full"})


def test_parameters_read_back_from_an_executed_notebook(story):
    notebook, out = story
    got = {p.name: (p.value, p.overridden) for p in
           reader.parameters(nbformat.read(notebook, as_version=4))}
    assert got == {"output_root": (str(out), True), "threshold": (0.5, False)}  # (value, changed)
