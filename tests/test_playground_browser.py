"""04's prompt playground in a real JupyterLab, driven by Chromium: type a prompt, click
Generate; the button is disabled while the image is made, then the image and its verdict show.

Needs Playwright (PyPI) and Debian's Chromium at /usr/bin/chromium; skipped without either.
SHOELIB_SCREENSHOT_DIR=<folder> keeps a screenshot of the playground mid-generation there.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from jupyter_lab import NEEDS_CHROMIUM, lab_server, open_and_run

from shoelib.paths import NOTEBOOKS_DIR

pytestmark = [pytest.mark.slow, NEEDS_CHROMIUM]
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")

PROMPT = "A professional product photo of Red Casual Shoes, side view, centered on white background"


@pytest.fixture()
def lab(tmp_path):
    """JupyterLab serving a copy of 04 with its parameters set for a quick run (a cell after
    the parameters cell, as papermill injects them): one test image, no base-model check, and
    enough steps that a generation lasts long enough to be seen."""
    folder = tmp_path / "lab"
    folder.mkdir()
    nb = nbformat.read(NOTEBOOKS_DIR / "04_inference_test.ipynb", as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(
        f"output_root = {str(tmp_path / 'run')!r}\nn_test_images = 1\nbase_check_images = 0\n"
        "inference_steps = 60\ndevice = 'cpu'"))
    nbformat.write(nb, folder / "04_inference_test.ipynb")
    with lab_server(folder, tmp_path) as served:
        yield served


def test_generate_disables_the_button_then_shows_image_and_verdict(lab, tmp_path):
    url, token = lab
    shots = Path(os.environ.get("SHOELIB_SCREENSHOT_DIR", tmp_path))
    with sync_api.sync_playwright() as p:
        browser, page = open_and_run(p, url, token, "04_inference_test.ipynb")
        playground = page.locator(".shoelib-playground")
        sync_api.expect(playground).to_be_visible(timeout=600_000)
        playground.scroll_into_view_if_needed()
        prompt = playground.get_by_label("prompt")
        prompt.fill(PROMPT)
        button = playground.get_by_role("button", name="Generate")
        sync_api.expect(button).to_be_enabled()
        button.click()
        busy = playground.get_by_role("button", name="Generating ...")
        sync_api.expect(busy).to_be_disabled(timeout=60_000)
        sync_api.expect(playground).to_contain_text("generating seed 42")
        playground.screenshot(path=str(shots / "playground_generating.png"))
        verdict = playground.locator(".shoelib-verdict")
        sync_api.expect(verdict).to_contain_text("ok", timeout=300_000)
        sync_api.expect(button).to_be_enabled()
        sync_api.expect(playground.locator("img")).to_have_count(1)
        sync_api.expect(playground).to_contain_text(PROMPT)
        sync_api.expect(playground).to_contain_text("seed 42")
        playground.screenshot(path=str(shots / "playground_done.png"))
        browser.close()
