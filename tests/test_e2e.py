"""The demo profile end to end: every notebook in notebooks/ through papermill, as `make demo` runs it."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from shoelib import run
from shoelib.human_eval import NO_RATINGS
from shoelib.paths import RunPaths, slug

pytestmark = pytest.mark.slow

# What each notebook promises to write (its contract), relative to output_root.
CONTRACTS = {
    "01": ("analysis/summary.json", {"rows_read", "rows_repaired", "category", "category_rows",
                                     "images_present", "images_missing", "images_unreadable",
                                     "colour_counts", "gender_counts"}),
    "02": ("processed/summary.json", {"categories", "prepared_categories", "splits_per_category",
                                      "exported", "skipped_categories"}),
    "03": ("environment/env.json", {"device", "dtype", "reason", "versions", "memory", "disk"}),
    "04": ("inference/summary.json", {"model", "device", "dtype", "images", "seconds_first",
                                      "seconds_steady", "peak_memory_bytes", "fp32_retries"}),
    "05": ("lora/summary.json", {"base_model", "dataset", "steps", "lora_rank", "lora_alpha",
                                 "trainable_params", "lora_diffusers", "lora_kohya", "train_loss",
                                 "val_loss", "seconds_per_step", "peak_memory_bytes"}),
    "06": ("synthetic/demo/summary.json", {"lora", "n_images", "n_regenerated", "seconds_per_image"}),
    "07": ("evaluation/summary.json", {"results", "table", "demo", "counts", "feature_space",
                                       "real_colour_ceiling", "colour_confusion_real",
                                       "downstream", "closest_pairs", "figures"}),
    "08": ("evaluation/human/summary.json", {"settings", "n_ratings", "estimates", "lines"}),
    "09": ("study/demo/summary.json", {"settings", "counts", "tasks", "lines", "figures"}),
}
# Figures 07 must draw (evaluation/figures/) and the table rows its summary must hold.
EVALUATION_FIGURES = {"colour_confusion_synthetic.png", "colour_confusion_real_test.png",
                      "conformity.png", "memorisation_similarity.png", "memorisation_pairs.png",
                      "downstream.png", "gallery_best.png", "gallery_worst.png"}
EVALUATION_ROWS = {"KID", "FID", "CMMD", "CLIP score (synthetic)", "colour accuracy (synthetic)",
                   "colour accuracy (real)", "conforming photos (synthetic)",
                   "near-duplicate rate (synthetic)", "memorisation: share closer than real",
                   "classifier accuracy (real)", "classifier accuracy (majority baseline)"}


def test_demo_chain_runs_and_keeps_its_contracts(tmp_path):
    out, reports = tmp_path / "run", tmp_path / "reports"
    code = run.main(["--profile", "demo", "-p", "output_root", str(out), "--reports-dir", str(reports)])
    assert code == 0
    steps = run.discover_notebooks()
    for step in steps:
        assert (reports / f"{step.name}.ipynb").exists()
        assert (reports / f"{step.name}.html").stat().st_size > 10_000
        if step.number in CONTRACTS:
            rel, keys = CONTRACTS[step.number]
            summary = json.loads((RunPaths(out).root / rel).read_text())
            assert keys <= set(summary), f"{rel} lacks {keys - set(summary)}"
    # Every demo category through every notebook that takes `categories`: its own analysis,
    # its own split folder, a share of the one LoRA's data and of the plan, its own evaluation.
    categories = run.load_profile("demo")["categories"]
    assert len(categories) >= 3
    analysis = json.loads((out / "analysis" / "summary.json").read_text())
    prepared = json.loads((out / "processed" / "summary.json").read_text())
    lora = json.loads((out / "lora" / "summary.json").read_text())
    generated = json.loads((out / "synthetic" / "demo" / "summary.json").read_text())
    evaluated = json.loads((out / "evaluation" / "summary.json").read_text())
    assert analysis["categories"] == prepared["prepared_categories"] == categories
    assert lora["dataset"]["categories"] == evaluated["categories"] == categories
    for category in categories:
        assert analysis["per_category"][category]["readable_photos"] > 0
        metadata = json.loads((out / "processed" / slug(category) / "metadata.json").read_text())
        assert all(metadata["splits"][s] > 0 for s in ("train", "val", "test"))
        assert metadata["splits"] == prepared["splits_per_category"][category]
        assert f"processed/{slug(category)}/train" in lora["dataset"]["train_dir"]
        assert generated["category_counts"][category] > 0
        measures = evaluated["per_category"][category]
        assert {"KID", "precision", "coverage", "colour accuracy",
                "recognised as its category"} <= set(measures)
        assert 0 < measures["colour accuracy"]["n_synthetic"] <= generated["category_counts"][category]
    assert sum(generated["category_counts"].values()) == generated["n_images"]
    # headless, 08 rates nothing and says so instead of waiting for a rater
    human = json.loads((out / "evaluation" / "human" / "summary.json").read_text())
    assert human["n_ratings"] == 0 and human["lines"] == [NO_RATINGS]
    evaluation = json.loads((out / "evaluation" / "summary.json").read_text())
    assert EVALUATION_ROWS <= set(evaluation["table"]), EVALUATION_ROWS - set(evaluation["table"])
    assert EVALUATION_FIGURES <= set(evaluation["figures"]) == {
        p.name for p in (out / "evaluation" / "figures").glob("*.png")}
    assert (evaluation["real_colour_ceiling"]["value"]
            == evaluation["table"]["colour accuracy (real)"])
    assert (evaluation["downstream"]["majority_baseline"]["accuracy"]
            == evaluation["table"]["classifier accuracy (majority baseline)"])
    # 09 answers the demo's question: do synthetic Casual Shoes raise their recall at 10 % real?
    study = json.loads((out / "study" / "demo" / "summary.json").read_text())
    first = study["tasks"]["article type"]["verdicts"][0]
    assert first["regime"] == "10% real" and "Casual Shoes recall difference" in first
    assert any(line.startswith("article type: ") and "Casual Shoes recall at 10% real" in line
               for line in study["lines"])
    table = pd.read_csv(out / "evaluation" / "summary_table.csv")
    assert list(table["name"]) == [r["name"] for r in evaluation["results"]]

    # A rerun resumes instead of redoing or refusing: 05 finds its last checkpoint and
    # re-exports the same LoRA, so 06 recognises its run and has nothing left to render.
    pngs = sorted((out / "synthetic" / "demo").glob("*.png"))
    code = run.main(["--profile", "demo", "--from", "05", "-p", "output_root", str(out),
                     "--reports-dir", str(reports)])
    assert code == 0
    assert sorted((out / "synthetic" / "demo").glob("*.png")) == pngs
    lora = json.loads((out / "lora" / "summary.json").read_text())
    assert lora["resumed_from"] == lora["steps"]
