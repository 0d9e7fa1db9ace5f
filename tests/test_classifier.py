"""The downstream colour classifier: it learns, it is deterministic, the study adds up."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from shoelib import classifier as C
from shoelib.metrics import PALETTE

PX = 16


def shoe_pixels(colour: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """n tiny product photos: a jittered block of a palette colour on white, plus noise."""
    out = np.full((n, PX, PX, 3), 255, dtype=np.float64)
    for k in range(n):
        y0, x0 = rng.integers(2, 6), rng.integers(1, 5)
        h, w = rng.integers(5, 9), rng.integers(7, 11)
        shade = rng.uniform(0.75, 1.15)
        out[k, y0:y0 + h, x0:x0 + w] = np.array(PALETTE[colour]) * shade
    out += rng.normal(0, 8, out.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def colour_set(name: str, colours: list[str], n_each: int, seed: int) -> C.LabelledSet:
    rng = np.random.default_rng(seed)
    x = np.concatenate([shoe_pixels(c, n_each, rng) for c in colours])
    y = np.repeat(np.arange(len(colours)), n_each)
    return C.LabelledSet(name, x, y)


CONFIG = C.ClassifierConfig(image_px=PX, steps=120, batch_size=32, learning_rate=5e-3)


def test_classifier_learns_separable_colours_well_above_chance():
    colours = ["Red", "Blue", "Green"]
    train, test = colour_set("real", colours, 20, 0), colour_set("test", colours, 10, 1)
    runs = C.run_classifiers([train], test, len(colours), CONFIG, seeds=[0, 1])
    assert list(runs["training_set"]) == ["real", "real"]
    assert runs["accuracy"].min() > 0.8  # chance is 1/3
    assert runs["macro_f1"].min() > 0.75


def test_training_is_deterministic_for_a_seed():
    data = colour_set("real", ["Red", "Blue"], 8, 0)
    config = C.ClassifierConfig(image_px=PX, steps=10, batch_size=8)
    a = C.predict(C.train_classifier(data, 2, config, seed=3), data.x)
    b = C.predict(C.train_classifier(data, 2, config, seed=3), data.x)
    assert np.array_equal(a, b)


def test_study_compares_training_sets_on_the_same_test_set():
    colours = ["Red", "Blue"]
    real = colour_set("real", colours, 10, 0)
    synthetic = colour_set("synthetic", colours, 10, 5)
    mixed = C.LabelledSet("real+synthetic", np.concatenate([real.x, synthetic.x]),
                          np.concatenate([real.y, synthetic.y]))
    empty = C.LabelledSet("nothing", real.x[:0], real.y[:0])
    test = colour_set("test", colours, 6, 9)
    config = C.ClassifierConfig(image_px=PX, steps=30, batch_size=16)
    runs = C.run_classifiers([real, mixed, synthetic, empty], test, 2, config, seeds=[0, 1, 2])
    assert len(runs) == 9 and set(runs["n_test"]) == {12}  # the empty set is skipped
    summary = C.summarise_study(runs)
    assert list(summary["training_set"]) == ["real", "real+synthetic", "synthetic"]
    assert list(summary["n_train"]) == [20, 40, 20] and set(summary["seeds"]) == {3}
    row = runs[runs["training_set"] == "real"]["accuracy"]
    assert summary.loc[0, "accuracy_mean"] == pytest.approx(row.mean())
    assert summary.loc[0, "accuracy_std"] == pytest.approx(row.std(ddof=0))
    baseline = C.majority_baseline(real.y, test.y, 2)
    results = C.study_results(summary, 2, baseline)
    assert len(results) == 8 and all(r.n_real == 12 for r in results)
    assert "majority baseline = 0.50" in results[0].note
    assert [r.name for r in results[-2:]] == ["classifier accuracy (majority baseline)",
                                              "classifier macro-f1 (majority baseline)"]


def test_majority_baseline_always_answers_the_most_frequent_training_class():
    train_y = np.array([2, 2, 2, 0, 1])
    test_y = np.array([2, 2, 0, 1, 1, 1, 2, 0, 0, 0])  # class 2 is 3 of 10 here
    baseline = C.majority_baseline(train_y, test_y, 3)
    assert baseline["class"] == 2
    assert baseline["accuracy"] == pytest.approx(0.3)  # not 1/3, the chance level
    # F1 of class 2: precision 0.3, recall 1 -> 0.4615...; the other classes score 0.
    assert baseline["macro_f1"] == pytest.approx((2 * 0.3 / 1.3) / 3)
    with pytest.raises(ValueError, match="needs training and test labels"):
        C.majority_baseline(train_y[:0], test_y, 3)


def test_select_classes_and_labels_use_palette_names():
    train = ["Black"] * 5 + ["Navy Blue"] * 3 + ["Off White"] * 4 + ["Multi"] * 9 + ["Teal"]
    test = ["Black", "navy blue", "White", "Multi"]
    classes = C.select_classes(train, test, min_per_class=3)
    assert classes == ["Black", "White", "Navy Blue"]  # Multi has no palette colour
    keep, y = C.encode_labels(["Off White", "Multi", "Black", "navy blue", None], classes)
    assert keep.tolist() == [True, False, True, True, False] and y.tolist() == [1, 0, 2]


def test_load_pixels_reduces_images(tmp_path):
    from PIL import Image

    paths = []
    for i, colour in enumerate(["Red", "Blue"]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (64, 64), PALETTE[colour]).save(paths[-1])
    x = C.load_pixels(paths, 8)
    assert x.shape == (2, 8, 8, 3) and x.dtype == np.uint8
    assert tuple(x[0, 4, 4]) == PALETTE["Red"]
    assert C.load_pixels([], 8).shape == (0, 8, 8, 3)
    assert isinstance(C.summarise_study(pd.DataFrame(
        [{"training_set": "real", "seed": 0, "n_train": 1, "n_test": 1, "accuracy": 1.0,
          "macro_f1": 1.0}])), pd.DataFrame)


# --- a linear probe on a pretrained image encoder (here a tiny random DINOv2, offline)

def test_backbone_probe_learns_on_frozen_embeddings_and_encodes_each_image_once(tiny_dinov2,
                                                                                 monkeypatch):
    colours = ["Red", "Blue", "Green"]
    train, test = colour_set("real", colours, 12, 0), colour_set("test", colours, 6, 1)
    config = C.ClassifierConfig(image_px=PX, steps=150, batch_size=16, learning_rate=2e-2,
                                architecture="probe", backbone=str(tiny_dinov2))
    backbone = C.load_backbone(str(tiny_dinov2))
    frozen = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    encoded = []
    real_call = type(backbone).__call__
    monkeypatch.setattr(type(backbone), "__call__",
                        lambda self, images: encoded.append(len(images)) or real_call(self, images))
    runs = C.run_classifiers([train], test, len(colours), config, seeds=[0, 1])
    assert runs["accuracy"].min() > 0.8  # chance is 1/3: colour survives a random encoder
    # each distinct image and mirror image once, however many steps and seeds saw it
    assert sum(encoded) <= 2 * len(train) + len(test)
    assert all(torch.equal(frozen[k], v) for k, v in backbone.model.state_dict().items())


def test_an_unloadable_backbone_is_one_line_naming_the_parameter(tmp_path):
    with pytest.raises(C.BackboneError) as err:
        C.load_backbone(str(tmp_path / "no-such-model"))
    assert "\n" not in str(err.value) and "study_backbone=" in str(err.value)
    assert "hf download" in str(err.value)
