"""Catalogue text reaches the HTML reports as text, never as live HTML; and a catalogue as
a spreadsheet or an attacker leaves it goes through 01 and 02 without a lost row."""

from __future__ import annotations

import json
import re

import nbformat
import pandas as pd
import pytest
from nbconvert import HTMLExporter
from PIL import Image

from shoelib import catalog, dataset, report, run
from shoelib.demo import build_demo_catalog

SCRIPT_NAME = "<script>alert(1)</script> Men Casual Shoes"
IMG_COLOUR = "<img src=x onerror=alert(2)>"
# nbconvert re-serialises <img> tags (adds alt, quotes and reorders attributes), so the
# handler is looked for anywhere inside an img tag.
LIVE_TAG = re.compile(r"<script>alert|<img[^>]*onerror|<missing>")


def rendered(*outputs: dict) -> str:
    """The HTML nbconvert makes of one code cell with these display outputs (as shoelib.run)."""
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell("", outputs=[
        nbformat.v4.new_output("display_data", data={**data, "text/plain": ""}) for data in outputs]))
    return HTMLExporter().from_notebook_node(nb)[0]


def test_markdown_text_renders_as_the_value_itself():
    values = [IMG_COLOUR, "Navy_Blue_", "a*b*", "[x](javascript:y)", "Black & White", "`x`", "a\nb"]
    html = rendered({"text/markdown": "Other: " + "; ".join(map(report.text, values))})
    body = html[html.index("Other:"):html.index("</p>", html.index("Other:"))]
    assert body == ("Other: &lt;img src=x onerror=alert(2)&gt;; Navy_Blue_; a*b*; [x](javascript:y); "
                    "Black &amp; White; `x`; a b")


def test_styler_table_escapes_cells_index_and_labels():
    shares = catalog.share_table(pd.Series([IMG_COLOUR, None, "Black", "Black"], name="baseColour"))
    shares["example"] = SCRIPT_NAME
    html = rendered({"text/html": report.table(shares, {"share": "{:.1%}"}).to_html()})
    assert not LIVE_TAG.findall(html)
    assert "&lt;missing&gt;" in html and "&lt;img src=x onerror=alert(2)&gt;" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Men Casual Shoes" in html
    assert ">50.0%<" in html  # the per-column format still applies


def test_dataset_card_quotes_and_escapes_the_category():
    import yaml

    metadata = {"category": "<b>x</b>: y", "total": 3, "splits": {"train": 3},
                "stratified": True, "skipped_count": 0, "skipped_reasons": {},
                "parameters": {"image_size": 64, "stratify_column": "baseColour",
                               "min_class_rows": 10, "split_fractions": [1, 0, 0], "split_seed": 0,
                               "caption_template": "{colour}"}}
    card = dataset.dataset_card(metadata)
    assert yaml.safe_load(card.split("---")[1])["pretty_name"] == "<b>x</b>: y product photos (64x64)"
    body = card.split("---", 2)[2]
    assert "<b>" not in body and "&lt;b&gt;x&lt;/b&gt;: y" in body


