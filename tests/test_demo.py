"""shoelib.demo: the generated sample catalogue and the demo assets."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from shoelib import demo
from shoelib.catalog import read_styles
from shoelib.demo import QUIRK_IDS, build_demo_catalog
from shoelib.metrics import palette_name


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory) -> Path:
    return build_demo_catalog(tmp_path_factory.mktemp("demo") / "catalog", seed=0)


@pytest.fixture(scope="module")
def raw_rows(catalog_dir) -> list[list[str]]:
    with (catalog_dir / "styles.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def test_same_seed_same_bytes_other_seed_differs(catalog_dir, tmp_path):
    again = build_demo_catalog(tmp_path / "again", seed=0)
    assert (again / "styles.csv").read_bytes() == (catalog_dir / "styles.csv").read_bytes()
    names = sorted(p.name for p in (catalog_dir / "images").iterdir())
    assert names == sorted(p.name for p in (again / "images").iterdir())
    for name in names[:20]:
        assert (again / "images" / name).read_bytes() == (catalog_dir / "images" / name).read_bytes()
    other = demo.demo_rows(seed=1)
    assert [r.csv_line() for r in other] != [r.csv_line() for r in demo.demo_rows(seed=0)]


def test_layout_and_atomic_build(catalog_dir):
    assert (catalog_dir / "styles.csv").is_file() and (catalog_dir / "images").is_dir()
    marker = json.loads((catalog_dir / demo.COMPLETE_MARKER).read_text())
    assert marker == {"generator_version": demo.GENERATOR_VERSION, "seed": 0,
                      "rows": len(demo.demo_rows(0))}
    assert not list(catalog_dir.parent.glob(".catalog.*"))  # staging renamed away, old copy gone


def test_counts_and_distributions(catalog_dir):
    frame = read_styles(catalog_dir).frame
    assert 280 <= len(frame) <= 320
    assert frame["articleType"].nunique() >= 6
    casual = frame[frame["articleType"] == "Casual Shoes"]
    assert len(casual) >= 120
    colours = casual["baseColour"].value_counts()  # "NA" counts, empty does not
    assert list(colours.index[:3]) == ["Black", "Brown", "White"]
    real_colours = colours.drop("NA")
    assert len(real_colours) >= 12
    assert (real_colours < 10).sum() >= 5  # a long tail of rare colours
    genders = casual["gender"].value_counts(normalize=True)
    assert 0.75 <= genders["Men"] <= 0.83
    assert set(genders.index) == {"Men", "Women", "Unisex", "Boys", "Girls"}
    assert frame["season"].nunique() >= 4 and frame["year"].nunique() >= 5
    assert (frame["usage"] == "NA").sum() >= 1 + demo.EXTRA_USAGE_NA
    multi_word = casual["productDisplayName"].str.startswith("United Colors of Benetton ")
    assert multi_word.sum() >= 3


def test_unquoted_comma_lines_have_11_and_12_fields(raw_rows, catalog_dir):
    by_count = {}
    for fields in raw_rows[1:]:
        by_count.setdefault(len(fields), []).append(int(fields[0]))
    assert set(by_count) == {10, 11, 12}
    assert sorted(by_count[11]) == sorted(QUIRK_IDS["comma_11_fields"])
    assert by_count[12] == list(QUIRK_IDS["comma_12_fields"])
    text = (catalog_dir / "styles.csv").read_text()
    assert '"' not in text.replace('3.5"', "")  # nothing quoted, as in the Kaggle file
    types = {int(f[0]): f[4] for f in raw_rows[1:]}
    assert "Casual Shoes" in {types[i] for i in by_count[11] + by_count[12]}


def test_value_quirks_present(raw_rows):
    rows = {}
    for fields in raw_rows[1:]:
        rows.setdefault(int(fields[0]), []).append(fields)
    header = raw_rows[0]
    col = {name: header.index(name) for name in header}

    def field(quirk, column):
        return rows[QUIRK_IDS[quirk][0]][0][col[column]]

    assert field("usage_NA", "usage") == "NA"
    assert field("name_NA", "productDisplayName") == "NA"
    assert field("colour_NA", "baseColour") == "NA"
    assert field("empty_season", "season") == ""
    assert field("empty_colour", "baseColour") == ""
    assert field("empty_year", "year") == ""
    assert '3.5"' in field("quote_in_name", "productDisplayName")
    assert {rows[i][0][-1] for i in QUIRK_IDS["test_row"]} == {
        "test dispName", "RTV_LoadTest", "productDisplayName"}
    assert len(rows[QUIRK_IDS["duplicated_id"][0]]) == 2
    assert sum(len(v) > 1 for v in rows.values()) == 1


def test_image_quirks_present(catalog_dir):
    images = catalog_dir / "images"

    def path(quirk):
        return images / f"{QUIRK_IDS[quirk][0]}.jpg"

    for product_id in QUIRK_IDS["missing_image"]:
        assert not (images / f"{product_id}.jpg").exists()
    assert path("zero_byte_image").stat().st_size == 0
    truncated = path("truncated_jpeg").read_bytes()
    assert truncated[:2] == b"\xff\xd8" and not truncated.endswith(b"\xff\xd9")
    assert path("png_as_jpg").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path("png_as_jpg")) as img:
        assert img.mode == "RGBA"
    with Image.open(path("grayscale_jpeg")) as img:
        assert (img.format, img.mode) == ("JPEG", "L")
    with Image.open(path("cmyk_jpeg")) as img:
        assert (img.format, img.mode) == ("JPEG", "CMYK")


def test_images_look_like_product_photos(catalog_dir):
    frame = read_styles(catalog_dir).frame
    quirky = {i for ids in QUIRK_IDS.values() for i in ids}
    plain = frame[~frame["id"].isin(quirky)].head(12)
    centres = set()
    for _, row in plain.iterrows():
        with Image.open(catalog_dir / "images" / f"{row['id']}.jpg") as img:
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", demo.IMAGE_SIZE)
            small = img.convert("RGB").resize((90, 120))
        assert min(small.getpixel((0, 0))) >= 245  # off-white background
        box = Image.eval(small.convert("L"), lambda v: 255 if v < 200 else 0).getbbox()
        if row["baseColour"] not in ("White", "Beige", "Off White", "Yellow"):
            assert box is not None  # a visible product
            centres.add(((box[0] + box[2]) // 2, (box[1] + box[3]) // 2))
    assert len(centres) > 3  # position varies


def test_colour_names_are_palette_colours():
    """Every drawn colour is one the evaluation's colour measure knows (no grey fallback)."""
    for colour in demo.CASUAL_COLOURS:
        assert palette_name(colour) == colour
    for spec in demo.TYPE_SPECS.values():
        for colour in spec.get("colours", {}):
            assert palette_name(colour) == colour


def test_ensure_demo_assets_idempotent(tmp_path, tiny_sd_dir, catalog_dir, capsys):
    root = tmp_path / "demo"
    shutil.copytree(tiny_sd_dir, root / "models" / "tiny-sd")  # complete copies: nothing to do
    shutil.copytree(catalog_dir, root / "catalog")
    assets = demo.ensure_demo_assets(root)
    assert assets.catalog_dir == root / "catalog"
    assert (assets.model_dir / "model_index.json").is_file()
    marker = assets.catalog_dir / demo.COMPLETE_MARKER
    stamp = marker.stat().st_mtime_ns
    assert demo.ensure_demo_assets(root) == assets
    assert marker.stat().st_mtime_ns == stamp  # not rebuilt

    marker.write_text(json.dumps({"generator_version": -1, "seed": 0}))  # an older copy
    demo.ensure_demo_assets(root)
    assert json.loads(marker.read_text())["generator_version"] == demo.GENERATOR_VERSION

    assert demo.main(["--root", str(root)]) == 0
    printed = capsys.readouterr().out
    assert f"{len(demo.demo_rows(0))} rows" in printed and "tiny-sd" in printed
