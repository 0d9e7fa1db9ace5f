"""Each measure moves the right way on controlled sets built from real catalogue photos
(../shared/real-catalog; skipped without it), in the feature space of the shipped encoder."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from shoelib import metrics as M
from shoelib.images import open_rgb
from shoelib.metrics import controls
from shoelib.paths import PROJECT_ROOT

ENCODER = PROJECT_ROOT / "assets" / "models" / "catalog-encoder"
# 500 per set: at 120 the real photos' 5-NN balls in the encoder's 128 dimensions are wide
# enough to hold blurred and recoloured photos, and precision cannot fall (1.00 for every set).
N = 500


@pytest.fixture(scope="module")
def photo_sets(real_catalog_dir):
    """Four disjoint random sets of N real photos: reference, unseen 'same', train, baseline."""
    paths = sorted((real_catalog_dir / "images").glob("*.jpg"))
    order = np.random.default_rng(0).permutation(len(paths))[:4 * N]
    images = [open_rgb(paths[i]).resize((96, 96)) for i in order]
    return [images[i * N:(i + 1) * N] for i in range(4)]


@pytest.fixture(scope="module")
def results(photo_sets, one_torch_thread):
    reference, same, train, baseline = photo_sets
    sets = controls.control_sets(same, train, copies_of=4)
    return controls.control_results(M.EncoderFeatures(ENCODER), reference, train, baseline, sets,
                                    n_boot=200)


def test_real_vs_real_is_near_zero_and_at_chance(results):
    real = results["real (disjoint photos)"]
    assert real["KID"].ci_low <= 0 <= real["KID"].ci_high  # no distance beyond sampling noise
    assert real["precision"].value > 0.8 and real["recall"].value > 0.8
    assert real["coverage"].value > 0.8
    assert real["flagged as copies"].value <= 0.05  # the 99 % calibration: ~1 % by chance


@pytest.mark.parametrize("distorted", controls.DISTORTED)
def test_blur_and_colour_shift_worsen_fidelity_precision_and_coverage(results, distorted):
    real, bad = results[controls.REAL], results[distorted]
    assert bad["KID"].ci_low > real["KID"].ci_high
    assert bad["FD"].ci_low > real["FD"].ci_high
    assert bad["coverage"].ci_high < real["coverage"].ci_low
    assert bad["recall"].ci_high < real["recall"].ci_low
    # Precision falls by a few hundredths: at 200 resamples the blurred set's interval touches
    # real vs real's, so the drop is measured pair by pair, as its own interval.
    assert bad["precision"].value < real["precision"].value
    assert bad["precision drop"].ci_low > 0 and bad["density drop"].ci_low > 0
    assert bad["density"].ci_high < real["density"].ci_low


def test_copies_of_a_few_photos_collapse_vendi_and_coverage_and_are_flagged(results):
    real, copies = results["real (disjoint photos)"], results["copies of 4 training photos"]
    assert copies["Vendi"].value <= 4.0 + 1e-6 and copies["Vendi"].ci_high < real["Vendi"].ci_low
    assert copies["coverage"].ci_high < real["coverage"].ci_low
    assert copies["flagged as copies"].value == 1.0


def test_control_table_has_n_and_cis(results):
    table = controls.control_table(results, N)
    assert list(table["set"]) == list(results) and set(table["N"]) == {f"{N} real / {N}"}
    assert all("[" in cell for cell in table["KID"])
    assert list(table["precision drop"] != "-") == [name in controls.DISTORTED for name in results]


def test_sample_size_guide_on_real_photos(photo_sets, one_torch_thread):
    feats = M.EncoderFeatures(ENCODER)([im for s in photo_sets for im in s])
    table, stable = controls.sample_size_guide(feats, [10, 20, 40, 80, 160, 240], repeats=4)
    assert set(stable["measure"]) == set(controls.GUIDE_MEASURES)
    fd = table[(table["measure"] == "FD")].dropna(subset=["mean"])
    assert fd["N"].min() > 128  # FD needs more images than the encoder's 128 dimensions
    assert pd.isna(stable.set_index("measure").loc["FD", "stable from N"])  # one N only: unknown
    kid = table[table["measure"] == "KID"].sort_values("N")
    assert kid["std"].iloc[-1] < kid["std"].iloc[0]  # the spread shrinks with N
