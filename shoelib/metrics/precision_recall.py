"""Precision, recall, density and coverage (Kynkäänniemi et al. 2019, Naeem et al. 2020):
fidelity and diversity measured apart, with k-nearest-neighbour balls in any feature space.

- precision: share of synthetic images inside the real manifold (a ball around some real
  image reaching its k-th nearest real neighbour) - fidelity;
- recall: share of real images inside the synthetic manifold - diversity;
- density: how many real balls a synthetic image falls in, / k (1 on average for a perfect
  generator; above 1 where synthetic images crowd into dense real regions);
- coverage: share of real images whose ball holds at least one synthetic image.

The numbers are those of the `prdc` package (its authors' reference code). Their 95 % CIs
resample the per-image terms over images with the balls kept from the full sets: resampling
the sets themselves would put duplicates at distance 0 and shrink every ball.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np

from shoelib.metrics.results import MetricResult, TooFewImagesError, require_images
from shoelib.metrics.uncertainty import mean_ci, with_ci

MEASURES = ("precision", "recall", "density", "coverage")


@contextlib.contextmanager
def _quiet():
    """prdc prints a line per call, and its sklearn pairwise_distances(n_jobs=8) warns about
    joblib configuration each time: neither says anything about the measure."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")
        yield


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    """`prdc.compute_prdc` (quietly)."""
    from prdc import compute_prdc

    with _quiet():
        values = compute_prdc(real_features=real, fake_features=fake, nearest_k=k)
    return {name: float(values[name]) for name in MEASURES}


def prdc_per_image(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, np.ndarray]:
    """The per-image terms whose means are the four measures: precision and density per
    synthetic image, recall and coverage per real image (prdc's own distance functions)."""
    from prdc.prdc import compute_nearest_neighbour_distances, compute_pairwise_distance

    with _quiet():
        real_radii = compute_nearest_neighbour_distances(real, k)
        fake_radii = compute_nearest_neighbour_distances(fake, k)
        dist = compute_pairwise_distance(real, fake)  # (real, fake)
    inside_real = dist < real_radii[:, None]
    return {"precision": inside_real.any(axis=0).astype(float),
            "recall": (dist < fake_radii[None, :]).any(axis=1).astype(float),
            "density": inside_real.sum(axis=0) / k,
            "coverage": (dist.min(axis=1) < real_radii).astype(float)}


def prdc_results(real: np.ndarray, fake: np.ndarray, *, k: int = 5, n_boot: int = 1000,
                 seed: int = 0, feature_space: str = "", which: str = "synthetic"
                 ) -> list[MetricResult]:
    """The four measures of `fake` against `real`, each with its N and 95 % CI.

    Needs k + 2 images in each set: the prdc package takes each image's k-th neighbour with
    `argpartition(kth=k + 1)` over its distances to the set, itself included.
    """
    n_r, n_f = len(real), len(fake)
    try:
        require_images(f"precision/recall with k={k}", "real", n_r, k + 2)
        require_images(f"precision/recall with k={k}", which, n_f, k + 2)
    except TooFewImagesError as err:
        return [MetricResult(f"{m} ({which})", None, None, n_r, n_f, str(err), "higher")
                for m in MEASURES]
    # The measures are the means of the per-image terms (tests check both against prdc's own
    # compute_prdc): one pass over the distances instead of two.
    terms = prdc_per_image(real, fake, k)
    values = {name: float(terms[name].mean()) for name in MEASURES}
    out = []
    for name in MEASURES:
        note = f"k={k} nearest neighbours; features: {feature_space or 'unnamed'}"
        if name == "density":
            note += "; 1 = as dense as real, above 1 = crowding into dense real regions"
        result = MetricResult(f"{name} ({which})", values[name], None, n_r, n_f, note,
                              "" if name == "density" else "higher")
        out.append(with_ci(result, mean_ci(terms[name], n_boot, seed)))
    return out
