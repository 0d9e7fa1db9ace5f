"""Several categories through the chain: the `categories` parameter, per-category splits, one
plan over all categories, per-category LoRAs and per-category evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from shoelib import catalog, checks, dataset
from shoelib import evaluation as E
from shoelib import generate as G
from shoelib.paths import RunPaths

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COLOURS = ("Black", "Brown", "White")


def category_rows(category: str, n: int, start_id: int, folder: Path) -> pd.DataFrame:
    """n rows of `category` shaped like 01's category.parquet, each with a small photo."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        img = Image.new("RGB", (40, 48), (250, 250, 250))
        img.paste(((53 * k) % 256, (17 * start_id) % 256, 90), (8, 10, 32, 38))
        img.save(path := folder / f"{start_id + k}.jpg", quality=90)
        paths.append(str(path))
    return pd.DataFrame({
        "id": np.arange(start_id, start_id + n), "articleType": category,
        "baseColour": [COLOURS[k % 3] for k in range(n)], "gender": "Men", "season": "Summer",
        "year": 2012, "usage": "Casual", "productDisplayName": [f"Brand Men {category} {k}" for k in range(n)],
        "brand": "Brand", "image_status": "ok", "image_path": paths})


# --- the parameter


def test_categories_parameter_is_the_list_or_category_alone():
    assert checks.categories("Casual Shoes", []) == ("Casual Shoes",)
    assert checks.categories("Casual Shoes", None) == ("Casual Shoes",)
    assert checks.categories("Sandals", ["Casual Shoes", "Sandals"]) == ("Casual Shoes", "Sandals")
    for bad, message in ((["Casual Shoes", "casual shoes"], "name the same folder"),
                         (["Sandals"], "category='Casual Shoes' is not in categories"),
                         ("Casual Shoes", "must be a list"), (["Casual Shoes", ""], "^categories=")):
        with pytest.raises(checks.SettingError, match=message):
            checks.categories("Casual Shoes", bad)


def test_an_unknown_category_in_a_list_is_left_out_with_its_reason(real_sample_dir):
    frame = catalog.read_styles(real_sample_dir / "styles.csv").frame
    rows, skipped = catalog.select_categories(frame, ["Casual Shoes", "Sandles", "Sandals"])
    assert list(dict.fromkeys(rows["articleType"])) == ["Casual Shoes", "Sandals"]
    assert len(rows) == (frame["articleType"].isin(["Casual Shoes", "Sandals"])).sum()
    assert list(skipped) == ["Sandles"] and "close matches: Sandals" in skipped["Sandles"]
    with pytest.raises(catalog.CatalogError, match="category='Sandles' is no articleType"):
        catalog.select_categories(frame, ["Sandles"])


# --- 02: a split per category


def test_each_category_gets_its_own_stratified_split_and_a_tiny_one_is_left_out(tmp_path):
    table = pd.concat([category_rows("Casual Shoes", 30, 1000, tmp_path / "img"),
                       category_rows("Sandals", 12, 2000, tmp_path / "img"),
                       category_rows("Heels", 2, 3000, tmp_path / "img")], ignore_index=True)
    configs = {c: dataset.DatasetConfig(category=c, image_size=32, workers=1)
               for c in ("Casual Shoes", "Sandals", "Heels", "Flats")}
    plans, skipped = dataset.plan_categories(table, configs)
    assert list(plans) == ["Casual Shoes", "Sandals"]
    assert "'Heels' has 2 usable row(s), too few" in skipped["Heels"]
    assert "'Flats' has no row" in skipped["Flats"]
    for name, plan in plans.items():
        assert set(plan.rows["articleType"]) == {name}
        assert plan.split.stratified and (plan.rows["split"] == "test").any()
        alone = dataset.plan_dataset(table[table["articleType"] == name], configs[name])
        assert list(plan.rows["split"]) == list(alone.rows["split"])  # as if prepared alone
    combined = dataset.combine_plans(plans)
    assert len(combined.rows) == 42 and combined.split.stratified
    results = {c: dataset.export_dataset(plans[c], tmp_path / "processed" / c, configs[c],
                                         progress=False) for c in plans}
    total = dataset.ExportResult.combined(results)
    assert total.counts == {s: sum(r.counts[s] for r in results.values()) for s in dataset.SPLITS}
    assert sum(total.counts.values()) == 42
    both = dataset.read_splits([tmp_path / "processed" / c / "train" for c in plans])
    assert len(both) == total.counts["train"]
    with pytest.raises(dataset.DatasetError, match="'Heels' has 2 usable row"):
        dataset.plan_categories(table, {"Heels": configs["Heels"]})


