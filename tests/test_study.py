"""The downstream study: its sets, its statistics, and that it can tell helped from hurt."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from shoelib import demo, study
from shoelib.catalog import read_styles
from shoelib.classifier import ClassifierConfig, LabelledSet, load_pixels


def test_scores_match_sklearn_including_absent_classes():
    rng = np.random.default_rng(0)
    for _ in range(20):
        truth, pred = rng.integers(0, 4, 50), rng.integers(0, 5, 50)  # class 5 never true
        accuracy, f1 = study._scores(pred, truth, 6)
        assert accuracy == pytest.approx((pred == truth).mean())
        assert f1 == pytest.approx(f1_score(truth, pred, labels=list(range(6)), average="macro",
                                            zero_division=0))


def test_fractions_are_nested_per_class_and_keep_every_class():
    labels = ["a"] * 50 + ["b"] * 9 + ["c"] * 1
    sets = study.nested_fractions(labels, (0.1, 0.5, 1.0), seed=3)
    assert [len(sets[f]) for f in (0.1, 0.5, 1.0)] == [5 + 1 + 1, 25 + 5 + 1, 60]
    assert set(sets[0.1]) <= set(sets[0.5]) <= set(sets[1.0])
    assert {labels[i] for i in sets[0.1]} == {"a", "b", "c"}
    again = study.nested_fractions(labels, (0.1, 0.5, 1.0), seed=3)
    assert all((sets[f] == again[f]).all() for f in sets)


def test_training_sets_scale_synthetic_with_the_real_count_and_say_when_capped():
    real = ["a"] * 40 + ["b"] * 60
    config = study.StudyConfig(fractions=(0.1, 1.0), synthetic_multiples=(1.0, 2.0))
    sets = {s.name: s for s in study.training_sets(real, ["a"] * 30, config)}
    assert list(sets) == ["real 10%", "real 10% + 1x synthetic", "real 10% + 2x synthetic",
                          "real 100%", "real 100% + 1x synthetic", "synthetic only"]
    assert len(sets["real 10% + 1x synthetic"].synthetic) == 10
    assert set(sets["real 10% + 1x synthetic"].synthetic) <= set(sets["real 10% + 2x synthetic"].synthetic)
    assert len(sets["real 100% + 1x synthetic"].synthetic) == 30  # 100 wanted, 30 exist
    assert sets["real 100% + 1x synthetic"].note.startswith("100 synthetic images wanted, the run has 30")
    assert sets["real 10% + 2x synthetic"].note == ""
    # at 100 % both multiples are capped to all 30 images: 2x is the same set, not trained again
    assert "real 100% + 2x synthetic" not in sets
    assert sets["real 100% + 1x synthetic"].note.endswith("; 2x (200) capped to the same set")


@pytest.mark.parametrize("field, value, words", [
    ("fractions", (0.0, 0.5), "study_fractions=[0.0, 0.5] must be shares in (0, 1]"),
    ("synthetic_multiples", (-1,), "study_synthetic_multiples=[-1] must be positive"),
    ("seeds", (0, 0, 1), "needs at least 3 different seeds"),
])
def test_bad_settings_are_one_line_naming_the_setting(field, value, words):
    with pytest.raises(study.StudyConfigError, match=words.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(").replace(")", r"\)")):
        study.StudyConfig(**{field: value})


CLASSES = ["Sports Shoes", "Heels", "Flip Flops", "Formal Shoes"]


@pytest.fixture(scope="module")
def footwear():
    """Real shipped photos of four footwear types at 32 px: 12 training photos of each type
    but Formal Shoes (absent from the real training set), 25 test photos of each, and 20
    further Formal Shoes photos that no set contains twice."""
    frame = read_styles(demo.PHOTOS_DIR / "styles.csv").frame.drop_duplicates("id")
    frame = frame[frame["articleType"].isin(CLASSES)].sort_values("id")
    picks = {c: frame[frame["articleType"] == c]["id"].tolist() for c in CLASSES}
    train = [(i, c) for c in CLASSES[:3] for i in picks[c][:12]]
    test = [(i, c) for c in CLASSES for i in picks[c][12:37]]
    spare = [(i, "Formal Shoes") for i in picks["Formal Shoes"][37:57]]

    def labelled(name, rows):
        x = load_pixels([demo.PHOTOS_DIR / "images" / f"{i}.jpg" for i, _ in rows], 32)
        return LabelledSet(name, x, np.array([CLASSES.index(c) for _, c in rows]))
    return labelled("real", train), labelled("test", test), labelled("spare", spare)


CONFIG = study.StudyConfig(fractions=(1.0,), synthetic_multiples=(1.0,), synthetic_only=False,
                           seeds=(0, 1, 2, 3, 4), bootstrap=300,
                           classifier=ClassifierConfig(image_px=32, steps=150, batch_size=32,
                                                       architecture="small"))


def test_study_reports_helped_for_informative_and_hurt_for_harmful_images(footwear, tmp_path):
    real, test, spare = footwear
    # informative: real photos of the class the real set lacks, correctly labelled
    informative = spare
    helped = study.run_study(real, informative, test, CLASSES, CONFIG, tmp_path / "helped")
    verdict = study.verdicts(helped, test.y, CLASSES, CONFIG, focus_class="Formal Shoes")
    assert verdict["verdict"].tolist() == ["synthetic data helped accuracy at 100% real (1x synthetic)"]
    assert verdict["Formal Shoes recall difference"].iloc[0] > 0.3
    assert verdict["recall verdict"].iloc[0].startswith("synthetic data helped Formal Shoes recall")

    # harmful: the real training photos again, twice over, with random labels
    rng = np.random.default_rng(0)
    noise = LabelledSet("noise", np.concatenate([real.x, real.x]), rng.integers(0, 4, 2 * len(real)))
    harmful_config = study.StudyConfig(**{**CONFIG.__dict__, "synthetic_multiples": (2.0,)})
    hurt = study.run_study(real, noise, test, CLASSES, harmful_config, tmp_path / "hurt")
    verdict = study.verdicts(hurt, test.y, CLASSES, harmful_config)
    assert verdict["verdict"].tolist() == ["synthetic data hurt accuracy at 100% real (2x synthetic)"]

    summary = study.summarise(helped, test.y, CLASSES, CONFIG)
    real_only, mixed = summary.iloc[0], summary.iloc[1]
    assert real_only["recall Formal Shoes"] == 0.0  # never seen, never predicted
    assert mixed["accuracy"] > real_only["accuracy"]
    assert real_only["accuracy_lo"] <= real_only["accuracy"] <= real_only["accuracy_hi"]


def test_a_rerun_trains_only_what_is_missing(footwear, tmp_path, monkeypatch):
    real, test, spare = footwear
    config = study.StudyConfig(**{**CONFIG.__dict__, "classifier": ClassifierConfig(image_px=32, steps=10)})
    first = study.run_study(real, spare, test, CLASSES, config, tmp_path)
    lines = (tmp_path / study.RUNS_FILE).read_text().splitlines()
    (tmp_path / study.RUNS_FILE).write_text("\n".join(lines[:8]) + "\n")  # as if killed after 8 runs
    calls = []
    real_train = study.train_classifier
    monkeypatch.setattr(study, "train_classifier", lambda *a, **k: calls.append(a) or real_train(*a, **k))
    again = study.run_study(real, spare, test, CLASSES, config, tmp_path)
    assert len(calls) == 2
    assert again["predictions"].tolist() == first["predictions"].tolist()  # deterministic per seed
    # different classifier settings: the old runs are not reused
    other = study.StudyConfig(**{**CONFIG.__dict__, "classifier": ClassifierConfig(image_px=32, steps=5)})
    calls.clear()
    study.run_study(real, spare, test, CLASSES, other, tmp_path)
    assert len(calls) == 10


PARAMS = dict(study_fractions=[0.1, 1.0], study_synthetic_multiples=[1], study_seeds=[0, 1, 2],
              study_steps=10, study_image_px=32, study_tasks=["article type"], cpu_threads=1)


def test_the_probe_classifier_takes_a_backbone_and_a_bad_one_stops_before_training(
        tiny_dinov2, tmp_path):
    config, _ = study.config_from_params(**PARAMS, study_classifier="probe",
                                         study_backbone=str(tiny_dinov2))
    assert (config.classifier.architecture, config.classifier.backbone) == ("probe", str(tiny_dinov2))
    small, _ = study.config_from_params(**PARAMS)
    assert (small.classifier.architecture, small.classifier.backbone) == ("small", "")
    with pytest.raises(study.StudyConfigError, match="needs study_backbone"):
        study.config_from_params(**PARAMS, study_classifier="probe")
    with pytest.raises(study.StudyConfigError, match="study_classifier='vit' must be one of"):
        study.config_from_params(**PARAMS, study_classifier="vit")
    with pytest.raises(ValueError, match="study_backbone=.* could not be loaded"):
        study.config_from_params(**PARAMS, study_classifier="probe",
                                 study_backbone=str(tmp_path / "missing"))


def test_cpu_threads_0_trains_the_study_classifiers_on_torchs_own_thread_count():
    import torch

    from shoelib.classifier import torch_threads
    config, _ = study.config_from_params(**{**PARAMS, "cpu_threads": 0})
    assert config.classifier.threads == 0
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch_threads(config.classifier.threads):
            assert torch.get_num_threads() == 2  # 0 = keep torch's count, not one thread
        with torch_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
