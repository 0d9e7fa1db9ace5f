"""Diversity of one image set: the Vendi score, perceptual-hash near duplicates and mean
pairwise distances."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from PIL import Image
from scipy import fft

from shoelib.metrics.distances import _l2
from shoelib.metrics.results import MetricResult
from shoelib.metrics.uncertainty import mean_ci, with_ci

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
                      threshold: int = 6, n_boot: int = 1000, seed: int = 0) -> list[MetricResult]:
    """Near-duplicate rate (pHash within `threshold` bits) and mean pairwise distances.

    CIs resample each image's own term (has a near duplicate; its mean distance to the
    others) over images: resampling the images themselves would make duplicates.
    """
    n = len(bits)
    n_key = "n_synthetic" if which == "synthetic" else "n_real"
    if n < 2:
        msg = f"diversity needs at least 2 images; got {n}"
        return [MetricResult(f"near-duplicate rate ({which})", None, note=msg, **{n_key: n})]
    dist = hamming_matrix(bits, bits).astype(np.float64)
    np.fill_diagonal(dist, np.nan)
    has_duplicate = (np.nan_to_num(dist, nan=bits.shape[1] + 1) <= threshold).any(axis=1).astype(float)
    bits_to_others = np.nanmean(dist, axis=1)
    x = _l2(features)
    sim = x @ x.T
    np.fill_diagonal(sim, np.nan)
    cos_to_others = 1.0 - np.nanmean(sim, axis=1) if len(features) == n else np.full(n, np.nan)
    rows = []
    for name, terms, note, better in (
            ("near-duplicate rate", has_duplicate,
             f"share with another image within {threshold} pHash bits", "lower"),
            ("mean pairwise pHash distance", bits_to_others, "bits of 64", "higher"),
            ("mean pairwise feature distance", cos_to_others, "1 - cosine", "higher")):
        value = float(np.mean(terms)) if np.isfinite(terms).all() else None
        rows.append(with_ci(MetricResult(f"{name} ({which})", value, note=note, better=better,
                                         **{n_key: n}), mean_ci(terms, n_boot, seed)))
    return rows


# --- Vendi score (Friedman & Dieng 2023)


def vendi_score(features: np.ndarray) -> float:
    """The effective number of distinct images: exp of the entropy of the eigenvalues of
    K / N, K the cosine-similarity kernel (`vendi_score.vendi`, its authors' package).

    N identical images score 1, N mutually orthogonal ones N.
    """
    import warnings

    from vendi_score import vendi

    with warnings.catch_warnings():  # the package reads a scipy namespace deprecated in 1.8
        warnings.simplefilter("ignore", DeprecationWarning)
        if features.shape[1] < len(features):  # same eigenvalues from the smaller d x d matrix
            return float(vendi.score_dual(features, normalize=True))
        return float(vendi.score_X(features, normalize=True))


def vendi_interval(features: np.ndarray, groups: int = 20, z: float = 1.96) -> tuple[float, float]:
    """95 % CI of the Vendi score by the delete-a-group jackknife over images.

    Not the bootstrap: a resample with replacement repeats images, and repeated images are
    exactly what the Vendi score counts down.
    """
    n = len(features)
    groups = min(groups, n)
    if groups < 3:
        return float("nan"), float("nan")
    fold = np.arange(n) % groups
    leave_out = np.array([vendi_score(features[fold != g]) for g in range(groups)])
    se = np.sqrt((groups - 1) / groups * np.sum((leave_out - leave_out.mean()) ** 2))
    value = vendi_score(features)
    return float(value - z * se), float(value + z * se)


def vendi_results(sets: dict[str, np.ndarray], space: str, seed: int = 0) -> list[MetricResult]:
    """The Vendi score of each set (e.g. real test and synthetic) at the same N: larger sets
    are subsampled (without replacement, `seed`) to the smallest one's size."""
    n = min(len(f) for f in sets.values())
    rng = np.random.default_rng(seed)
    out = []
    for which, feats in sets.items():
        n_key = "n_synthetic" if which == "synthetic" else "n_real"
        name = f"Vendi score ({which}, {space})"
        if n < 2:
            out.append(MetricResult(name, None, note=f"needs at least 2 images in every set; got {n}",
                                    **{n_key: len(feats)}))
            continue
        sample = feats[np.sort(rng.choice(len(feats), n, replace=False))] if len(feats) > n else feats
        result = MetricResult(name, vendi_score(sample), note=(
            f"effective number of distinct images of {n} (cosine kernel; every set at the same "
            "N); CI: delete-a-group jackknife"), better="higher", **{n_key: n})
        out.append(with_ci(result, vendi_interval(sample)))
    return out
