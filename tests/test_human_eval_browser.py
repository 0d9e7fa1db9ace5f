"""08_human_eval in a real JupyterLab, driven by Chromium: three images rated with the keyboard.

Needs Playwright (PyPI) and Debian's Chromium at /usr/bin/chromium; skipped without either.
SHOELIB_SCREENSHOT_DIR=<folder> keeps screenshots of the widget and the summary there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from jupyter_lab import NEEDS_CHROMIUM, lab_server, open_and_run, run_all

from shoelib.paths import NOTEBOOKS_DIR

pytestmark = [pytest.mark.slow, NEEDS_CHROMIUM]
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")


def notebook_for(root: Path, folder: Path) -> Path:
    """08 with its parameters pointed at the test run (a cell after the parameters cell, as
    papermill injects them)."""
    nb = nbformat.read(NOTEBOOKS_DIR / "08_human_eval.ipynb", as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(
        f"output_root = {str(root)!r}\nrun_name = 'lora'\nrater = 'browser'\nn_items = 6\n"
        "display_px = 256"))
    path = folder / "08_human_eval.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture()
def lab(rating_root, tmp_path):
    """A JupyterLab server on 127.0.0.1 serving a copy of 08; yields (url, token)."""
    folder = tmp_path / "lab"
    folder.mkdir()
    notebook_for(rating_root, folder)
    with lab_server(folder, tmp_path) as served:
        yield served


def test_rates_three_images_with_the_keyboard(lab, rating_root, tmp_path):
    url, token = lab
    shots = Path(os.environ.get("SHOELIB_SCREENSHOT_DIR", tmp_path))
    ratings = rating_root / "evaluation" / "human" / "browser.jsonl"
    with sync_api.sync_playwright() as p:
        browser, page = open_and_run(p, url, token, "08_human_eval.ipynb")
        widget = page.locator(".shoelib-rating")
        sync_api.expect(widget).to_contain_text("0 / 6 rated", timeout=180_000)
        keys = widget.locator("input[type='text']")
        for done, answer in enumerate(("gy4", "rn2", "gn5"), start=1):
            keys.click()
            keys.press_sequentially(answer)
            keys.press("Enter")
            sync_api.expect(widget).to_contain_text(f"{done} / 6 rated", timeout=60_000)
        widget.scroll_into_view_if_needed()
        widget.screenshot(path=str(shots / "h6_widget.png"))
        run_all(page)  # the summary cell now reads the three ratings
        summary = page.locator(".jp-OutputArea-output", has_text="3 ratings by 1 rater(s)")
        sync_api.expect(summary).to_be_visible(timeout=180_000)
        summary.scroll_into_view_if_needed()
        summary.screenshot(path=str(shots / "h6_summary.png"))
        browser.close()
    answers = [json.loads(line) for line in ratings.read_text().splitlines()]
    assert [(a["realism"], a["match"], a["usability"]) for a in answers] == [
        ("generated", True, 4), ("real", False, 2), ("generated", False, 5)]
    assert {a["rater"] for a in answers} == {"browser"}

