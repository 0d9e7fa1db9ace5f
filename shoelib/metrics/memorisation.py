"""Memorisation: the nearest real training image of each synthetic one, judged against unseen real photos."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from shoelib.metrics.distances import _l2
from shoelib.metrics.results import MetricResult

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
    """

    results: list[MetricResult]
    closest: pd.DataFrame
    synthetic_similarity: np.ndarray = field(repr=False)
    test_similarity: np.ndarray = field(repr=False)


def memorisation(synthetic: np.ndarray, train: np.ndarray, test: np.ndarray, *,
                 top_k: int = 8, quantile: float = 0.99, feature_space: str = "") -> MemorisationReport:
    """How close synthetic images come to training images, compared with unseen real ones.

    A real test photo is never a copy of a training photo, so the `quantile` of test->train
    nearest similarities marks "as close as an unseen real photo gets"; synthetic images
    beyond it are candidates for memorised copies and are shown in `closest`.
    """
    if len(synthetic) == 0 or len(train) == 0:
        res = MetricResult("memorisation: share closer than real", None, n_real=len(train),
                           n_synthetic=len(synthetic), note="needs synthetic and training images")
        return MemorisationReport([res], pd.DataFrame(), np.zeros(0), np.zeros(0))
    idx, sim = nearest_neighbours(synthetic, train)
    test_sim = nearest_neighbours(test, train)[1] if len(test) else np.zeros(0)
    order = np.argsort(-sim)[:top_k]
    closest = pd.DataFrame({"synthetic_index": order, "train_index": idx[order], "similarity": sim[order]})
    results = [MetricResult("nearest-train similarity (synthetic)", float(sim.mean()), float(sim.std()),
                            len(train), len(synthetic), f"cosine, mean ± std; {feature_space}")]
    if len(test) >= 10:
        cut = float(np.quantile(test_sim, quantile))
        results += [
            MetricResult("nearest-train similarity (real test)", float(test_sim.mean()),
                         float(test_sim.std()), len(train) + len(test), None,
                         "baseline: unseen real photos"),
            MetricResult("memorisation: share closer than real", float((sim > cut).mean()), None,
                         len(train) + len(test), len(synthetic),
                         f"synthetic images nearer a training image than {quantile:.0%} of real "
                         f"test images are (cosine > {cut:.3f})", "lower"),
        ]
    else:
        results.append(MetricResult("memorisation: share closer than real", None, n_real=len(test),
                                    n_synthetic=len(synthetic),
                                    note=f"needs at least 10 real test images for the baseline; got {len(test)}"))
    return MemorisationReport(results, closest, sim, test_sim)
