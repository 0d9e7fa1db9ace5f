"""Looking at catalogue images in a notebook: thumbnails, a static grid, a colour browser.

The browser is an ipywidgets dropdown that needs a live frontend; executed headless
(papermill, nbconvert) nothing would ever call it back, so notebooks ask `widget_frontend()`
and show the static grid instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from PIL import Image

from shoelib.figures import image_grid
from shoelib.images import open_image, to_rgb


def widget_frontend() -> bool:
    """True when widgets can be used: an IPython kernel started by a Jupyter server.

    Jupyter Server gives each kernel it starts the JPY_SESSION_NAME variable; papermill and
    nbconvert do not. SHOELIB_WIDGETS=0/1 overrides the guess (e.g. for VS Code).
    """
    forced = os.environ.get("SHOELIB_WIDGETS")
    if forced in ("0", "1"):
        return forced == "1"
    try:
        import ipywidgets  # noqa: F401 - only its presence matters here
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return (shell is not None and getattr(shell, "kernel", None) is not None
            and "JPY_SESSION_NAME" in os.environ)


def thumbnail(path: str | Path, side: int = 256) -> Image.Image:
    """An RGB thumbnail whose longer side is at most `side` px, upright, transparency on white
    (JPEGs decoded at reduced scale)."""
    img = to_rgb(open_image(path, side))
    img.thumbnail((side, side))
    return img


def sample_grid(frame: pd.DataFrame, n: int, seed: int = 0, ncols: int = 4,
                label_columns: tuple[str, ...] = ("baseColour", "gender"), side: int = 256):
    """A grid figure (`shoelib.figures.image_grid`) of `n` random readable images of `frame`
    (rows with image_status ok), each titled with its id and label columns.

    Args:
        frame: rows with `image_path`, `image_status` and the label columns.
        n: images to show (fewer if fewer are readable).
        seed: which rows are drawn.
        ncols: grid columns.
        label_columns: shown under each image, with the id.
        side: thumbnail size in px.
    Returns:
        matplotlib Figure (one saying "no readable image" when there is none).
    """
    ok = frame[frame["image_status"] == "ok"]
    rows = ok.sample(n=min(n, len(ok)), random_state=seed) if len(ok) else ok
    titles = [f"{row['id']}\n{' · '.join(str(row[c]) for c in label_columns if c in row.index)}"
              for _, row in rows.iterrows()]
    return image_grid([thumbnail(p, side) for p in rows["image_path"]], titles, ncols=ncols,
                      tile_inches=(2.4, 3.0), empty="no readable image")


def colour_browser(frame: pd.DataFrame, n: int = 8, column: str = "baseColour", seed: int = 0):
    """An ipywidgets box: a dropdown of `column` values (largest first) and their images.

    Needs a live frontend (see `widget_frontend`).
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    counts = frame.loc[frame["image_status"] == "ok", column].dropna().value_counts()
    options = [(f"{value} ({count})", value) for value, count in counts.items()]
    dropdown = widgets.Dropdown(options=options, description=column)
    output = widgets.Output()

    def show(change=None) -> None:
        with output:
            output.clear_output(wait=True)
            fig = sample_grid(frame[frame[column] == dropdown.value], n=n, seed=seed)
            display(fig)
            plt.close(fig)

    dropdown.observe(show, names="value")
    if options:
        show()
    return widgets.VBox([dropdown, output])
