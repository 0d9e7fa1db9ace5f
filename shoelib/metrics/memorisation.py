"""Memorisation: the nearest real training image of each synthetic one, judged against unseen real photos."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from shoelib.metrics.distances import _l2
from shoelib.metrics.results import MetricResult
from shoelib.metrics.uncertainty import mean_ci, with_ci

# --- memorisation


def nearest_neighbours(query: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the most cosine-similar reference row.

    Returns:
        (index into reference, cosine similarity), each of length len(query).
    """
    sim = _l2(query) @ _l2(reference).T
    idx = sim.argmax(axis=1)
    return idx, sim[np.arange(len(query)), idx]


@dataclass(frozen=True)
class MemorisationReport:
    """Nearest training image of every synthetic one, judged against real held-out images.

    Attributes:
        results: the table rows.
        closest: the closest synthetic/train pairs (synthetic_index, train_index, similarity).
        synthetic_similarity: nearest-train similarity of each synthetic image.
        test_similarity: nearest-train similarity of each real test image (the baseline).
        flagged: every synthetic/train pair above the copy threshold, closest first.
        threshold: the cosine similarity above which a synthetic image is flagged (None if
            there was no baseline to calibrate it on and no fixed threshold).
    """

    results: list[MetricResult]
    closest: pd.DataFrame
    synthetic_similarity: np.ndarray = field(repr=False)
    test_similarity: np.ndarray = field(repr=False)
    flagged: pd.DataFrame = field(default_factory=pd.DataFrame)
    threshold: float | None = None


def memorisation(synthetic: np.ndarray, train: np.ndarray, test: np.ndarray, *,
                 top_k: int = 8, quantile: float = 0.99, feature_space: str = "",
                 threshold: float | None = None, n_boot: int = 1000,
                 seed: int = 0) -> MemorisationReport:
    """How close synthetic images come to training images, compared with unseen real ones.

    A real test photo is never a copy of a training photo, so the `quantile` of test->train
    nearest similarities marks "as close as an unseen real photo gets"; synthetic images
    beyond it are flagged as candidate copies (`flagged`). A copy-detection descriptor comes
    with its own threshold (`threshold`, e.g. SSCD's 0.75), which then replaces the calibrated
    one. Shares and means carry 95 % bootstrap CIs over synthetic images (threshold fixed).
    """
    if len(synthetic) == 0 or len(train) == 0:
        res = MetricResult("memorisation: share closer than real", None, n_real=len(train),
                           n_synthetic=len(synthetic), note="needs synthetic and training images")
        return MemorisationReport([res], pd.DataFrame(), np.zeros(0), np.zeros(0))
    idx, sim = nearest_neighbours(synthetic, train)
    test_sim = nearest_neighbours(test, train)[1] if len(test) else np.zeros(0)
    order = np.argsort(-sim)
    closest = pd.DataFrame({"synthetic_index": order, "train_index": idx[order],
                            "similarity": sim[order]})
    results = [with_ci(MetricResult("nearest-train similarity (synthetic)", float(sim.mean()),
                                    float(sim.std()), len(train), len(synthetic),
                                    f"cosine, mean ± std; {feature_space}"),
                       mean_ci(sim, n_boot, seed))]
    if len(test) >= 10:
        results.append(with_ci(MetricResult(
            "nearest-train similarity (real test)", float(test_sim.mean()), float(test_sim.std()),
            len(train) + len(test), None, "baseline: unseen real photos"),
            mean_ci(test_sim, n_boot, seed)))
    if threshold is not None:
        cut, how = float(threshold), f"the descriptor's copy threshold (cosine > {threshold:.3f})"
    elif len(test) >= 10:
        cut = float(np.quantile(test_sim, quantile))
        how = (f"nearer a training image than {quantile:.0%} of real test images are "
               f"(cosine > {cut:.3f})")
    else:
        results.append(MetricResult("memorisation: share closer than real", None, n_real=len(test),
                                    n_synthetic=len(synthetic),
                                    note=f"needs at least 10 real test images for the baseline; got {len(test)}"))
        return MemorisationReport(results, closest.head(top_k), sim, test_sim)
    copies = (sim > cut).astype(float)
    results.append(with_ci(MetricResult(
        "memorisation: share closer than real", float(copies.mean()), None,
        len(train) + len(test), len(synthetic), f"synthetic images flagged as copies: {how}",
        "lower"), mean_ci(copies, n_boot, seed)))
    flagged = closest[closest["similarity"] > cut].reset_index(drop=True)
    return MemorisationReport(results, closest.head(top_k), sim, test_sim, flagged, cut)
