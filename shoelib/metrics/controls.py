"""Controlled image sets built from real photos, to check that each measure moves the right way,
and a sample-size guide: how many images each measure needs before it is stable.

- real vs real (disjoint photos of one catalogue): distances near 0, precision/recall/coverage
  at the level two real samples reach, copies flagged at the chance rate of the calibration;
- real vs blurred or colour-shifted real photos: fidelity (KID, FD, precision, density) worsens;
- real vs copies of a few training photos: Vendi and coverage collapse, copies are flagged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

from shoelib.metrics.distances import fid, kid
from shoelib.metrics.diversity import vendi_interval, vendi_score
from shoelib.metrics.memorisation import memorisation
from shoelib.metrics.precision_recall import prdc_per_image, prdc_results
from shoelib.metrics.results import MetricResult
from shoelib.metrics.uncertainty import mean_ci, with_ci

REAL = "real (disjoint photos)"
# Sets whose image i is a version of REAL's image i: their drop is measured pair by pair.
DISTORTED = ("blurred (Gaussian, radius 3 px)", "colour-shifted (RGB -> BRG)")


def blurred(image: Image.Image, radius: float = 3.0) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius))


def colour_shifted(image: Image.Image) -> Image.Image:
    """Channels rotated (R, G, B) -> (B, R, G): a red shoe turns blue, white stays white."""
    r, g, b = image.convert("RGB").split()
    return Image.merge("RGB", (b, r, g))


def control_sets(same: Sequence[Image.Image], train: Sequence[Image.Image],
                 copies_of: int = 4) -> dict[str, list[Image.Image]]:
    """The controlled 'synthetic' sets, each as large as `same` (real photos unseen elsewhere):
    the photos themselves, blurred, colour-shifted, and `copies_of` training photos repeated."""
    n = len(same)
    return {REAL: list(same),
            DISTORTED[0]: [blurred(im) for im in same],
            DISTORTED[1]: [colour_shifted(im) for im in same],
            f"copies of {copies_of} training photos": [train[i % copies_of] for i in range(n)]}


def _cell(r) -> str:
    if r.value is None:
        return "n/a"
    if r.ci_low is None:
        return f"{r.value:.3f}"
    return f"{r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"


def control_results(features: Callable[[Sequence[Image.Image]], np.ndarray],
                    reference: Sequence[Image.Image], train: Sequence[Image.Image],
                    baseline: Sequence[Image.Image], sets: dict[str, Sequence[Image.Image]],
                    *, k: int = 5, n_boot: int = 200, seed: int = 0
                    ) -> dict[str, dict[str, MetricResult]]:
    """Every measure of each controlled set against the real `reference` photos, with N and
    95 % CIs; memorisation against `train`, calibrated on `baseline` (unseen real photos).

    For the DISTORTED sets also "precision drop" and "density drop": REAL's per-image term minus
    the distorted version's, photo by photo, with a bootstrap CI over the pairs. Two separate
    intervals can touch while the paired difference clearly excludes 0.
    """
    ref, tr, base = features(reference), features(train), features(baseline)
    out, terms = {}, {}
    for name, images in sets.items():
        syn = features(images)
        if name == REAL or name in DISTORTED:
            terms[name] = prdc_per_image(ref, syn, k)
        rows = {"KID": kid(ref, syn, subsets=50, seed=seed), "FD": fid(ref, syn, n_boot=n_boot, seed=seed)}
        rows.update({r.name.split(" ")[0]: r
                     for r in prdc_results(ref, syn, k=k, n_boot=n_boot, seed=seed)})
        rows["Vendi"] = with_ci(MetricResult("Vendi", vendi_score(syn), n_synthetic=len(syn),
                                             better="higher"), vendi_interval(syn))
        memo = memorisation(syn, tr, base, n_boot=n_boot, seed=seed)
        rows["flagged as copies"] = next(r for r in memo.results if r.name.startswith("memorisation"))
        if name in DISTORTED and REAL in terms:
            for measure in ("precision", "density"):
                drop = terms[REAL][measure] - terms[name][measure]
                rows[f"{measure} drop"] = with_ci(MetricResult(
                    f"{measure} drop", float(drop.mean()), n_synthetic=len(drop),
                    note=f"{REAL} minus this set, photo by photo; CI: bootstrap over the pairs"),
                    mean_ci(drop, n_boot, seed))
        out[name] = rows
    return out


def control_table(results: dict[str, dict[str, MetricResult]], n_real: int) -> pd.DataFrame:
    """`control_results` as one row per set: each measure as "value [95 % CI]", and the N."""
    columns = ("KID", "FD", "precision", "precision drop", "density", "density drop", "recall",
               "coverage", "Vendi", "flagged as copies")
    return pd.DataFrame([{"set": name, "N": f"{n_real} real / {rows['KID'].n_synthetic}",
                          **{c: _cell(rows[c]) if c in rows else "-" for c in columns}}
                         for name, rows in results.items()])


GUIDE_MEASURES = ("KID", "FD", "precision", "recall", "density", "coverage", "Vendi")


def _measures(a: np.ndarray, b: np.ndarray, k: int, seed: int) -> dict[str, float]:
    out = {"KID": kid(a, b, subsets=20, min_images=2, seed=seed).value,
           "FD": fid(a, b, n_boot=0).value}
    for r in prdc_results(a, b, k=k, n_boot=20, seed=seed):
        out[r.name.split(" ")[0]] = r.value
    out["Vendi"] = vendi_score(b)
    return out


def sample_size_guide(real: np.ndarray, sizes: Sequence[int], *, repeats: int = 5, k: int = 5,
                      seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each measure of real vs real (two disjoint random subsets of N real photos' features),
    `repeats` times at each N.

    Returns:
        (mean and std over repeats per measure and N; per measure the smallest N from which the
        mean stays within one std of its value at the largest N: "stable from N"; None when
        only the largest N is, i.e. more images are needed than were tried).
    """
    rng = np.random.default_rng(seed)
    sizes = [n for n in sizes if 2 * n <= len(real)]
    rows = []
    for n in sizes:
        for rep in range(repeats):
            order = rng.permutation(len(real))
            values = _measures(real[order[:n]], real[order[n:2 * n]], k, seed + rep)
            rows += [{"measure": m, "N": n, "value": v} for m, v in values.items()]
    frame = pd.DataFrame(rows)
    table = (frame.groupby(["measure", "N"])["value"].agg(["mean", "std"]).reset_index())
    stable = []
    for measure in GUIDE_MEASURES:
        t = table[table["measure"] == measure].dropna(subset=["mean"]).sort_values("N")
        if t.empty:
            stable.append({"measure": measure, "stable from N": None, "largest N tried": None})
            continue
        final, spread = t["mean"].iloc[-1], t["std"].iloc[-1]
        ok = (t["mean"] - final).abs() <= np.maximum(t["std"], spread)
        first = None
        for i in range(len(t)):
            if ok.iloc[i:].all():
                first = int(t["N"].iloc[i])
                break
        stable.append({"measure": measure,
                       "stable from N": first if first != int(t["N"].iloc[-1]) else None,
                       "largest N tried": int(t["N"].iloc[-1])})
    return table, pd.DataFrame(stable).astype({"stable from N": "Int64", "largest N tried": "Int64"})
