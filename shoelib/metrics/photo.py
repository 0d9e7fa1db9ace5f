"""Weight-free photo checks: dominant foreground colour vs the colour asked for, and product-photo
conformity (white background, centred, fully in frame)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from shoelib.images import BACKGROUND_DELTA_E, foreground_mask, open_rgb, srgb_to_lab
from shoelib.metrics.diversity import dhash, hash_hex, phash
from shoelib.metrics.results import MetricResult
from shoelib.metrics.uncertainty import mean_ci, with_ci

# --- colour: a palette of the catalogue's colour names

# Representative sRGB of the catalogue's `baseColour` values (those with enough rows to matter).
PALETTE: dict[str, tuple[int, int, int]] = {
    "Black": (25, 25, 25),
    "Grey": (128, 128, 128),
    "Silver": (190, 190, 195),
    "White": (245, 245, 245),
    "Brown": (100, 65, 35),
    "Tan": (200, 150, 95),
    "Beige": (225, 205, 170),
    "Khaki": (185, 170, 120),
    "Navy Blue": (25, 35, 80),
    "Blue": (40, 90, 190),
    "Red": (200, 30, 40),
    "Maroon": (110, 25, 35),
    "Pink": (235, 135, 170),
    "Purple": (110, 50, 140),
    "Green": (40, 135, 60),
    "Olive": (105, 105, 45),
    "Yellow": (240, 210, 40),
    "Orange": (240, 125, 30),
    "Gold": (200, 160, 60),
}

# Catalogue colour names that are shades of a palette colour.
COLOUR_SYNONYMS = {
    "off white": "White", "cream": "Beige", "charcoal": "Grey", "steel": "Grey", "taupe": "Grey",
    "coffee brown": "Brown", "mushroom brown": "Brown", "bronze": "Brown", "copper": "Brown",
    "rust": "Red", "burgundy": "Maroon", "magenta": "Pink", "rose": "Pink", "peach": "Pink",
    "lavender": "Purple", "mauve": "Purple", "teal": "Blue", "turquoise blue": "Blue",
    "sea green": "Green", "lime green": "Green", "fluorescent green": "Green",
    "mustard": "Yellow", "metallic": "Silver", "skin": "Beige", "nude": "Beige",
}


def palette_name(colour: str | None) -> str | None:
    """The palette colour a catalogue/prompt colour name means; None for "Multi", unknown, empty."""
    if colour is None or (isinstance(colour, float) and math.isnan(colour)):
        return None
    key = str(colour).strip().lower()
    for name in PALETTE:
        if name.lower() == key:
            return name
    return COLOUR_SYNONYMS.get(key)


_PALETTE_NAMES = list(PALETTE)
# Grey shades are told apart by lightness alone: shading moves a shoe's pixels along L*, so
# nearest-colour voting would call a shaded white shoe "Silver". Upper L* bound of each.
ACHROMATIC_LIGHTNESS = {"Black": 40.0, "Grey": 65.0, "Silver": 75.0, "White": 101.0}
_CHROMATIC_NAMES = [n for n in _PALETTE_NAMES if n not in ACHROMATIC_LIGHTNESS]
_CHROMATIC_LAB = srgb_to_lab(np.array([PALETTE[n] for n in _CHROMATIC_NAMES], dtype=np.uint8))


@dataclass(frozen=True)
class PhotoThresholds:
    """What counts as background and as a conforming product photo.

    Attributes:
        background_delta_e: a pixel within this CIELAB distance of pure white is "near white";
            near-white regions connected to the image border are background.
        chroma: CIELAB chroma above which an object pixel counts as coloured.
        chromatic_share: least share of coloured object pixels for the object to be called
            by a hue (else it is Black, Grey, Silver or White by lightness). The shipped value
            was chosen on 400 Casual Shoes photos of the Kaggle dataset, all of them (no photo
            was held out); `benchmarks/bench_photo_checks.py` tunes it on one half of a
            category's photos and reports the agreement with the labels on the other half.
        min_whiteness: least share of border-band pixels that must be background.
        max_centre_offset: largest distance of the object's centre from the image centre,
            as a fraction of the image side.
        max_edge_foreground: largest share of the outermost pixel ring covered by the object
            (more means the object is cut by the frame).
        min_foreground, max_foreground: plausible share of the image the object covers.
        analysis_px: images are reduced to this side before measuring (speed).
    """

    background_delta_e: float = BACKGROUND_DELTA_E
    chroma: float = 10.0
    chromatic_share: float = 0.35
    min_whiteness: float = 0.9
    max_centre_offset: float = 0.1
    max_edge_foreground: float = 0.02
    min_foreground: float = 0.03
    max_foreground: float = 0.9
    analysis_px: int = 128


def dominant_colour(rgb: np.ndarray, mask: np.ndarray, chroma: float = 10.0,
                    chromatic_share: float = 0.35) -> tuple[str | None, float]:
    """The palette colour of an object: a vote of its pixels.

    If at least `chromatic_share` of the object's pixels are coloured (CIELAB chroma above
    `chroma`), those pixels vote for their nearest chromatic palette colour; otherwise the
    grey pixels vote for Black/Grey/Silver/White by lightness. White soles and laces then do
    not outvote the coloured upper of a red shoe.

    Returns:
        (colour name, share of the voting pixels for it); (None, 0.0) if no foreground.
    """
    lab = srgb_to_lab(rgb[mask])
    if len(lab) == 0:
        return None, 0.0
    coloured = np.hypot(lab[:, 1], lab[:, 2]) > chroma
    if coloured.mean() >= chromatic_share:
        dist = np.linalg.norm(lab[coloured][:, None, :] - _CHROMATIC_LAB[None], axis=-1)
        names, votes = _CHROMATIC_NAMES, np.bincount(dist.argmin(1), minlength=len(_CHROMATIC_NAMES))
    else:
        bounds = list(ACHROMATIC_LIGHTNESS.values())[:-1]
        names = list(ACHROMATIC_LIGHTNESS)
        votes = np.bincount(np.digitize(lab[~coloured][:, 0], bounds), minlength=len(names))
    best = int(votes.argmax())
    return names[best], float(votes[best] / votes.sum())


def analysis_pixels(image: Image.Image,
                    thresholds: PhotoThresholds = PhotoThresholds()) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 RGB reduced to `analysis_px`, its foreground mask): what the photo checks measure."""
    small = image.convert("RGB")
    small.thumbnail((thresholds.analysis_px, thresholds.analysis_px), Image.Resampling.BOX)
    rgb = np.asarray(small)
    return rgb, foreground_mask(rgb, thresholds.background_delta_e)


