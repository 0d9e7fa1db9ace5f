"""The one image grid and figure writer."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from shoelib.figures import image_grid, save_figure


def shown(fig) -> list[np.ndarray]:
    """The pixel arrays the figure's axes display, in grid order."""
    return [im.get_array() for ax in fig.axes for im in ax.get_images()]


def test_grid_shows_files_images_and_arrays_with_their_titles(tmp_path):
    transparent = Image.new("RGBA", (6, 4), (255, 0, 0, 0))
    transparent.save(tmp_path / "clear.png")
    array = np.zeros((4, 6, 3))
    fig = image_grid([tmp_path / "clear.png", Image.new("RGB", (6, 4), "blue"), array],
                     ["file", "pil", "array"], ncols=2, colours=["black", "red", "black"])
    assert [ax.get_title() for ax in fig.axes] == ["file", "pil", "array", ""]
    assert fig.axes[1].title.get_color() == "red"
    pixels = shown(fig)
    assert len(pixels) == 3
    assert tuple(pixels[0][0, 0]) == (255, 255, 255)  # transparency composited on white
    assert tuple(pixels[1][0, 0]) == (0, 0, 255)
    assert fig.get_size_inches().tolist() == [2 * 2.6, 2 * 3.2]  # 2 columns, 2 rows
    plt.close(fig)


def test_grid_never_has_more_columns_than_images_and_says_when_empty():
    fig = image_grid([np.ones((4, 4, 3))] * 2, ncols=8, tile_inches=(1, 2))
    assert fig.get_size_inches().tolist() == [2, 2]
    assert all(ax.get_title() == "" for ax in fig.axes)
    plt.close(fig)
    empty = image_grid([], title="nothing", empty="no readable image")
    assert [t.get_text() for t in empty.axes[0].texts] == ["no readable image"]
    assert empty.texts[0].get_text() == "nothing"  # the suptitle
    plt.close(empty)


def test_frames_keep_the_box_around_each_image():
    framed = image_grid([np.ones((4, 4, 3))], frames=True)
    plain = image_grid([np.ones((4, 4, 3))])
    assert framed.axes[0].axison and not plain.axes[0].axison
    assert framed.axes[0].get_xticks().size == 0
    plt.close(framed)
    plt.close(plain)


def test_save_figure_writes_a_png_and_no_temp_file(tmp_path):
    fig = image_grid([np.ones((4, 4, 3))])
    path = save_figure(fig, tmp_path / "figs" / "grid.png", dpi=50)
    plt.close(fig)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (130, 160)  # 2.6 x 3.2 in at 50 dpi
    assert [p.name for p in (tmp_path / "figs").iterdir()] == ["grid.png"]
