"""Figures: the one image grid and the one way to write a figure to disk.

    fig = image_grid(paths_or_images, titles, ncols=4, title="train split")
    save_figure(fig, out_dir / "grid.png")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from shoelib.images import open_rgb
from shoelib.io import atomic_path

ImageLike = str | Path | Image.Image | np.ndarray


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Write a matplotlib figure as PNG atomically (a killed run leaves no half-written file)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    return Path(path)


def _pixels(image: ImageLike) -> Image.Image | np.ndarray:
    """What imshow gets: a file opened upright as RGB (transparency on white), else as given."""
    if isinstance(image, str | Path):
        return open_rgb(image)
    return image


def image_grid(images: Sequence[ImageLike], titles: Sequence[str] | None = None, *,
               ncols: int = 4, title: str = "", colours: Sequence[str] | None = None,
               tile_inches: tuple[float, float] = (2.6, 3.2), frames: bool = False,
               empty: str = "no images") -> Any:
    """A matplotlib figure of images in rows of `ncols`, each with a small title.

    Args:
        images: image files, PIL images, or arrays (HxWx3, uint8 or floats in [0, 1]).
        titles: one per image (None: no titles).
        ncols: grid columns (fewer when there are fewer images).
        title: the figure's title ("" for none).
        colours: title colour per image (e.g. red for a failed check); default black.
        tile_inches: width and height of one grid cell.
        frames: draw a thin box around each image (shows where a white image ends).
        empty: the text shown when there is no image.
    """
    import matplotlib.pyplot as plt

    ncols = max(1, min(ncols, len(images)))
    nrows = max(1, -(-len(images) // ncols))
    fig, axes = plt.subplots(nrows, ncols, squeeze=False,
                             figsize=(tile_inches[0] * ncols, tile_inches[1] * nrows))
    for ax in axes.flat:
        ax.axis("off")
    if not len(images):
        axes.flat[0].text(0.5, 0.5, empty, ha="center", va="center")
    for i, (ax, image) in enumerate(zip(axes.flat, images, strict=False)):
        ax.imshow(_pixels(image))
        if frames:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
        if titles is not None:
            ax.set_title(titles[i], fontsize=8, color=colours[i] if colours else "black")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