def photo_measures(image: Image.Image, thresholds: PhotoThresholds = PhotoThresholds()) -> dict[str, Any]:
    """Weight-free measures of one product photo.

    Returns:
        dict with dominant_colour, colour_share, foreground (share of pixels), whiteness
        (background share of a border band 1/16 of the side wide), centre_offset (object
        centroid's distance from the centre / side), edge_foreground (object share of the
        outermost ring), conforming (all thresholds met), dhash and phash (16 hex digits).
    """
    rgb, mask = analysis_pixels(image, thresholds)
    h, w = mask.shape
    band = max(1, min(h, w) // 16)
    ring = np.ones_like(mask)
    ring[band:-band, band:-band] = False
    edge = np.ones_like(mask)
    edge[1:-1, 1:-1] = False
    fg = float(mask.mean())
    if mask.any():
        ys, xs = np.nonzero(mask)
        offset = float(math.hypot(xs.mean() + 0.5 - w / 2, ys.mean() + 0.5 - h / 2) / max(h, w))
    else:
        offset = float("nan")
    colour, share = dominant_colour(rgb, mask, thresholds.chroma, thresholds.chromatic_share)
    whiteness = float(1.0 - mask[ring].mean())
    edge_fg = float(mask[edge].mean())
    conforming = bool(whiteness >= thresholds.min_whiteness
                      and offset <= thresholds.max_centre_offset
                      and edge_fg <= thresholds.max_edge_foreground
                      and thresholds.min_foreground <= fg <= thresholds.max_foreground)
    return {"dominant_colour": colour, "colour_share": share, "foreground": fg,
            "whiteness": whiteness, "centre_offset": offset, "edge_foreground": edge_fg,
            "conforming": conforming, "dhash": hash_hex(dhash(image)),
            "phash": hash_hex(phash(image))}


def measure_photos(paths: Sequence[str | Path], thresholds: PhotoThresholds = PhotoThresholds(),
                   desc: str = "photo checks") -> pd.DataFrame:
    """`photo_measures` of every image, one row each, in the order of `paths` (column `path`)."""
    from tqdm.auto import tqdm

    rows = [{"path": str(p), **photo_measures(open_rgb(p), thresholds)}
            for p in tqdm(list(paths), desc=desc, leave=False)]
    return pd.DataFrame(rows, columns=["path", "dominant_colour", "colour_share", "foreground",
                                       "whiteness", "centre_offset", "edge_foreground",
                                       "conforming", "dhash", "phash"])


# --- colour faithfulness


def colour_faithfulness(asked: Sequence[str | None], found: Sequence[str | None],
                        which: str = "synthetic", seed: int = 0) -> tuple[MetricResult, pd.DataFrame]:
    """Accuracy of the dominant colour against the colour asked for (or labelled), and the
    confusion matrix (rows: asked, columns: found).

    Images whose asked colour has no palette meaning ("Multi", unknown) are left out and counted.
    """
    pairs = [(palette_name(a), f) for a, f in zip(asked, found, strict=True)]
    kept = [(a, f if f is not None else "(none)") for a, f in pairs if a is not None]
    left_out = len(pairs) - len(kept)
    n_key = "n_synthetic" if which == "synthetic" else "n_real"
    if not kept:
        result = MetricResult(f"colour accuracy ({which})", None, note="no image asks for a "
                              f"palette colour ({left_out} left out)", better="higher",
                              **{n_key: 0})
        return result, pd.DataFrame()
    a, f = zip(*kept, strict=True)
    labels = [n for n in _PALETTE_NAMES if n in set(a) | set(f)] + (["(none)"] if "(none)" in f else [])
    confusion = pd.crosstab(pd.Series(a, name="asked"), pd.Series(f, name="found"))
    confusion = confusion.reindex(index=[n for n in labels if n in set(a)], columns=labels, fill_value=0)
    matches = np.array([x == y for x, y in kept], dtype=float)
    note = f"dominant foreground colour vs {'prompt' if which == 'synthetic' else 'label'}"
    if left_out:
        note += f"; {left_out} images with no palette colour (e.g. Multi) left out"
    result = MetricResult(f"colour accuracy ({which})", float(matches.mean()), None, note=note,
                          better="higher", **{n_key: len(kept)})
    return with_ci(result, mean_ci(matches, seed=seed)), confusion


def conformity_results(measures: pd.DataFrame, which: str, seed: int = 0) -> list[MetricResult]:
    """Share of conforming photos and the mean of each conformity measure for one image set,
    each with a 95 % bootstrap CI over images."""
    n = len(measures)
    n_key = "n_synthetic" if which == "synthetic" else "n_real"
    if n == 0:
        return [MetricResult(f"conforming photos ({which})", None, note="no images", **{n_key: 0})]
    conforming = measures["conforming"].astype(float).to_numpy()
    out = [with_ci(MetricResult(f"conforming photos ({which})", float(conforming.mean()),
                                note="white background, centred, in frame, plausible size (share)",
                                better="higher", **{n_key: n}), mean_ci(conforming, seed=seed))]
    for col, label, better in (("whiteness", "background whiteness", "higher"),
                               ("centre_offset", "centre offset", "lower"),
                               ("edge_foreground", "object on frame edge", "lower")):
        values = measures[col].astype(float)
        out.append(with_ci(MetricResult(f"{label} ({which})", float(values.mean()),
                                        float(values.std(ddof=0)), note="mean ± std over images",
                                        better=better, **{n_key: n}),
                           mean_ci(values.to_numpy(), seed=seed)))
    return out
