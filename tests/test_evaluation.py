"""Notebook 07's steps on constructed real/synthetic sets, including a missing synthetic run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from shoelib import evaluation as E
from shoelib import generate as G
from shoelib import metrics as M
from shoelib.classifier import ClassifierConfig
from shoelib.figures import image_grid
from shoelib.paths import RunPaths

CATEGORY = "Casual Shoes"
COLOURS = ["Red", "Blue", "Green"]


def shoe(colour: str, rng: np.random.Generator, size: int = 64) -> Image.Image:
    im = Image.new("RGB", (size, size), (255, 255, 255))
    dx, dy = rng.integers(-4, 5, size=2)
    rgb = tuple(int(np.clip(c * rng.uniform(0.8, 1.1), 0, 255)) for c in M.PALETTE[colour])
    ImageDraw.Draw(im).rounded_rectangle([14 + dx, 24 + dy, 50 + dx, 40 + dy], radius=5, fill=rgb)
    return im


def write_split(folder: Path, n_each: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    rows = []
    for colour in COLOURS:
        for k in range(n_each):
            name = f"{colour.lower()}_{k}.png"
            shoe(colour, rng).save(folder / name)
            rows.append({"file_name": name, "text": f"a photo of {colour.lower()} casual shoes",
                         "colour": colour, "gender": "Men", "season": "Summer"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def output_root(tmp_path_factory) -> Path:
    """Real train/test splits of coloured 'shoes' and a synthetic run of 12 such images."""
    root = tmp_path_factory.mktemp("eval")
    processed = RunPaths(root).processed(CATEGORY)
    write_split(processed / "train", 8, 0)
    write_split(processed / "test", 5, 1)
    run = RunPaths(root).synthetic / "good"
    run.mkdir(parents=True)
    plan = G.make_plan(G.PromptPlanConfig(n_images=12, seed=0, colours=tuple((c, 1.0) for c in COLOURS)))
    gen = G.GenerateConfig(model="tiny", lora_path=None, resolution=64)
    rng = np.random.default_rng(2)
    for item in plan:
        record = G.image_record(item, gen, seed=item.seed, attempts=1, failures=[],
                                fp32_retry=False, seconds=0.1, dtype="float32")
        G.write_png(shoe(item.colour, rng), run / item.file_name, record)
    G.rebuild_manifest(run, plan)
    return root


CONFIG = E.EvalConfig(fidelity_features="pixels", kid_subsets=10, min_images=5,
                      classifier=ClassifierConfig(image_px=16, steps=40, batch_size=16),
                      classifier_seeds=(0, 1), classifier_min_per_class=3, gallery_size=2)


def test_every_step_on_a_faithful_synthetic_set(output_root):
    sets = E.load_eval_sets(output_root, CATEGORY, "good")
    assert sets.counts() == {"real_train": 24, "real_test": 15, "synthetic": 12}
    assert any("summary.json is missing" in n for n in sets.notes)
    extractor, note = E.feature_extractor("pixels", None)
    feats = E.set_features(sets, extractor)
    fidelity = {r.name: r for r in E.fidelity_results(feats, CONFIG, "pixels")}
    assert fidelity["KID"].value is not None and fidelity["KID"].n_synthetic == 12
    assert fidelity["FID"].value is None and "needs at least" in fidelity["FID"].note
    assert fidelity["CMMD"].value is None
    checks = E.photo_checks(sets)
    rows = {r.name: r for r in checks.results}
    assert rows["colour accuracy (synthetic)"].value == 1.0
    assert rows["colour accuracy (real)"].value == 1.0
    assert rows["conforming photos (synthetic)"].value == 1.0
    div, memo = E.diversity_and_memorisation(checks, feats, CONFIG, "pixels")
    assert {r.name for r in div} >= {"near-duplicate rate (synthetic)",
                                     "memorisation: share closer than real"}
    study = E.downstream_study(sets, CONFIG)
    assert study.classes == COLOURS and len(study.runs) == 6
    assert list(study.summary["training_set"]) == ["real", "real+synthetic", "synthetic"]
    best, worst = E.ranked_examples(sets, checks, np.nan * sets.synthetic["index"], 2)
    assert len(best) == len(worst) == 2 and best["colour_ok"].all()
    record = E.summary_record([*fidelity.values(), *checks.results, *study.results], demo=False)
    assert all({"value", "n_real", "n_synthetic"} <= set(r) for r in record["results"])
    assert record["table"]["colour accuracy (synthetic)"] == 1.0
    json.dumps(record)  # JSON-ready


def test_missing_synthetic_run_gives_report_lines_not_a_crash(output_root):
    sets = E.load_eval_sets(output_root, CATEGORY, "never_generated")
    assert sets.synthetic.empty and any("No synthetic images" in n for n in sets.notes)
    feats = E.set_features(sets, M.PixelFeatures())
    fidelity = {r.name: r for r in E.fidelity_results(feats, CONFIG, "pixels")}
    assert fidelity["KID"].value is None and "synthetic images; got 0" in fidelity["KID"].note
    assert fidelity["KID reference (real train vs real test)"].value is not None
    checks = E.photo_checks(sets)
    rows = {r.name: r for r in checks.results}
    assert rows["colour accuracy (synthetic)"].value is None
    assert rows["colour accuracy (real)"].value == 1.0
    div, _ = E.diversity_and_memorisation(checks, feats, CONFIG, "pixels")
    assert {r.name: r.value for r in div}["memorisation: share closer than real"] is None
    study = E.downstream_study(sets, CONFIG)
    assert list(study.summary["training_set"]) == ["real"]
    clip_rows, per_image = E.clip_score_results(None, sets)
    assert clip_rows[0].value is None and "clip_model='none'" in clip_rows[0].note
    assert texts(E.confusion_figure(checks.confusion_synthetic, "x")) == ["no colour labels"]
    assert texts(image_grid([], [], title="nothing")) == ["no images"]
    bars = E.downstream_figure(study.summary, study.baseline)
    assert [len(ax.patches) for ax in bars.axes] == [1, 1]  # one bar: "real"


def texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_confusion_figure_shows_row_shares_counts_and_labels():
    import pandas as pd

    confusion = pd.DataFrame([[3, 1, 0], [0, 2, 2]], index=["Red", "Blue"],
                             columns=["Red", "Blue", "(none)"])
    fig = E.confusion_figure(confusion, "asked vs found")
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), [[0.75, 0.25, 0.0], [0.0, 0.5, 0.5]])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Red", "Blue", "(none)"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Red", "Blue"]
    assert sorted(texts(fig)) == ["1", "2", "2", "3"]  # non-zero counts only
    assert ax.get_title() == "asked vs found"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("dominant colour found", "colour asked")


def test_downstream_figure_bars_are_the_means_with_the_majority_line():
    import pandas as pd

    summary = pd.DataFrame({"training_set": ["real", "real+synthetic", "synthetic"],
                            "accuracy_mean": [0.6, 0.7, 0.4], "accuracy_std": [0.05, 0.02, 0.1],
                            "macro_f1_mean": [0.5, 0.55, 0.3], "macro_f1_std": [0.0, 0.01, 0.02]})
    fig = E.downstream_figure(summary, {"class": 0, "accuracy": 0.37, "macro_f1": 0.12})
    for ax, metric in zip(fig.axes, ("accuracy", "macro_f1"), strict=True):
        assert [round(p.get_height(), 6) for p in ax.patches] == list(summary[f"{metric}_mean"])
        assert [t.get_text() for t in ax.get_xticklabels()] == list(summary["training_set"])
        (line,) = [x for x in ax.get_lines() if x.get_label() == "majority baseline"]
        assert set(line.get_ydata()) == {0.37 if metric == "accuracy" else 0.12}
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["majority baseline"]
        assert ax.get_title().startswith(metric.replace("_", "-"))
    empty = E.downstream_figure(pd.DataFrame())
    assert texts(empty) == ["not computed", "not computed"]


def test_distribution_and_grid_figures_show_their_data(tmp_path):
    values = {"synthetic": np.array([0.1, 0.2, 0.3]), "real test": np.array([0.5] * 4),
              "nothing": np.zeros(0)}
    fig = E.distribution_figure(values, "nearest", "similarity")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["synthetic (N=3)",
                                                                    "real test (N=4)"]
    assert len(ax.patches) == 40 and ax.get_xlabel() == "similarity"  # 20 bins per set
    paths = []
    for i, colour in enumerate(["Red", "Blue", "Green"]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (8, 8), M.PALETTE[colour]).save(paths[-1])
    grid = image_grid(paths, ["a", "b", "c"], ncols=2, title="three")
    drawn = [a for a in grid.axes if a.images]
    assert [a.get_title() for a in drawn] == ["a", "b", "c"] and len(grid.axes) == 4
    assert tuple(drawn[1].images[0].get_array()[0, 0]) == M.PALETTE["Blue"]
    assert grid._suptitle.get_text() == "three"


def test_clip_rows_and_feature_choice(output_root):
    clip = M.tiny_random_clip()
    sets = E.load_eval_sets(output_root, CATEGORY, "good")
    rows, per_image = E.clip_score_results(clip, sets)
    assert [r.n_synthetic for r in rows] == [12, None] and "meaningless" in rows[0].note
    assert per_image.notna().all()
    assert isinstance(E.feature_extractor("clip", clip)[0], M.ClipFeatures)
    extractor, note = E.feature_extractor("clip", None)
    assert isinstance(extractor, M.PixelFeatures) and "falls back" in note
    assert E.is_demo_run(sets, clip)
    with pytest.raises(ValueError, match="fidelity_features='fid'"):
        E.EvalConfig(fidelity_features="fid").check()


def test_compare_runs_calls_a_difference_only_when_its_bootstrap_ci_excludes_zero():
    import pandas as pd

    rng = np.random.default_rng(0)
    real = rng.normal(size=(80, 6))
    same_a, same_b = rng.normal(size=(60, 6)), rng.normal(size=(60, 6))
    shifted = rng.normal(1.0, 1.0, size=(60, 6))
    checks_a = pd.DataFrame({"colour_match": [1.0] * 50 + [0.0] * 10, "conforms": [1.0] * 60})
    checks_b = pd.DataFrame({"colour_match": [1.0] * 20 + [0.0] * 40, "conforms": [1.0] * 59 + [0.0]})
    config = E.EvalConfig(kid_subsets=20, bootstrap_samples=100)
    alike = E.compare_runs("a", same_a, checks_a, "b", same_b, checks_a, real, None, config, "x")
    apart = E.compare_runs("a", same_a, checks_a, "b", shifted, checks_b, real, None, config, "x")
    v_alike = dict(zip(alike.table["measure"], alike.table["verdict"], strict=True))
    v_apart = dict(zip(apart.table["measure"], apart.table["verdict"], strict=True))
    assert v_alike["KID vs real test"].startswith("no difference (95 % CI includes 0)")
    assert v_alike["colour as asked"].startswith("no difference")
    assert v_apart["KID vs real test"] == "b higher"  # the shifted run is further from real
    assert v_apart["colour as asked"] == "a higher"    # 50/60 against 20/60
    assert v_apart["passes photo checks"].startswith("no difference")  # 60/60 against 59/60
    row = apart.table.set_index("measure").loc["colour as asked"]
    assert row["difference (a - b)"] == pytest.approx(0.5)
    lo, hi = (float(x) for x in row["95 % CI of difference"].strip("[]").split(","))
    assert 0 < lo < 0.5 < hi
    assert {r.name for r in apart.results} >= {"KID (a)", "KID (b)", "colour as asked (a)"}
    assert all(r.ci_low is not None for r in apart.results)


def test_every_row_of_the_faithful_set_has_its_n_and_a_ci(output_root):
    sets = E.load_eval_sets(output_root, CATEGORY, "good")
    feats = E.set_features(sets, M.PixelFeatures())
    rows = E.fidelity_results(feats, CONFIG, "pixels")
    checks = E.photo_checks(sets)
    div, memo = E.diversity_and_memorisation(checks, feats, CONFIG, "pixels", E.pixel_features(sets))
    named = {r.name: r for r in [*rows, *checks.results, *div]}
    assert {"precision (synthetic)", "coverage (synthetic)", "Vendi score (synthetic, pixels)",
            "Vendi score (real test, pixels)"} <= set(named)
    for name in ("KID", "precision (synthetic)", "recall (synthetic)", "colour accuracy (real)",
                 "Vendi score (synthetic, pixels)", "mean pairwise pHash distance (synthetic)",
                 "nearest-train similarity (synthetic)"):
        r = named[name]
        assert r.ci_low is not None and r.ci_low <= r.value <= r.ci_high, r
    assert named["Vendi score (synthetic, pixels)"].n_synthetic == 12  # = real test's N, subsampled
    assert named["Vendi score (real test, pixels)"].n_real == 12
