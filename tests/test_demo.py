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
    shipped = demo.shipped_rows()
    assert len(frame) == len(shipped) + 1  # every shipped row, plus the duplicated id's line
    casual = frame[frame["articleType"] == "Casual Shoes"]
    assert len(casual) == sum(f[4] == "Casual Shoes" for f in shipped) + 1  # duplicated id
    for article_type in demo.FOOTWEAR:
        assert (frame["articleType"] == article_type).sum() >= 20
    colours = casual["baseColour"].value_counts()  # "NA" counts, empty does not
    assert list(colours.index[:3]) == ["Black", "Brown", "White"]
    assert ((colours.drop("NA") < 10).sum()) >= 5  # a long tail of rare colours
    genders = casual["gender"].value_counts(normalize=True)
    assert genders["Men"] >= 0.7
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


def test_plain_rows_carry_their_own_real_photo(catalog_dir):
    """A row without an image quirk has its shipped photo byte for byte, and its labels are the
    shipped row's, so captions describe the photo."""
    frame = read_styles(catalog_dir).frame
    quirky = {i for ids in QUIRK_IDS.values() for i in ids}
    shipped = {int(f[0]): f for f in demo.shipped_rows()}
    plain = frame[~frame["id"].isin(quirky)]
    assert len(plain) >= 1000
    for _, row in plain.head(50).iterrows():
        source = demo.PHOTOS_DIR / "images" / f"{row['id']}.jpg"
        assert (catalog_dir / "images" / f"{row['id']}.jpg").read_bytes() == source.read_bytes()
        assert row["articleType"] == shipped[row["id"]][4]
    with Image.open(demo.PHOTOS_DIR / "images" / f"{plain['id'].iloc[0]}.jpg") as img:
        assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (224, 224))


def test_quirk_rows_keep_the_labels_of_the_photo_they_take(catalog_dir):
    frame = read_styles(catalog_dir).frame.drop_duplicates("id").set_index("id")
    rows = {r.id: r for r in demo.demo_rows(0)}
    shipped = {int(f[0]): f for f in demo.shipped_rows()}
    quirk = rows[QUIRK_IDS["usage_NA"][0]]
    source = shipped[quirk.photo_id]
    assert frame.loc[quirk.id, "baseColour"] == source[5] and frame.loc[quirk.id, "usage"] == "NA"
    assert quirk.photo_id not in frame.index  # the photo is not shipped twice
    with Image.open(catalog_dir / "images" / f"{QUIRK_IDS['odd_size'][0]}.jpg") as img:
        assert img.size == demo.ODD_SIZES[0]


def test_shipped_rows_are_the_real_catalogue_lines(real_catalog_dir):
    real = {line.split(",", 1)[0]: line for line in
            (real_catalog_dir / "styles.csv").read_text(encoding="utf-8").splitlines()[1:]}
    shipped = (demo.PHOTOS_DIR / "styles.csv").read_text(encoding="utf-8").splitlines()
    assert shipped[0] == demo.HEADER
    for line in shipped[1:]:
        assert real[line.split(",", 1)[0]] == line
    for path in list((demo.PHOTOS_DIR / "images").iterdir())[:50]:
        assert path.read_bytes() == (real_catalog_dir / "images" / path.name).read_bytes()


def test_ensure_demo_assets_idempotent(tmp_path, catalog_dir, capsys):
    root = tmp_path / "demo"
    shutil.copytree(catalog_dir, root / "catalog")  # a complete copy: nothing to do
    assets = demo.ensure_demo_assets(root)
    assert assets.catalog_dir == root / "catalog"
    assert assets.model_dir == demo.MODEL_DIR and assets.encoder_dir == demo.ENCODER_DIR
    marker = assets.catalog_dir / demo.COMPLETE_MARKER
    stamp = marker.stat().st_mtime_ns
    assert demo.ensure_demo_assets(root) == assets
    assert marker.stat().st_mtime_ns == stamp  # not rebuilt

    marker.write_text(json.dumps({"generator_version": -1, "seed": 0}))  # an older copy
    demo.ensure_demo_assets(root)
    assert json.loads(marker.read_text())["generator_version"] == demo.GENERATOR_VERSION

    assert demo.main(["--root", str(root)]) == 0
    printed = capsys.readouterr().out
    assert f"{len(demo.demo_rows(0))} rows" in printed and "catalog-sd-64" in printed
