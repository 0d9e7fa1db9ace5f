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
    for fig in (E.confusion_figure(checks.confusion_synthetic, "x"),
                E.downstream_figure(study.summary, len(study.classes)),
                E.image_grid([], [], title="nothing")):
        assert fig is not None


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
