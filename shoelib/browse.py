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


BROWSE_COLUMNS = {"colour": "baseColour", "gender": "gender", "season": "season",
                  "usage": "usage"}


class CatalogBrowser:
    """01's image browser: choose a column (colour, gender, season, usage) and one of its
    values (largest first, with its readable-image count); Reshuffle draws other images of it.

    Needs a live frontend to show (`widget_frontend`); its logic (`values`, `reshuffle`,
    `shown_ids`) works without one.
    """

    def __init__(self, frame: pd.DataFrame, n: int = 8, seed: int = 0,
                 columns: dict[str, str] = BROWSE_COLUMNS) -> None:
        import ipywidgets as widgets

        self.frame = frame[frame["image_status"] == "ok"]
        self.n, self.seed = n, seed
        present = {label: c for label, c in columns.items() if c in frame}
        self.column = widgets.Dropdown(options=list(present.items()), description="column")
        self.value = widgets.Dropdown(description="value")
        self.reshuffle_button = widgets.Button(description="Reshuffle", icon="random")
        self.output = widgets.Output()
        self.shown_ids: list[int] = []
        self.column.observe(lambda _change: self._fill_values(), names="value")
        self._filling = False
        self.value.observe(lambda _change: self._filling or self.show(), names="value")
        self.reshuffle_button.on_click(lambda _button: self.reshuffle())
        self.box = widgets.VBox([widgets.HBox([self.column, self.value, self.reshuffle_button]),
                                 self.output])
        self._fill_values()

    def values(self) -> list[tuple[str, str]]:
        """(label with count, value) of the chosen column, largest first."""
        counts = self.frame[self.column.value].dropna().astype(str).value_counts()
        return [(f"{value} ({count})", value) for value, count in counts.items()]

    def _fill_values(self) -> None:
        options = self.values()
        self._filling = True  # new options reset the value: one redraw, below, not two
        try:
            self.value.options = options
            self.value.value = options[0][1] if options else None
        finally:
            self._filling = False
        self.show()

    def reshuffle(self) -> None:
        """Other images of the same value (the next seed)."""
        self.seed += 1
        self.show()

    def show(self) -> None:
        import matplotlib.pyplot as plt
        from IPython.display import display

        if self.value.value is None:
            rows = self.frame.iloc[:0]
        else:
            rows = self.frame[self.frame[self.column.value].astype(str) == self.value.value]
        drawn = rows.sample(n=min(self.n, len(rows)), random_state=self.seed)
        self.shown_ids = [int(i) for i in drawn["id"]]
        with self.output:
            self.output.clear_output(wait=True)
            fig = sample_grid(drawn, n=len(drawn), seed=self.seed)
            display(fig)
            plt.close(fig)


def colour_browser(frame: pd.DataFrame, n: int = 8, seed: int = 0):
    """The `CatalogBrowser` box, colour chosen first."""
    return CatalogBrowser(frame, n=n, seed=seed).box
