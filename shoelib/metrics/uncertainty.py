"""Confidence intervals: the bootstrap over images, and the verdict on a difference between runs.

Most measures are means of per-image values (a CLIP score, "colour as asked", "is within the
real manifold"); their bootstrap resamples those values. Set-level measures (FD, CMMD) are
recomputed on resampled images. Measures that duplicated images would distort (Vendi, near
duplicates) do not go through a resampling with replacement: see their modules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from shoelib.metrics.results import MetricResult

LEVEL = 0.95


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central `level` share of `values` (NaNs ignored); (nan, nan) if there are none."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def normal_interval(value: float, replicates: np.ndarray, z: float = 1.96) -> tuple[float, float]:
    """value ± z * the bootstrap std: for set-level distances (FD, CMMD), whose resampled
    sets hold duplicate images that shift the replicates up, so that their percentiles would
    miss the value itself; their spread still measures the sampling noise."""
    replicates = np.asarray(replicates, dtype=np.float64)
    replicates = replicates[np.isfinite(replicates)]
    if len(replicates) < 2:
        return float("nan"), float("nan")
    spread = float(replicates.std(ddof=1))
    return float(value - z * spread), float(value + z * spread)


def bootstrap_means(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """`n_boot` means of `values` resampled with replacement (vectorised)."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    return values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)


def mean_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap interval of the mean of per-image values; (nan, nan) below 2 values."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return float("nan"), float("nan")
    return percentile_interval(bootstrap_means(values, n_boot, seed))


def bootstrap_statistic(statistic: Callable[..., float], samples: Sequence[np.ndarray],
                        n_boot: int = 200, seed: int = 0) -> np.ndarray:
    """`statistic(*resampled)` for `n_boot` resamplings, each sample's rows drawn with
    replacement independently of the others."""
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    for b in range(n_boot):
        out[b] = statistic(*(s[rng.integers(0, len(s), len(s))] for s in samples))
    return out


def with_ci(result: MetricResult, interval: tuple[float, float]) -> MetricResult:
    """`result` with its CI (None where the interval is undefined)."""
    lo, hi = interval
    ok = result.value is not None and np.isfinite(lo) and np.isfinite(hi)
    return replace(result, ci_low=float(lo) if ok else None, ci_high=float(hi) if ok else None)


def verdict(difference_ci: tuple[float, float], name_a: str, name_b: str) -> str:
    """The reading of a difference a - b: a difference only when its 95 % CI excludes 0."""
    lo, hi = difference_ci
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "not computed"
    if lo > 0:
        return f"{name_a} higher"
    if hi < 0:
        return f"{name_b} higher"
    return "no difference (95 % CI includes 0)"