# --- 06: one plan over several categories


@pytest.fixture(scope="module")
def two_categories(tmp_path_factory) -> Path:
    """An output_root with train splits of two categories of different colours and sizes."""
    root = tmp_path_factory.mktemp("out")
    for category, colour, n in (("Casual Shoes", "Black", 6), ("Sandals", "Brown", 2)):
        train = RunPaths(root).processed(category) / "train"
        train.mkdir(parents=True)
        lines = []
        for i in range(n):
            Image.new("RGB", (64, 64), (255, 255, 255)).save(train / f"{category[0]}{i}.png")
            lines.append(json.dumps({"file_name": f"{category[0]}{i}.png", "text": f"photo {i}",
                                     "colour": colour, "gender": "Men", "season": "Summer"}))
        (train / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_a_plan_over_categories_follows_the_shares_and_keeps_each_category_s_items(two_categories):
    dirs = {c: RunPaths(two_categories).processed(c) / "train" for c in ("Casual Shoes", "Sandals")}
    mixed = G.plan_config_from_splits(dirs, n_images=400, seed=3, category_shares="train")
    assert isinstance(mixed, G.MixedPlanConfig)
    assert mixed.category_shares == pytest.approx({"Casual Shoes": 0.75, "Sandals": 0.25})
    plan = G.make_plan(mixed)
    share = np.mean([item.category == "Sandals" for item in plan])
    assert 0.18 < share < 0.32  # 400 draws at 0.25
    alone = {c: G.make_plan(G.plan_config_from_split(d, n_images=400, seed=3, article=c))
             for c, d in dirs.items()}
    for item in plan:
        # item i is item i of its category's own plan: its colour, prompt and seed
        own = alone[item.category][item.index]
        assert (item.prompt, item.seed, item.colour) == (own.prompt, own.seed, own.colour)
        assert item.colour == ("Brown" if item.category == "Sandals" else "Black")
        assert item.category.lower() in item.prompt
    uniform = G.plan_config_from_splits(dirs, n_images=10, seed=3, category_shares="uniform")
    assert uniform.category_shares == {"Casual Shoes": 0.5, "Sandals": 0.5}
    with pytest.raises(G.GenerateConfigError, match="^category_shares='equal' is unknown"):
        G.plan_config_from_splits(dirs, n_images=10, seed=3, category_shares="equal")
    # one category: the plan and its recorded settings are a single category's, as before
    single = G.plan_config_from_splits({"Casual Shoes": dirs["Casual Shoes"]}, n_images=5, seed=3)
    settings = G.run_settings(single, G.GenerateConfig(model="m", lora_path=None))
    assert isinstance(single, G.PromptPlanConfig) and "category_loras" not in settings
    assert "parts" not in settings["plan"] and all(i.category == "" for i in G.make_plan(single))


def test_06_reads_categories_from_its_parameters(two_categories):
    from test_generate import _params_06

    params = _params_06(two_categories, categories=["Casual Shoes", "Sandals", "Heels"],
                        category_shares="uniform")
    plan_config, _, _ = G.configs_from_params(params)  # Heels has no split: left out
    assert [c for c, _, _ in plan_config.parts] == ["Casual Shoes", "Sandals"]
    with pytest.raises(G.GenerateConfigError, match="^category_shares="):
        G.configs_from_params({**params, "category_shares": "by size"})


def test_per_category_loras_render_each_category_with_its_own(tiny_sd_dir, tiny_lora,
                                                              two_categories, tmp_path):
    import shutil

    from test_generate import gen_config

    paths = RunPaths(tmp_path / "root")
    for category in ("Casual Shoes", "Sandals"):
        shutil.copytree(RunPaths(two_categories).processed(category), paths.processed(category))
        (paths.lora / category).mkdir(parents=True)
        shutil.copy(tiny_lora, paths.lora / category / tiny_lora.name)
    index = {"lora_per_category": {c: f"lora/{c}/{tiny_lora.name}" for c in ("Casual Shoes", "Sandals")}}
    paths.lora.joinpath("summary.json").write_text(json.dumps(index))
    loras = G.find_category_loras(paths.root, ["Casual Shoes", "Sandals"])
    assert dict(loras) == {c: paths.lora / c / tiny_lora.name for c in ("Casual Shoes", "Sandals")}
    with pytest.raises(G.LoraNotFoundError, match="one LoRA per category"):
        G.find_lora(paths.root, "")
    with pytest.raises(G.LoraNotFoundError, match="not for 'Heels'"):
        G.find_category_loras(paths.root, ["Casual Shoes", "Heels"])
    plan_config = G.plan_config_from_splits(
        {c: paths.processed(c) / "train" for c in ("Casual Shoes", "Sandals")},
        n_images=6, seed=1, category_shares="uniform")
    gen = gen_config(tiny_sd_dir, None, category_loras=loras)
    result = G.generate(plan_config, gen, tmp_path / "run", progress=False)
    manifest = result.manifest
    assert set(manifest["category"]) == {"Casual Shoes", "Sandals"}
    for row in manifest.itertuples():
        assert row.lora == str(dict(loras)[row.category])
    assert result.summary["category_counts"] == manifest["category"].value_counts().to_dict()
    # the settings record each category's LoRA by content: another file is another run
    assert set(json.loads((tmp_path / "run" / G.RUN_FILE).read_text())["category_loras"]) == {
        "Casual Shoes", "Sandals"}
    # the images differ from the base model's: the LoRA was applied
    base = G.generate(plan_config, gen_config(tiny_sd_dir, None), tmp_path / "base", progress=False)
    first = manifest["file_name"].iloc[0]
    with Image.open(tmp_path / "run" / first) as a, Image.open(tmp_path / "base" / first) as b:
        assert np.abs(np.asarray(a, float) - np.asarray(b, float)).max() > 0
    assert base.manifest["lora"].isna().all()


# --- 07: together, then each category


def test_eval_sets_of_several_categories_and_of_one_within_a_mixed_run(two_categories, tmp_path):
    paths = RunPaths(tmp_path / "root")
    import shutil

    for category in ("Casual Shoes", "Sandals"):
        for split in ("train", "test"):
            shutil.copytree(RunPaths(two_categories).processed(category) / "train",
                            paths.processed(category) / split)
    plan = G.make_plan(G.plan_config_from_splits(
        {c: paths.processed(c) / "train" for c in ("Casual Shoes", "Sandals")},
        n_images=12, seed=1, category_shares="uniform"))
    run = paths.synthetic_run("mixed")
    run.mkdir(parents=True)
    gen = G.GenerateConfig(model="tiny", lora_path=None, resolution=64)
    for item in plan:
        record = G.image_record(item, gen, seed=item.seed, attempts=1, failures=[],
                                fp32_retry=False, seconds=0.1, dtype="float32")
        G.write_png(Image.new("RGB", (64, 64), (20, 20, 20)), run / item.file_name, record)
    G.rebuild_manifest(run, plan)
    both = E.load_eval_sets(paths.root, ["Casual Shoes", "Sandals"], "mixed")
    assert both.counts() == {"real_train": 8, "real_test": 8, "synthetic": 12}
    assert set(both.train["category"]) == set(both.synthetic["category"]) == {"Casual Shoes", "Sandals"}
    one = E.load_eval_sets(paths.root, "Sandals", "mixed")
    n_sandals = sum(i.category == "Sandals" for i in plan)
    assert len(one.synthetic) == n_sandals and "category" not in one.synthetic.columns
    assert any(f"{12 - n_sandals} synthetic images of other categories (Casual Shoes) left out" in n
               for n in one.notes)


def test_per_category_results_measure_each_category_against_its_own_photos():
    rng = np.random.default_rng(0)
    n = 40
    # two categories far apart in feature space; B's synthetic images are off its manifold
    centres = {"A": np.zeros(8), "B": np.full(8, 10.0)}
    frames, feats = {}, {}
    for which, shift in (("train", {"A": 0, "B": 0}), ("test", {"A": 0, "B": 0}),
                         ("synthetic", {"A": 0, "B": 5})):
        rows, vectors = [], []
        for c in ("A", "B"):
            vectors.append(rng.normal(centres[c] + shift[c], 1.0, size=(n, 8)))
            rows += [{"image_path": f"{which}{c}{k}.png", "colour": "Black", "text": "",
                      "category": c} for k in range(n)]
        frames[which], feats[which] = pd.DataFrame(rows), np.concatenate(vectors)
    sets = E.EvalSets(frames["train"], frames["test"], frames["synthetic"], (), {})
    photo = pd.DataFrame({"dominant_colour": ["Black"] * n + ["White"] * n})
    checks_ = E.PhotoChecks([], photo, photo, pd.DataFrame(), pd.DataFrame())
    config = E.EvalConfig(kid_subsets=10, min_images=10, bootstrap_samples=20, prdc_k=3)
    table, record = E.per_category_results(sets, feats, checks_, config, "toy",
                                           (rng.normal(-10, 1, size=(n, 8)), ["C"] * n))
    assert list(table.index) == ["A", "B"] and list(table["synthetic"]) == [n, n]
    value = {c: {k: v["value"] for k, v in record[c].items()} for c in record}
    assert value["A"]["precision"] > 0.5 and value["B"]["precision"] < 0.1
    assert value["A"]["KID"] < value["B"]["KID"]
    assert value["A"]["colour accuracy"] == 1.0 and value["B"]["colour accuracy"] == 0.0
    assert value["A"]["recognised as its category"] > 0.9
    recognised = record["B"]["recognised as its category"]
    assert recognised["ci_low"] <= recognised["value"] <= recognised["ci_high"]


# --- 05: one LoRA over several categories' splits


def test_one_lora_trains_on_every_listed_category_s_split(tiny_sd_dir, two_categories, tmp_path):
    from shoelib.train import TrainConfig, check_inputs

    dirs = tuple(RunPaths(two_categories).processed(c) / "train" for c in ("Casual Shoes", "Sandals"))
    config = TrainConfig(model=str(tiny_sd_dir), train_dir=dirs, output_dir=tmp_path / "lora",
                         cache_dir=tmp_path / "cache", resolution=64, max_train_steps=1,
                         lr_warmup_steps=0)
    assert config.train_dir == tuple(str(d) for d in dirs)
    splits = check_inputs(config)
    assert len(splits["train"]) == 8 and set(splits["train"]["colour"]) == {"Black", "Brown"}
    assert RunPaths(two_categories).relative(config.train_dir) == [
        "processed/casual_shoes/train", "processed/sandals/train"]
    with pytest.raises(ValueError, match="train_dir=\\(\\) must be a folder path or a non-empty list"):
        TrainConfig(model=str(tiny_sd_dir), train_dir=(), output_dir=tmp_path, cache_dir=tmp_path,
                    max_train_steps=1, lr_warmup_steps=0)


def test_the_study_takes_every_chain_category_from_its_own_splits():
    from shoelib import study as S

    def frame(prefix, categories):
        return pd.DataFrame({"image_path": [f"{prefix}{i}.png" for i in range(len(categories))],
                             "colour": "Black", "category": categories})

    train = frame("train", ["Casual Shoes"] * 4 + ["Sandals"] * 2)
    test = frame("test", ["Casual Shoes", "Sandals"])
    synthetic = frame("syn", ["Sandals", "Casual Shoes", "Sandals"])
    others = pd.DataFrame({"image_path": [f"heel{i}.png" for i in range(10)],
                           "articleType": "Heels", "colour": "Red"})
    pools = S.chain_pools("Casual Shoes", train, test, synthetic, others, seed=0)
    assert list(pools.synthetic["articleType"]) == ["Sandals", "Casual Shoes", "Sandals"]
    assert pools.real["articleType"].value_counts().to_dict() == {"Casual Shoes": 4, "Heels": 7,
                                                                  "Sandals": 2}
    # 02's splits as they are: none of the chain's test photos is trained on
    assert set(pools.test["image_path"][:2]) == {"test0.png", "test1.png"}
    assert not set(pools.real["image_path"]) & set(pools.test["image_path"])
    one = S.chain_pools("Casual Shoes", train.drop(columns="category"), test.drop(columns="category"),
                        synthetic.drop(columns="category"), others, seed=0)
    assert set(one.synthetic["articleType"]) == {"Casual Shoes"}


def test_the_category_recogniser_is_not_won_over_by_the_larger_class():
    # 300 real photos of the category against 20 of another type, overlapping in feature space:
    # a probe fitted to the raw class counts calls most images of the small type the category.
    rng = np.random.default_rng(0)
    category = rng.normal(0.0, 1.0, size=(300, 2))
    other = rng.normal(1.5, 1.0, size=(20, 2))
    recogniser = E.category_recogniser("A", category, rng.normal(0.0, 1.0, size=(100, 2)),
                                       other, ["B"] * 20)
    assert recogniser.share(rng.normal(1.5, 1.0, size=(400, 2))) < 0.4
    assert recogniser.real_test_share > 0.6


def test_category_balance_repeats_the_smaller_categories_and_keeps_the_stream_without_it():
    from collections import Counter

    from shoelib.train import RESUME_FREE_KEYS, DataOrder, split_repeats

    assert split_repeats([277, 42, 41]) == [1, 7, 7] and split_repeats([5]) == [1]
    # all repeats 1 is the data order without repeats, index for index (earlier runs resume)
    plain, ones = DataOrder(8, seed=3), DataOrder(8, seed=3, repeats=[1] * 8)
    assert plain.take(40) == ones.take(40)
    # an epoch holds each index as often as its repeats; batches of buckets hold them too
    order = DataOrder(8, seed=3, repeats=[1] * 6 + [3] * 2)
    counts = Counter(order.take(12))
    assert counts == {**{i: 1 for i in range(6)}, 6: 3, 7: 3}
    grouped = DataOrder(8, seed=3, groups=[[0, 1, 2, 6], [3, 4, 5, 7]], batch=2,
                        repeats=[1] * 6 + [3] * 2)
    epoch = [i for _ in range(6) for i in grouped.take(2)]
    assert Counter(epoch)[6] == Counter(epoch)[7] == 3
    assert "category_balance" not in RESUME_FREE_KEYS  # a resume may not change it


def test_a_balanced_lora_records_each_split_s_repeats(tiny_sd_dir, two_categories, tmp_path):
    from safetensors import safe_open

    from shoelib.train import TrainConfig, train

    dirs = tuple(RunPaths(two_categories).processed(c) / "train" for c in ("Casual Shoes", "Sandals"))
    config = TrainConfig(model=str(tiny_sd_dir), train_dir=dirs, output_dir=tmp_path / "lora",
                         cache_dir=tmp_path / "cache", resolution=64, max_train_steps=2,
                         lr_warmup_steps=0, train_batch_size=2, validation_every=0,
                         checkpoint_every=0, device="cpu", category_balance=True)
    result = train(config, progress=False)
    with safe_open(str(result.lora_kohya), "pt") as f:
        header = f.metadata()
    assert header["ss_category_balance"] == "True"
    assert json.loads(header["ss_dataset_dirs"]) == {
        "casual_shoes/train": {"n_repeats": 1, "img_count": 6},
        "sandals/train": {"n_repeats": 3, "img_count": 2}}
