"""shoelib.dataset: splits, captions, exports, resuming, reading back; 01 -> 02 on the real sample."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.json
import pytest
import yaml
from PIL import Image

from shoelib import catalog, dataset
from shoelib.captions import DEFAULT_TEMPLATE, CaptionTemplateError
from shoelib.dataset import (
    DatasetConfig,
    DatasetError,
    MissingInputError,
    SplitConfig,
)
from shoelib.paths import PROJECT_ROOT

SIZE = 32  # prepared image side in these tests (px): small and fast


def catalogue_rows(colours: dict[str, int], start_id: int = 1000) -> pd.DataFrame:
    """Rows shaped like 01's category.parquet (no image files)."""
    values = [c for c, n in colours.items() for _ in range(n)]
    n = len(values)
    return pd.DataFrame({
        "id": np.arange(start_id, start_id + n),
        "gender": pd.array(["Men", "Women", "Unisex"] * (n // 3) + ["Men"] * (n % 3), "string"),
        "articleType": pd.array(["Casual Shoes"] * n, "string"),
        "baseColour": pd.array(values, "string"),
        "season": pd.array(["Summer", "Fall"] * (n // 2) + ["Winter"] * (n % 2), "string"),
        "year": pd.array([2012] * n, "Int64"),
        "usage": pd.array(["Casual"] * n, "string"),
        "productDisplayName": pd.array([f"Red Tape Men Shoe {i}" for i in range(n)], "string"),
        "brand": pd.array(["Red Tape"] * n, "string"),
        "image_status": pd.array(["ok"] * n, "string"),
        "image_path": [None] * n,
    })


def with_images(rows: pd.DataFrame, folder: Path, size=(60, 80)) -> pd.DataFrame:
    """Write a distinct small JPEG per row and point image_path at it."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, product_id in enumerate(rows["id"]):
        img = Image.new("RGB", size, (250, 250, 250))
        img.paste(((37 * k) % 256, (91 * k) % 256, 120), (10, 20, size[0] - 10, size[1] - 20))
        path = folder / f"{product_id}.jpg"
        img.save(path, quality=90)
        paths.append(str(path))
    return rows.assign(image_path=paths)


def config(**overrides) -> DatasetConfig:
    settings = {"category": "Casual Shoes", "image_size": SIZE, "workers": 1} | overrides
    return DatasetConfig(**settings)


def split_sizes(result) -> tuple[int, int, int]:
    return tuple(int((result.split == s).sum()) for s in dataset.SPLITS)


# ---------------------------------------------------------------------------------------------
# usable rows


def test_select_usable_gives_a_reason_for_every_skipped_row():
    rows = catalogue_rows({"Black": 6})
    rows["image_status"] = pd.array(["ok", "missing", "unreadable", "ok", "ok", None], "string")
    rows["is_test_row"] = [False, False, False, True, False, False]
    rows.loc[4, "id"] = rows.loc[0, "id"]  # a duplicated id: the first row wins
    usable, skipped = dataset.select_usable(rows)
    assert usable["id"].tolist() == [1000]
    assert skipped["reason"].tolist() == ["image missing", "image unreadable", "test row",
                                          "duplicate id", "image missing"]
    assert len(usable) + len(skipped) == len(rows)


def test_a_photo_below_min_image_side_is_skipped_as_unreadable_with_the_reason():
    rows = catalogue_rows({"Black": 3})
    rows["image_width"] = pd.array([1, 40, 1800], "Int64")
    rows["image_height"] = pd.array([1, 31, 2400], "Int64")
    usable, skipped = dataset.select_usable(rows, min_image_side=32)
    assert usable["id"].tolist() == [1002]
    assert skipped["reason"].tolist() == ["image unreadable"] * 2
    assert skipped["detail"].tolist() == ["too small: 1x1 px, below min_image_side=32",
                                          "too small: 40x31 px, below min_image_side=32"]
    plan = dataset.plan_dataset(rows, config(min_image_side=1))
    assert len(plan.rows) == 3 and plan.skipped.empty  # the limit is the parameter's
    with pytest.raises(ValueError, match="^min_image_side=0 must be a whole number"):
        config(min_image_side=0)


# ---------------------------------------------------------------------------------------------
# splits


def test_split_is_deterministic_and_independent_of_row_order():
    rows = catalogue_rows({"Black": 40, "Brown": 25, "White": 20, "Red": 12, "Pink": 3})
    first = dataset.split_rows(rows)
    again = dataset.split_rows(rows)
    shuffled = rows.sample(frac=1, random_state=7)
    reordered = dataset.split_rows(shuffled)
    assert first.split.equals(again.split)
    assert first.split.to_dict() == reordered.split.loc[rows.index].to_dict()
    other_seed = dataset.split_rows(rows, SplitConfig(seed=1))
    assert not first.split.equals(other_seed.split)
    assert first.stratified and first.notes == ()


def test_split_reproduces_the_seed_projects_counts(real_sample_dir):
    styles = catalog.read_styles(real_sample_dir / "styles.csv").frame
    shoes = catalog.select_category(styles, "Casual Shoes")
    assert len(shoes) == 2846
    # the seed project's pandas reader lost one Casual Shoes row: 2,845 -> 1,991/427/427
    result = dataset.split_rows(shoes.iloc[1:])
    assert split_sizes(result) == (1991, 427, 427)
    assert result.stratified
    # every stratum is split 70/15/15 within rounding
    table = pd.crosstab(result.strata, result.split)
    for stratum, counts in table.iterrows():
        n = counts.sum()
        for name, share in zip(dataset.SPLITS, (0.70, 0.15, 0.15), strict=True):
            assert abs(counts[name] - share * n) <= 1.5, (stratum, dict(counts))


def test_rare_and_missing_colours_are_grouped():
    values = pd.Series(["Black"] * 12 + ["Tan"] * 3 + ["Gold"] * 2 + [None, "NA", ""] * 4)
    labels = dataset.strata_labels(values, min_class_rows=10)
    assert set(labels) == {"Black", "Other", "Unknown"}
    assert (labels == "Other").sum() == 5 and (labels == "Unknown").sum() == 12
    single = dataset.strata_labels(pd.Series(["Black"] * 12 + ["Brown"] * 11 + ["Gold"]), 10)
    assert (single == "Other").sum() == 0 and (single == "Black").sum() == 13  # joins largest


def test_split_that_cannot_be_stratified_falls_back_with_a_note():
    # 10 rows in 5 strata: 3 held-out rows cannot hold one of each
    rows = catalogue_rows({"Black": 2, "Brown": 2, "White": 2, "Red": 2, "Blue": 2})
    result = dataset.split_rows(rows, SplitConfig(min_class_rows=1))
    assert not result.stratified
    assert any("not stratified" in note and "random split" in note for note in result.notes)
    assert split_sizes(result) == (7, 1, 2)  # held-out counts rounded up, as sklearn does


def test_a_single_rare_row_does_not_stop_stratification():
    # "Pink" (3 rows) is grouped as "Other"; the val | test cut may get one of them
    rows = catalogue_rows({"Black": 40, "Brown": 25, "White": 20, "Red": 12, "Pink": 3})
    for seed in range(5):
        result = dataset.split_rows(rows, SplitConfig(seed=seed))
        assert result.stratified and result.notes == (), result.notes


@pytest.mark.parametrize("n", [1, 2])
def test_tiny_input_goes_to_train_with_a_note(n):
    result = dataset.split_rows(catalogue_rows({"Black": n}))
    assert split_sizes(result) == (n, 0, 0)
    assert any("all go to train" in note for note in result.notes)


def test_split_input_errors():
    with pytest.raises(DatasetError, match="no usable rows"):
        dataset.split_rows(catalogue_rows({"Black": 0}))
    with pytest.raises(DatasetError, match=r"sum to 1.1, not 1; e.g. \[0.70, 0.15, 0.15\]"):
        SplitConfig(fractions=(0.8, 0.15, 0.15))
    with pytest.raises(DatasetError, match="three shares"):
        SplitConfig(fractions=(0.5, 0.5))
    only_train = dataset.split_rows(catalogue_rows({"Black": 20}), SplitConfig(fractions=(1, 0, 0)))
    assert split_sizes(only_train) == (20, 0, 0) and only_train.notes == ()


# ---------------------------------------------------------------------------------------------
# captions


def test_default_caption_matches_the_seed_template_without_stray_spaces():
    name = "United Colors of Benetton Men Solid Black Shoes"
    row = {"baseColour": "Navy Blue", "articleType": "Casual Shoes", "season": "Summer",
           "gender": "Men", "brand": catalog.parse_brand(name, "Men"), "year": 2012.0,
           "usage": "Casual", "productDisplayName": name}
    assert dataset.render_caption(DEFAULT_TEMPLATE, row) == (
        "A professional product photo of navy blue casual shoes, Summer collection, Men, "
        "United Colors of Benetton, centered on white background, high quality, "
        "product photography")
    assert dataset.render_caption("{name} ({year}, {usage})", row) == f"{name} (2012, Casual)"


def test_missing_values_drop_their_clause():
    row = {"baseColour": None, "articleType": "Sports Shoes", "season": pd.NA, "gender": "Women",
           "brand": None, "year": float("nan"), "usage": "NA"}
    caption = dataset.render_caption(DEFAULT_TEMPLATE, row)
    assert caption == ("A professional product photo of sports shoes, Women, centered on white "
                       "background, high quality, product photography")
    assert ", ," not in caption and "None" not in caption and " ," not in caption
    frame = pd.DataFrame([row, {**row, "season": "", "brand": "Puma", "baseColour": "Red"}])
    captions = dataset.captions(frame, "{colour} {article}, {season} collection, {brand}")
    assert captions.tolist() == ["sports shoes", "red sports shoes, Puma"]


def test_unknown_placeholder_fails_before_any_work():
    with pytest.raises(CaptionTemplateError, match=r"caption_template has unknown placeholder \{material\}"):
        config(caption_template="{colour} {material}")


# ---------------------------------------------------------------------------------------------
# export


@pytest.fixture
def small_catalogue(tmp_path) -> pd.DataFrame:
    rows = catalogue_rows({"Black": 12, "Brown": 10, "White": 4, "Red": 2})
    rows.loc[3, ["season", "brand"]] = pd.NA  # a row with missing caption values
    rows = with_images(rows, tmp_path / "images")
    broken = catalogue_rows({"Grey": 3}, start_id=9000)
    broken["image_status"] = pd.array(["missing", "unreadable", "ok"], "string")
    broken["image_path"] = [None, None, str(tmp_path / "images" / "9002.jpg")]
    (tmp_path / "images" / "9002.jpg").write_bytes(b"")  # 'ok' in the table, broken on disk
    return pd.concat([rows, broken], ignore_index=True)


def test_export_layout_metadata_and_card(small_catalogue, tmp_path):
    cfg = config()
    plan = dataset.plan_dataset(small_catalogue, cfg)
    assert set(plan.skipped["reason"]) == {"image missing", "image unreadable"}
    result = dataset.export_dataset(plan, tmp_path / "out", cfg, progress=False)
    out = result.out_dir
    assert sum(result.counts.values()) == 28 and result.prepared == 28
    assert dict(zip(result.skipped["id"], result.skipped["reason"], strict=True)) == {
        9000: "image missing", 9001: "image unreadable", 9002: "image unreadable"}
    schemas = []
    for name in dataset.SPLITS:
        folder = out / name
        lines = (folder / "metadata.jsonl").read_text().splitlines()
        assert len(lines) == result.counts[name] == len(list(folder.glob("*.png")))
        for line in lines:
            record = json.loads(line)
            assert "/" not in record["file_name"] and (folder / record["file_name"]).is_file()
            assert Image.open(folder / record["file_name"]).size == (SIZE, SIZE)
            txt = (folder / record["file_name"]).with_suffix(".txt").read_text()
            assert txt == record["text"] and record["split"] == name
            assert {"id", "colour", "gender", "season", "usage", "year", "brand",
                    "productDisplayName"} <= set(record)
        # imagefolder reads metadata.jsonl with pyarrow; every split must give the same schema
        schemas.append(pyarrow.json.read_json(folder / "metadata.jsonl").schema)
    assert schemas[0] == schemas[1] == schemas[2]
    missing_values = json.loads(next(line for line in (out / "train" / "metadata.jsonl")
                                      .read_text().splitlines() + (out / "val" / "metadata.jsonl")
                                      .read_text().splitlines() + (out / "test" / "metadata.jsonl")
                                      .read_text().splitlines() if '"id": 1003' in line))
    assert missing_values["brand"] == "" and "collection" not in missing_values["text"]

    meta = json.loads((out / "metadata.json").read_text())
    assert meta["splits"] == result.counts and meta["skipped_count"] == 3
    assert meta["parameters"]["image_size"] == SIZE and meta["parameters"]["split_seed"] == 42
    assert sum(meta["colour_counts"]["train"].values()) == result.counts["train"]
    card = (out / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert [c["split"] for c in header["configs"][0]["data_files"]] == ["train", "validation",
                                                                        "test"]
    assert "load_dataset(\"imagefolder\", data_dir=" in card and "--train_data_dir" in card

    train = dataset.read_split(out / "train")
    assert len(train) == result.counts["train"]
    assert all(Path(p).is_file() for p in train["image_path"])
    assert train["text"].str.startswith("A professional product photo of").all()


def test_export_writes_a_foreground_mask_per_image_and_lists_it(small_catalogue, tmp_path):
    cfg = config()
    out = tmp_path / "out"
    dataset.export_dataset(dataset.plan_dataset(small_catalogue, cfg), out, cfg, progress=False)
    for name in dataset.SPLITS:
        for line in (out / name / "metadata.jsonl").read_text().splitlines():
            record = json.loads(line)
            assert record["mask_file_name"] == f"masks/{record['file_name']}"
            mask = Image.open(out / name / record["mask_file_name"])
            assert mask.mode == "L" and mask.size == (SIZE, SIZE)
            pixels = np.asarray(mask)
            assert set(np.unique(pixels)) == {0, 255}
            # the product (a rectangle in the middle of the photo) is 255, the margin 0
            assert pixels[SIZE // 2, SIZE // 2] == 255 and pixels[0, 0] == pixels[-1, -1] == 0
        assert len(list((out / name / "masks").glob("*.png"))) == len(
            list((out / name).glob("*.png")))
    train = dataset.read_split(out / "train")
    assert all(Path(p).is_file() for p in train["mask_path"])
    # a 40x40 rectangle of a 60x80 photo, letterboxed into 24x32 of the 32x32 square
    assert dataset.foreground_share(train).mean() == pytest.approx(40 * 40 / (60 * 80) * 0.75,
                                                                   abs=0.03)


def test_masks_resume_like_the_images(small_catalogue, tmp_path):
    out = tmp_path / "out"
    cfg = config()
    dataset.export_dataset(dataset.plan_dataset(small_catalogue, cfg), out, cfg, False)
    masks = {p.name: p.stat().st_mtime_ns for p in out.glob("*/masks/*.png")}
    assert len(masks) == 28
    again = dataset.export_dataset(dataset.plan_dataset(small_catalogue, cfg), out, cfg, False)
    assert again.prepared == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*/masks/*.png")} == masks

    # a dataset prepared before masks existed: the mask is made from the kept image
    lost = next(out.glob("train/masks/*.png"))
    expected = np.asarray(Image.open(lost))
    lost.unlink()
    kept = dataset.export_dataset(dataset.plan_dataset(small_catalogue, cfg), out, cfg, False)
    assert kept.prepared == 0 and np.array_equal(np.asarray(Image.open(lost)), expected)

    reseeded = config(split=SplitConfig(seed=7))
    moved = dataset.export_dataset(dataset.plan_dataset(small_catalogue, reseeded), out,
                                   reseeded, False)
    assert moved.moved > 0 and moved.prepared == 0
    for row in moved.rows.itertuples():  # each mask moved with its image
        assert (out / row.split / "masks" / f"{row.id}.png").is_file()
    assert len(list(out.glob("*/masks/*.png"))) == 28
    for split in dataset.SPLITS:
        dataset.read_split(out / split)  # every listed mask is there


def test_read_split_errors(tmp_path):
    with pytest.raises(MissingInputError, match="run 02_prepare_dataset"):
        dataset.read_split(tmp_path / "nope")
    (tmp_path / "val").mkdir()
    with pytest.raises(MissingInputError, match="metadata.jsonl"):
        dataset.read_split(tmp_path / "val")
    (tmp_path / "val" / "metadata.jsonl").write_text("")
    with pytest.raises(DatasetError, match="lists no image"):
        dataset.read_split(tmp_path / "val")
    Image.new("RGB", (4, 4)).save(tmp_path / "val" / "1.png")
    (tmp_path / "val" / "metadata.jsonl").write_text('{"file_name": "1.png", "text": " "}\n')
    with pytest.raises(DatasetError, match="without a caption"):
        dataset.read_split(tmp_path / "val")
    (tmp_path / "val" / "metadata.jsonl").write_text('{"file_name": "2.png", "text": "a"}\n')
    with pytest.raises(MissingInputError, match="are absent"):
        dataset.read_split(tmp_path / "val")
    (tmp_path / "val" / "metadata.jsonl").write_text(
        '{"file_name": "1.png", "text": "a", "mask_file_name": "masks/1.png"}\n')
    with pytest.raises(MissingInputError, match=r"1 mask\(s\) listed in .* are absent"):
        dataset.read_split(tmp_path / "val")
    with pytest.raises(MissingInputError, match="run 01_analysis first with the same output_root"):
        dataset.load_category_table(tmp_path / "analysis" / "category.parquet")


def test_rerun_reuses_moves_and_redoes_only_what_changed(small_catalogue, tmp_path):
    out = tmp_path / "out"
    cfg = config()
    first = dataset.export_dataset(dataset.plan_dataset(small_catalogue, cfg), out, cfg, False)
    pngs = {p.name: p.stat().st_mtime_ns for p in out.glob("*/*.png")}

    again = dataset.export_dataset(dataset.plan_dataset(small_catalogue, cfg), out, cfg, False)
    assert (again.prepared, again.reused, again.moved, again.removed) == (0, 28, 0, 0)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*/*.png")} == pngs

    changed = small_catalogue.loc[small_catalogue["id"] == 1005, "image_path"].item()
    Image.new("RGB", (60, 80), (0, 0, 200)).save(changed)  # new content, new size/mtime
    redo = dataset.export_dataset(dataset.plan_dataset(small_catalogue, cfg), out, cfg, False)
    assert (redo.prepared, redo.reused) == (1, 27)
    png = next(out.glob("*/1005.png"))
    assert np.abs(np.subtract(Image.open(png).getpixel((SIZE // 2, SIZE // 2)),
                              (0, 0, 200))).max() <= 3  # JPEG loss only

    reseeded = config(split=SplitConfig(seed=7))
    moved = dataset.export_dataset(dataset.plan_dataset(small_catalogue, reseeded), out,
                                   reseeded, False)
    assert moved.prepared == 0 and moved.moved > 0 and moved.reused == 28
    for row in moved.rows.itertuples():  # every PNG and caption sits in its new split folder
        assert (out / row.split / f"{row.id}.png").is_file()
        assert (out / row.split / f"{row.id}.txt").read_text() == row.caption
    assert len(list(out.glob("*/*.png"))) == len(list(out.glob("*/*.txt"))) == 28

    bigger = config(image_size=SIZE * 2)
    resized = dataset.export_dataset(dataset.plan_dataset(small_catalogue, bigger), out, bigger,
                                     False)
    assert resized.prepared == 28 and first.prepared == 28
    assert Image.open(next(out.glob("train/*.png"))).size == (SIZE * 2, SIZE * 2)


KILLED_EXPORT = """
import sys, time
import pandas as pd
import shoelib.images as images
from shoelib import dataset

slow = images.prepare_image
def prepare_slowly(*args, **kwargs):  # a long preparation, so the kill lands mid-way
    time.sleep(0.1)
    return slow(*args, **kwargs)
images.prepare_image = prepare_slowly
table = pd.read_parquet(sys.argv[1])
config = dataset.DatasetConfig(category="Casual Shoes", image_size=64, workers=1)
dataset.export_dataset(dataset.plan_dataset(table, config), sys.argv[2], config, progress=False)
print("finished")
"""


def test_killed_export_resumes_with_every_output_valid(tmp_path):
    rows = with_images(catalogue_rows({"Black": 30, "Brown": 20, "White": 10}), tmp_path / "img",
                       size=(300, 400))
    rows.to_parquet(tmp_path / "category.parquet")
    out = tmp_path / "out"
    manifest = out / dataset.MANIFEST
    script = tmp_path / "export.py"
    script.write_text(KILLED_EXPORT)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "category.parquet"),
                             str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if manifest.is_file() and len(manifest.read_text().splitlines()) >= 10:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    stdout, _ = proc.communicate()
    assert proc.returncode == -signal.SIGKILL and b"finished" not in stdout

    recorded = {json.loads(line)["id"] for line in manifest.read_text().splitlines()
                if line.endswith("}")}
    written = {int(p.stem) for p in out.glob("*/*.png")}
    assert 10 <= len(recorded) < 60 and recorded <= written
    for png in out.glob("*/*.png"):  # nothing half-written under a final name
        with Image.open(png) as img:
            img.load()
            assert img.size == (64, 64)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*/*.png") if int(p.stem) in recorded}

    cfg = config(image_size=64)
    result = dataset.export_dataset(dataset.plan_dataset(rows, cfg), out, cfg, progress=False)
    assert result.reused == len(recorded) and result.prepared == 60 - len(recorded)
    assert sum(result.counts.values()) == 60
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*/*.png")
            if int(p.stem) in recorded} == before  # finished images were not redone
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    for name in dataset.SPLITS:
        split = dataset.read_split(out / name)
        assert len(split) == result.counts[name]
        for path in split["image_path"]:
            with Image.open(path) as img:
                img.load()
                assert img.size == (64, 64)


# ---------------------------------------------------------------------------------------------
# the notebooks, on the real sample


@pytest.mark.slow
def test_analysis_and_preparation_of_the_real_sample(real_sample_dir, tmp_path):
    from shoelib import run

    out, reports = tmp_path / "run", tmp_path / "reports"
    code = run.main(["--profile", "demo", "--only", "01,02", "-p", "data_root",
                     str(real_sample_dir), "-p", "categories", "[]", "-p", "output_root", str(out),
                     "--reports-dir", str(reports)])
    assert code == 0
    processed = out / "processed" / "casual_shoes"
    pngs = sorted(processed.rglob("*.png"))  # the dataset folder holds only the dataset
    images, masks = ([p for p in pngs if p.parent.name in dataset.SPLITS],
                     [p for p in pngs if p.parent.name == "masks"])
    assert len(images) == len(masks) == 400 and len(pngs) == 800
    assert {p.parent.name for p in images} == {p.parent.parent.name for p in masks} == set(
        dataset.SPLITS)
    for png in images:
        with Image.open(png) as img:
            assert img.size == (512, 512) and img.mode == "RGB"
    for png in masks:
        with Image.open(png) as img:
            assert img.size == (512, 512) and img.mode == "L"
    meta = json.loads((processed / "metadata.json").read_text())
    assert sum(meta["splits"].values()) == 400 and meta["splits"]["train"] == 280
    summary = json.loads((processed / "summary.json").read_text())
    assert summary["exported"] == 400 and summary["upscaled_images"] == 400
    # a product photo: the product is a part of each image, not none and not all of it
    assert all(0.05 < share < 0.9 for share in summary["foreground_share_mean"].values())
    assert (reports / "02_prepare_dataset.html").stat().st_size > 10_000


def test_export_with_no_decodable_image_says_so(tmp_path):
    rows = catalogue_rows({"Black": 2})
    rows["image_path"] = [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]
    for path in rows["image_path"]:
        Path(path).write_bytes(b"")  # 01 said 'ok', the files broke since
    cfg = config()
    with pytest.raises(DatasetError, match="no image of 'Casual Shoes' could be prepared"):
        dataset.export_dataset(dataset.plan_dataset(rows, cfg), tmp_path / "out", cfg, False)
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert meta["skipped_reasons"] == {"image unreadable": 2}


def test_export_into_a_folder_in_use_is_refused_before_any_work(small_catalogue, tmp_path,
                                                                 lock_in_other_process):
    from shoelib.io import FolderInUseError

    holder = lock_in_other_process(tmp_path / "out")
    cfg = config()
    with pytest.raises(FolderInUseError, match=f"out is in use by pid {holder.pid} "):
        dataset.export_dataset(dataset.plan_dataset(small_catalogue, cfg), tmp_path / "out",
                               cfg, progress=False)
    assert not (tmp_path / "out").exists()


def test_export_at_aspect_buckets_records_each_size_and_redoes_the_images(small_catalogue,
                                                                          tmp_path):
    out = tmp_path / "out"
    square = config(image_size=64)
    first = dataset.export_dataset(dataset.plan_dataset(small_catalogue, square), out, square,
                                   progress=False)
    assert "width" not in (out / "train" / "metadata.jsonl").read_text()  # as before buckets
    cfg = config(image_size=64, aspect_buckets=True)
    result = dataset.export_dataset(dataset.plan_dataset(small_catalogue, cfg), out, cfg,
                                    progress=False)
    # the option is part of every image's manifest entry: all are prepared again
    assert result.prepared == first.prepared == 28 and result.reused == 0
    for name in dataset.SPLITS:
        for line in (out / name / "metadata.jsonl").read_text().splitlines():
            record = json.loads(line)
            size = Image.open(out / name / record["file_name"]).size
            assert (record["width"], record["height"]) == size == (56, 72)  # 60x80 is 3:4
            assert Image.open(out / name / record["mask_file_name"]).size == size
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["parameters"]["aspect_buckets"] is True
    assert meta["bucket_counts"] == {"56x72": 28}
    # 60x80 in 64x64: 48x64, a quarter padding; in 56x72: 54x72, 2 of 56 columns
    assert meta["padding_share"]["letterbox"]["all"] == pytest.approx(0.25, abs=1e-4)
    assert meta["padding_share"]["buckets"]["all"] == pytest.approx(2 / 56, abs=1e-4)
    card = (out / "README.md").read_text()
    assert "aspect bucket" in card and "25.00% in the 64x64 letterbox, 3.57% with aspect" in card
    assert "`width`, `height`" in card
    train = dataset.read_split(out / "train")
    assert set(zip(train["width"], train["height"], strict=True)) == {(56, 72)}
    # and back: the square again, every image redone
    again = dataset.export_dataset(dataset.plan_dataset(small_catalogue, square), out, square,
                                   progress=False)
    assert again.prepared == 28 and Image.open(train["image_path"].iloc[0]).size == (64, 64)


def test_aspect_buckets_must_be_true_or_false_in_02():
    with pytest.raises(ValueError,
                       match=r"^aspect_buckets=1 must be true or false"):
        config(aspect_buckets=1)
