"""Diversity of one image set: perceptual-hash near duplicates and mean pairwise distances."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from PIL import Image
from scipy import fft

from shoelib.metrics.distances import _l2
from shoelib.metrics.results import MetricResult

# --- perceptual hashes and diversity


def dhash(image: Image.Image, size: int = 8) -> np.ndarray:
    """Difference hash: is each pixel brighter than its right neighbour, on a (size+1) x size
    greyscale thumbnail. Returns size*size booleans."""
    grey = np.asarray(image.convert("L").resize((size + 1, size), Image.Resampling.LANCZOS),
                      dtype=np.int16)
    return (grey[:, 1:] > grey[:, :-1]).ravel()


def phash(image: Image.Image, size: int = 8, highfreq_factor: int = 4) -> np.ndarray:
    """Perceptual hash: the low-frequency size x size block of the 2-D DCT of a greyscale
    thumbnail, thresholded at its median. Returns size*size booleans."""
    side = size * highfreq_factor
    grey = np.asarray(image.convert("L").resize((side, side), Image.Resampling.LANCZOS),
                      dtype=np.float64)
    low = fft.dct(fft.dct(grey, axis=0, norm="ortho"), axis=1, norm="ortho")[:size, :size]
    return (low > np.median(low)).ravel()


def hash_hex(bits: np.ndarray) -> str:
    return f"{int(''.join('1' if b else '0' for b in bits), 2):0{len(bits) // 4}x}"


def hash_bits(hex_strings: Sequence[str], n_bits: int = 64) -> np.ndarray:
    """Hex hashes -> (N, n_bits) boolean matrix."""
    return np.array([[c == "1" for c in format(int(h, 16), f"0{n_bits}b")] for h in hex_strings],
                    dtype=bool).reshape(len(hex_strings), n_bits)


def hamming_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances between rows of two boolean matrices."""
    a, b = a.astype(np.int32), b.astype(np.int32)
    return a @ (1 - b).T + (1 - a) @ b.T


def near_duplicates(bits: np.ndarray, threshold: int) -> tuple[float, pd.DataFrame]:
    """Images with another image of the same set within `threshold` bits.

    Returns:
        (share of images that have a near duplicate, pairs i < j with their distance).
    """
    n = len(bits)
    if n < 2:
        return 0.0, pd.DataFrame(columns=["i", "j", "distance"])
    dist = hamming_matrix(bits, bits)
    np.fill_diagonal(dist, bits.shape[1] + 1)
    close = dist <= threshold
    i, j = np.nonzero(np.triu(close, k=1))
    pairs = pd.DataFrame({"i": i, "j": j, "distance": dist[i, j]}).sort_values("distance")
    return float(close.any(axis=1).mean()), pairs.reset_index(drop=True)


def mean_pairwise_cosine_distance(features: np.ndarray) -> float:
    """Average 1 - cos over distinct pairs: higher means a more varied set."""
    n = len(features)
    if n < 2:
        return float("nan")
    x = _l2(features)
    sim = x @ x.T
    return float(1.0 - (sim.sum() - np.trace(sim)) / (n * (n - 1)))


def diversity_results(bits: np.ndarray, features: np.ndarray, which: str,
                      threshold: int = 6) -> list[MetricResult]:
    """Near-duplicate rate (pHash within `threshold` bits) and mean pairwise distances."""
    n = len(bits)
    n_key = "n_synthetic" if which == "synthetic" else "n_real"
    if n < 2:
        msg = f"diversity needs at least 2 images; got {n}"
        return [MetricResult(f"near-duplicate rate ({which})", None, note=msg, **{n_key: n})]
    rate, _ = near_duplicates(bits, threshold)
    dist = hamming_matrix(bits, bits)
    mean_bits = float((dist.sum() - np.trace(dist)) / (n * (n - 1)))
    return [
        MetricResult(f"near-duplicate rate ({which})", rate,
                     note=f"share with another image within {threshold} pHash bits",
                     better="lower", **{n_key: n}),
        MetricResult(f"mean pairwise pHash distance ({which})", mean_bits,
                     note="bits of 64", better="higher", **{n_key: n}),
        MetricResult(f"mean pairwise feature distance ({which})",
                     mean_pairwise_cosine_distance(features), note="1 - cosine",
                     better="higher", **{n_key: n}),
    ]
