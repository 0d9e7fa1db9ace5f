"""What every measure returns: a `MetricResult` row with its N (and why, when it has no value)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

# --- results


@dataclass(frozen=True)
class MetricResult:
    """One number of the evaluation table, with the N it was computed on.

    Attributes:
        name: what is measured ("KID", "colour accuracy", ...).
        value: the number; None when it could not be computed meaningfully (see `note`).
        std: spread (over subsets, seeds or images, as `note` says); None if not applicable.
        n_real: real images it used (None if none).
        n_synthetic: synthetic images it used (None if none).
        note: how to read it, or why `value` is None and what would fix it.
        better: "lower", "higher" or "" (no direction).
        ci_low, ci_high: 95 % confidence interval of `value` (bootstrap over images unless
            `note` says otherwise); None where none was computed.
    """

    name: str
    value: float | None
    std: float | None = None
    n_real: int | None = None
    n_synthetic: int | None = None
    note: str = ""
    better: str = ""
    ci_low: float | None = None
    ci_high: float | None = None

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


class TooFewImagesError(ValueError):
    """A metric was asked for with fewer images than it needs to mean anything."""


def require_images(metric: str, which: str, have: int, need: int) -> None:
    """Raise TooFewImagesError naming the metric, the set and how many images are needed."""
    if have < need:
        raise TooFewImagesError(
            f"{metric} needs at least {need} {which} images; got {have} "
            f"({need - have} more needed)"
        )


def results_table(results: Sequence[MetricResult]) -> pd.DataFrame:
    """The summary table: one row per MetricResult (image counts stay integers, blank if none)."""
    table = pd.DataFrame([r.as_row() for r in results])
    for column in ("n_real", "n_synthetic"):
        if column in table:
            table[column] = table[column].astype("Int64")
    return table