@pytest.mark.slow
def test_01_and_02_on_a_hostile_re_saved_catalogue(tmp_path):
    """HTML in a name and a colour, a byte-order mark, one Latin-1 line and a 1x1 photo:
    the reports show the text as text, no row is lost and the photo is refused with why."""
    data = build_demo_catalog(tmp_path / "catalog", workers=2)
    lines = (data / "styles.csv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split(",")
    at = {c: header.index(c) for c in ("id", "articleType", "baseColour", "productDisplayName")}
    casual = [n for n, line in enumerate(lines) if len(line.split(",")) == len(header)
              and line.split(",")[at["articleType"]] == "Casual Shoes"]
    hostile, accented, tiny = casual[:3]
    fields = lines[hostile].split(",")
    fields[at["baseColour"]], fields[at["productDisplayName"]] = IMG_COLOUR, SCRIPT_NAME
    lines[hostile] = ",".join(fields)
    fields = lines[accented].split(",")
    fields[at["productDisplayName"]] = "Café Men Casual Shoes"
    lines[accented] = ",".join(fields)
    encoded = [line.encode("latin-1" if n == accented else "utf-8") for n, line in enumerate(lines)]
    (data / "styles.csv").write_bytes(b"\xef\xbb\xbf" + b"\n".join(encoded) + b"\n")
    tiny_id = int(lines[tiny].split(",")[at["id"]])
    Image.new("RGB", (1, 1), (255, 255, 255)).save(data / "images" / f"{tiny_id}.jpg", format="JPEG")

    out, reports = tmp_path / "out", tmp_path / "reports"
    code = run.main(["--profile", "demo", "--only", "01,02", "-p", "data_root", str(data),
                     "-p", "output_root", str(out), "-p", "top_n", "100",
                     "--reports-dir", str(reports)])
    assert code == 0
    for name in ("01_analysis", "02_prepare_dataset"):
        html = (reports / f"{name}.html").read_text(encoding="utf-8")
        assert not LIVE_TAG.findall(html), name
        assert "&lt;img src=x onerror=alert(2)&gt;" in html, f"{name} does not show the colour"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in (reports / "01_analysis.html").read_text()

    summary = json.loads((out / "analysis" / "summary.json").read_text())
    assert summary["rows_read"] == len(lines) - 1  # the BOM did not cost the header
    assert summary["latin1_lines"] == [accented + 1]  # 1-based file line
    assert summary["unreadable_images"][str(tiny_id)] == "too small: 1x1 px, below min_image_side=32"
    metadata = json.loads((out / "processed" / "casual_shoes" / "metadata.json").read_text())
    skipped = {r["id"]: r for r in metadata["skipped"]}
    assert skipped[tiny_id]["reason"] == "image unreadable"
    train = (out / "processed" / "casual_shoes" / "train" / "metadata.jsonl").read_text(encoding="utf-8")
    val_test = "".join((out / "processed" / "casual_shoes" / s / "metadata.jsonl").read_text(encoding="utf-8")
                       for s in ("val", "test"))
    assert "Café Men Casual Shoes" in train + val_test


def test_table_shows_missing_values_and_labels_with_one_marker_and_no_index():
    shares = catalog.share_table(pd.Series(["Black", None, "Black", "White"], name="season"))
    shares["note"] = ["most rows", None, "a <b>bold</b> claim"]
    shares["ratio"] = [0.123456, float("nan"), 2.0]
    shares["n"] = pd.array([1234567, pd.NA, 3], dtype="Int64")
    table_html = report.table(shares, {"share": "{:.1%}"}).to_html()
    html = rendered({"text/html": table_html})
    row = html[html.index("&lt;missing&gt;"):]
    row = row[:row.index("</tr>")]
    # the missing label is text, and every missing cell shows the one marker
    assert re.findall(r">([^<]*)</td>", row) == ["1", "25.0%", report.MISSING, report.MISSING,
                                                  report.MISSING]
    assert not re.search(r"NaN|&lt;NA&gt;|None|nan", table_html)
    assert "row_heading" not in html  # no index column: the labels are the first column
    assert ">season</th>" in html
    assert ">0.123<" in html and ">2.00<" in html and ">1,234,567<" in html
    assert "&lt;b&gt;bold&lt;/b&gt;" in html
    assert re.search(r"#T_\w+_row0_col3[^{]*\{\s*text-align: left", html)  # notes left-aligned


def test_number_rounds_to_significant_digits():
    assert [report.number(v) for v in (0.16021, 2.6956, 1234.5, 12, 1e-5, None, True)] == [
        "0.160", "2.70", "1,234", "12", "1.00e-05", report.MISSING, "True"]
    assert report.number(0.16021, 4) == "0.1602"


def test_long_tables_say_how_many_rows_they_hide():
    html = report.table(pd.DataFrame({"x": range(100)})).to_html()
    assert "first 60 of 100 rows" in html and ">59<" in html and ">60<" not in html
