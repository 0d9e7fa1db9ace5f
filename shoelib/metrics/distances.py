"""Distribution distances between two feature sets: KID (primary), FD/FID and CMMD."""

from __future__ import annotations

import numpy as np

from shoelib.metrics.results import MetricResult, TooFewImagesError, require_images
from shoelib.metrics.uncertainty import (
    bootstrap_statistic,
    normal_interval,
    percentile_interval,
    with_ci,
)

# --- fidelity


def polynomial_mmd(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None,
                   coef: float = 1.0) -> float:
    """Unbiased squared MMD with the cubic polynomial kernel (the KID estimator).

    k(a, b) = (gamma * a.b + coef) ** degree, gamma = 1 / d by default (Binkowski et al. 2018).
    x and y may have different numbers of rows.
    """
    n, m = x.shape[0], y.shape[0]
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    k_xx = (x @ x.T * gamma + coef) ** degree
    k_yy = (y @ y.T * gamma + coef) ** degree
    k_xy = (x @ y.T * gamma + coef) ** degree
    within = ((k_xx.sum() - np.trace(k_xx)) / (n * (n - 1))
              + (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1)))
    return float(within - 2.0 * k_xy.sum() / (n * m))


def kid(real: np.ndarray, fake: np.ndarray, *, subsets: int = 100, subset_size: int = 1000,
        min_images: int = 20, seed: int = 0, feature_space: str = "") -> MetricResult:
    """Kernel Inception Distance: mean and std of the unbiased MMD over random subsets.

    Each subset draws m = min(subset_size, N_real // 2, N_synthetic // 2) images from each
    set without replacement, so subsets differ and the std shows the sampling spread at m.
    KID is unbiased, which makes it the primary fidelity number at hundreds of images.

    Args:
        real, fake: (N, d) feature matrices.
        subsets: how many subsets to average.
        subset_size: largest m.
        min_images: fewest images per set for a number at all.
        seed: subset sampling seed (the same seed gives the same number).
        feature_space: named in the note (e.g. "clip:openai/clip-vit-large-patch14").
    """
    n_r, n_f = len(real), len(fake)
    try:
        require_images("KID", "real", n_r, min_images)
        require_images("KID", "synthetic", n_f, min_images)
    except TooFewImagesError as err:
        return MetricResult("KID", None, None, n_r, n_f, str(err), "lower")
    m = max(2, min(subset_size, n_r // 2, n_f // 2))
    rng = np.random.default_rng(seed)
    values = np.array([
        polynomial_mmd(real[rng.choice(n_r, m, replace=False)], fake[rng.choice(n_f, m, replace=False)])
        for _ in range(subsets)
    ])
    note = (f"{subsets} subsets of {m} per set (std and 95 % CI: the spread over subsets); "
            f"features: {feature_space or 'unnamed'}")
    if min(n_r, n_f) < 1000:
        note += "; N < 1000: compare runs only at the same N"
    result = MetricResult("KID", float(values.mean()), float(values.std()), n_r, n_f, note, "lower")
    return with_ci(result, percentile_interval(values))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), the trace root via eigenvalues."""
    eig = np.linalg.eigvals(sigma1 @ sigma2)
    root_trace = np.sqrt(eig.astype(np.complex128)).real.sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * root_trace)


def fid(real: np.ndarray, fake: np.ndarray, *, min_images: int | None = None,
        feature_space: str = "", n_boot: int = 200, seed: int = 0) -> MetricResult:
    """Fréchet distance between Gaussian fits of the two feature sets.

    Needs more images than feature dimensions (d + 1 by default), or the covariance is
    singular and the number is meaningless; and it is biased upward at small N, so two
    FIDs compare only at the same N (thousands for the 2048-d Inception standard).
    """
    n_r, n_f = len(real), len(fake)
    need = (real.shape[1] + 1 if real.ndim == 2 and real.shape[1] else 2) if min_images is None else min_images
    try:
        require_images(f"FID on {real.shape[1] if real.ndim == 2 else 0}-d features", "real", n_r, need)
        require_images(f"FID on {fake.shape[1] if fake.ndim == 2 else 0}-d features", "synthetic", n_f, need)
    except TooFewImagesError as err:
        return MetricResult("FID", None, None, n_r, n_f, f"{err}; KID is the primary metric", "lower")
    value = frechet(real, fake)
    note = (f"N={min(n_r, n_f)}: FID is biased upward at small N (thousands needed); compare "
            f"only at equal N; CI: value ± 1.96 std of {n_boot} bootstrap resamples of both sets; features: "
            f"{feature_space or 'unnamed'}")
    result = MetricResult("FID", value, None, n_r, n_f, note, "lower")
    if n_boot:
        result = with_ci(result, normal_interval(
            value, bootstrap_statistic(frechet, (real, fake), n_boot, seed)))
    return result


def frechet(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between the Gaussian fits of two feature matrices."""
    return frechet_distance(real.mean(0), np.cov(real, rowvar=False),
                            fake.mean(0), np.cov(fake, rowvar=False))


def rbf_mmd(x: np.ndarray, y: np.ndarray, sigma: float = 10.0, scale: float = 1000.0) -> float:
    """Squared MMD with a Gaussian kernel, V-statistic form (as the CMMD reference computes it)."""
    gamma = 1.0 / (2.0 * sigma**2)

    def mean_kernel(a: np.ndarray, b: np.ndarray) -> float:
        sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
        return float(np.exp(-gamma * np.maximum(sq, 0.0)).mean())

    return scale * (mean_kernel(x, x) + mean_kernel(y, y) - 2.0 * mean_kernel(x, y))


def cmmd(real_clip: np.ndarray, fake_clip: np.ndarray, *, min_images: int = 20,
         clip_name: str = "", n_boot: int = 200, seed: int = 0) -> MetricResult:
    """CMMD (Jayasumana et al. 2024): RBF MMD (sigma 10, x1000) on L2-normalised CLIP embeddings."""
    n_r, n_f = len(real_clip), len(fake_clip)
    try:
        require_images("CMMD", "real", n_r, min_images)
        require_images("CMMD", "synthetic", n_f, min_images)
    except TooFewImagesError as err:
        return MetricResult("CMMD", None, None, n_r, n_f, str(err), "lower")
    real_clip, fake_clip = _l2(real_clip), _l2(fake_clip)
    result = MetricResult("CMMD", rbf_mmd(real_clip, fake_clip), None, n_r, n_f,
                          f"CLIP {clip_name}; sigma=10, scale=1000, V-statistic; CI: value ± "
                          f"1.96 std of {n_boot} bootstrap resamples", "lower")
    if n_boot:
        result = with_ci(result, normal_interval(
            result.value, bootstrap_statistic(rbf_mmd, (real_clip, fake_clip), n_boot, seed)))
    return result


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
