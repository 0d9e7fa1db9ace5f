"""shoelib.browse: thumbnails, the static grid, the colour browser and the headless guess."""

from __future__ import annotations

import matplotlib
import pandas as pd
import pytest
from PIL import Image

from shoelib import browse

matplotlib.use("Agg")


@pytest.fixture()
def table(tmp_path) -> pd.DataFrame:
    rows = []
    for i, (colour, rgb) in enumerate([("Black", (20, 20, 20)), ("Black", (30, 30, 30)),
                                       ("Red", (200, 0, 0))]):
        path = tmp_path / f"{i}.jpg"
        Image.new("RGB", (600, 800), rgb).save(path, quality=90)
        rows.append({"id": i, "baseColour": colour, "gender": "Men", "image_path": str(path),
                     "image_status": "ok"})
    rows.append({"id": 9, "baseColour": "Red", "gender": "Men", "image_path": None,
                 "image_status": "missing"})
    return pd.DataFrame(rows)


def test_widget_frontend_is_false_outside_a_jupyter_kernel(monkeypatch):
    monkeypatch.delenv("SHOELIB_WIDGETS", raising=False)
    monkeypatch.setenv("JPY_SESSION_NAME", "x.ipynb")  # still no kernel in pytest
    assert browse.widget_frontend() is False
    monkeypatch.setenv("SHOELIB_WIDGETS", "1")
    assert browse.widget_frontend() is True


def test_thumbnail_keeps_aspect_and_converts(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (1800, 2400), (0, 0, 0, 0)).save(path)
    thumb = browse.thumbnail(path, side=240)
    assert thumb.mode == "RGB" and thumb.size == (180, 240)


def test_thumbnail_puts_transparency_on_white_as_the_prepared_images_do(tmp_path):
    path = tmp_path / "cut_out.png"
    Image.new("RGBA", (400, 300), (0, 0, 0, 0)).save(path)
    assert browse.thumbnail(path, side=100).getpixel((5, 5)) == (255, 255, 255)


def test_sample_grid_shows_only_readable_images(table):
    fig = browse.sample_grid(table, n=12, seed=0, ncols=2)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 3  # the missing row is not drawn
    assert {ax.get_title().split("\n")[0] for ax in shown} == {"0", "1", "2"}
    empty = browse.sample_grid(table[table["image_status"] == "missing"], n=4)
    assert not any(ax.images for ax in empty.axes)


def test_browser_shows_the_grid_of_the_chosen_value_column_and_reshuffles(table, monkeypatch):
    import IPython.display

    shown = []  # the figures the browser displays, in order
    monkeypatch.setattr(IPython.display, "display", shown.append)

    def ids(fig) -> set[str]:
        return {ax.get_title().split("\n")[0] for ax in fig.axes if ax.images}

    table = pd.concat([table, table.assign(id=table["id"] + 100, gender="Women")])
    browser = browse.CatalogBrowser(table, n=2, seed=0)
    assert [label for label, _ in browser.column.options] == ["colour", "gender"]  # no season here
    assert list(browser.value.options) == [("Black (4)", "Black"), ("Red (2)", "Red")]
    assert len(shown) == 1 and len(ids(shown[-1])) == 2 and ids(shown[-1]) <= {"0", "1", "100", "101"}
    browser.value.value = "Red"  # the callback redraws without a frontend
    assert len(shown) == 2 and ids(shown[-1]) == {"2", "102"}  # the readable Red photos only
    browser.column.value = "gender"
    assert list(browser.value.options) == [("Men (3)", "Men"), ("Women (3)", "Women")]
    assert len(shown) == 3 and set(browser.shown_ids) <= {0, 1, 2}
    draws = {tuple(browser.shown_ids)}
    for _ in range(6):
        browser.reshuffle()
        draws.add(tuple(browser.shown_ids))
        assert set(browser.shown_ids) <= {0, 1, 2} and len(browser.shown_ids) == 2
    assert len(draws) > 1  # other images of the same value
    assert len(shown) == 9
