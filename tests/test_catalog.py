"""shoelib.catalog: lossless reading, brands, category filter, quality flags, image inventory."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from shoelib import catalog
from shoelib.catalog import CatalogError, read_styles
from shoelib.demo import QUIRK_IDS, build_demo_catalog

HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"


def write_csv(path: Path, *lines: str) -> Path:
    path.write_text("\n".join((HEADER, *lines)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def demo_catalog(tmp_path_factory) -> Path:
    return build_demo_catalog(tmp_path_factory.mktemp("demo") / "catalog", seed=0)


@pytest.fixture(scope="module")
def real_read(real_sample_dir) -> catalog.StylesRead:
    return read_styles(real_sample_dir / "styles.csv")


# --- reading -----------------------------------------------------------------------------------


def test_surplus_fields_are_joined_back_into_the_name(tmp_path):
    path = write_csv(
        tmp_path / "styles.csv",
        "1,Men,Footwear,Shoes,Casual Shoes,Black,Fall,2011,Casual,Puma Men Black Shoes",
        "2,Men,Footwear,Shoes,Casual Shoes,Black,Fall,2011,Casual,Nike Men Black, White Shoes",
        "3,Women,Apparel,Topwear,Tshirts,Red,Summer,2012,Casual,A Women Red, Blue, Green Top",
    )
    read = read_styles(path)
    assert read.rows_read == 3
    assert read.repaired_lines == (3, 4)  # 1-based file lines; the header is line 1
    assert read.short_lines == ()
    assert read.frame["productDisplayName"].tolist() == [
        "Puma Men Black Shoes", "Nike Men Black, White Shoes", "A Women Red, Blue, Green Top"]
    assert read.frame["usage"].tolist() == ["Casual"] * 3  # fields before the name untouched


ROWS = ("1,Men,Footwear,Shoes,Casual Shoes,Black,Fall,2011,Casual,Puma Men Black Shoes",
        "2,Women,Footwear,Shoes,Casual Shoes,White,Fall,2012,Casual,Café Women White Shoes")


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join((HEADER, *ROWS)).encode("utf-8") + b"\r\n")
    read = read_styles(path)
    assert read.frame["id"].tolist() == [1, 2] and read.latin1_lines == ()
    assert read.frame["productDisplayName"].tolist()[1] == "Café Women White Shoes"


def test_a_line_that_is_not_utf8_is_read_as_latin1_and_reported(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_bytes("\n".join((HEADER, ROWS[0])).encode("utf-8") + b"\n"
                     + ROWS[1].encode("latin-1") + b"\n"
                     + "3,Men,Footwear,Shoes,Casual Shoes,Blue,Fall,2011,Casual,Zoë Men Blue Shoes\n"
                       .encode())
    read = read_styles(path)
    assert read.rows_read == 3  # no row lost
    assert read.latin1_lines == (3,)  # the header is line 1
    assert read.frame["productDisplayName"].tolist()[1:] == ["Café Women White Shoes",
                                                            "Zoë Men Blue Shoes"]
    assert catalog.decode_styles(path).text.split("\n")[2] == ROWS[1]


def test_a_utf16_file_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_bytes("\n".join((HEADER, *ROWS)).encode("utf-16"))
    with pytest.raises(CatalogError, match=r"styles\.csv is UTF-16 text; re-save it as UTF-8 CSV$"):
        read_styles(path)


def test_line_with_too_few_fields_is_kept_and_reported(tmp_path):
    path = write_csv(
        tmp_path / "styles.csv",
        "1,Men,Footwear,Shoes,Casual Shoes,Black,Fall,2011,Casual,Puma Men Black Shoes",
        "2,Men,Footwear,Shoes,Casual Shoes,Black,Fall,2011",
    )
    read = read_styles(path)
    assert read.rows_read == 2
    assert read.repaired_lines == (3,) and read.short_lines == (3,)
    row = read.frame.iloc[1]
    assert row["id"] == 2 and row["year"] == 2011
    assert pd.isna(row["usage"]) and pd.isna(row["productDisplayName"])


def test_na_is_a_value_and_empty_is_missing(tmp_path):
    path = write_csv(
        tmp_path / "styles.csv",
        "1,Men,Footwear,Shoes,Casual Shoes,NA,,,NA,NA",
        "2,Women,Footwear,Shoes,Heels,,Summer,2012,Casual,X Women Heels",
    )
    frame = read_styles(path).frame
    assert frame.loc[0, "usage"] == "NA" and frame.loc[0, "productDisplayName"] == "NA"
    assert frame.loc[0, "baseColour"] == "NA"
    assert pd.isna(frame.loc[0, "season"]) and frame.loc[0, "season"] is pd.NA
    assert pd.isna(frame.loc[1, "baseColour"])
    assert frame["id"].dtype == "int64"
    assert str(frame["year"].dtype) == "Int64"
    assert frame["year"].isna().tolist() == [True, False]


def test_quoted_fields_and_literal_quotes_are_read_like_pandas(tmp_path):
    path = write_csv(
        tmp_path / "styles.csv",
        '1,Women,Apparel,Bottomwear,Shorts,Pink,Summer,2012,Sports,Nike Women\'s Tempo 3.5" Pink Short',
        '2,Men,Footwear,Shoes,Casual Shoes,Black,Fall,2011,Casual,"Quoted Men Black, Grey Shoes"',
    )
    read = read_styles(path)
    reference = pd.read_csv(path, keep_default_na=False, dtype=str)
    assert read.repaired_lines == ()  # a quoted comma is not a surplus field
    assert read.frame["productDisplayName"].tolist() == reference["productDisplayName"].tolist()


def test_missing_required_column_is_named(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text(HEADER.replace(",usage", "").replace(",season", "") + "\n1,Men,A,B,C,D,2011,x\n")
    with pytest.raises(CatalogError, match="season, usage") as err:
        read_styles(path)
    assert str(path) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_non_integer_year_names_the_line(tmp_path):
    path = write_csv(tmp_path / "styles.csv",
                     "1,Men,Footwear,Shoes,Casual Shoes,Black,Fall,2011,Casual,A Men Shoes",
                     "2,Men,Footwear,Shoes,Casual Shoes,Black,Fall,20x1,Casual,B Men Shoes")
    with pytest.raises(CatalogError, match=r"line 3: year='20x1'"):
        read_styles(path)


def test_missing_file_and_folder_argument(tmp_path):
    with pytest.raises(FileNotFoundError, match="styles.csv"):
        read_styles(tmp_path)
    write_csv(tmp_path / "styles.csv", "1,Men,Footwear,Shoes,Casual Shoes,Black,Fall,2011,Casual,A Men Shoes")
    assert read_styles(tmp_path).rows_read == 1  # a folder means <folder>/styles.csv


def test_demo_catalogue_pandas_skip_loses_the_rows_we_keep(demo_catalog):
    read = read_styles(demo_catalog)
    skipped = pd.read_csv(demo_catalog / "styles.csv", on_bad_lines="skip")
    n_bad = len(QUIRK_IDS["comma_11_fields"]) + len(QUIRK_IDS["comma_12_fields"])
    assert len(read.repaired_lines) == n_bad
    assert len(skipped) == read.rows_read - n_bad
    lost = set(read.frame["id"]) - set(skipped["id"])
    assert lost == set(QUIRK_IDS["comma_11_fields"] + QUIRK_IDS["comma_12_fields"])
    names = read.frame.set_index("id")["productDisplayName"]
    assert names[QUIRK_IDS["comma_12_fields"][0]].count(",") == 2


def test_real_sample_matches_pandas_reference(real_read, real_sample_dir):
    """On a file without bad lines, every cell equals pandas' reading with NA kept."""
    assert real_read.rows_read == 44_446
    assert real_read.repaired_lines == ()
    reference = pd.read_csv(real_sample_dir / "styles.csv", keep_default_na=False,
                            na_values=[""], dtype=str)
    ours = real_read.frame
    assert list(ours.columns) == list(catalog.REQUIRED_COLUMNS)
    for column in ours.columns:
        expected = reference[column].astype("object").where(reference[column].notna(), None)
        got = ours[column].astype("string").astype("object").where(ours[column].notna(), None)
        assert got.tolist() == expected.tolist(), column
    assert (ours["usage"] == "NA").sum() == 316
    assert ours["season"].isna().sum() == 21


# --- brands ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "gender", "brand"), [
    ("United Colors of Benetton Men Solid Black Shoes", "Men", "United Colors of Benetton"),
    ("Puma Men's Contest Hi White Navy Shoe", "Men", "Puma"),
    ("Red Tape Womens Brown Shoes", "Women", "Red Tape"),
    ("U.S. Polo Assn. Unisex Blue Sneakers", "Unisex", "U.S. Polo Assn."),
    ("Gini and Jony Girl's Vanya White Kidswear", "Girls", "Gini and Jony"),
    ("Disney Kids-Boys Blue T-shirt", "Boys", "Disney"),
    ("Kids Ville Girls Pink Top", "Girls", "Kids Ville"),  # a gender word opening the brand
    ("Casio Youth Series Men Digital Watch", "Men", "Casio"),
    ("Quechua Jawar 5.0 Man Black Red", "Men", None),  # model names, not a gender word
    ("Clarks Brown Leather Casual Shoes", "Men", None),
    ("Acme Kidz Blue Shoes", "Kidz", "Acme"),  # the row's gender value counts as a word
    ("NA", "Men", None),
    ("", "Men", None),
    (None, "Men", None),
    (pd.NA, None, None),
])
def test_parse_brand(name, gender, brand):
    assert catalog.parse_brand(name, gender) == brand


def test_brands_fallbacks_on_the_real_sample(real_read):
    frame = real_read.frame
    table = catalog.brand_table(frame)
    by_name = dict(zip(frame["productDisplayName"], table["brand"], strict=True))
    assert by_name["Red Tape Semi Casual Brown Shoe"] == "Red Tape"  # known brand
    assert by_name["U.S. Polo Assn.Men Brown Shoes"] == "U.S. Polo Assn."  # no space after it
    assert by_name["Playboy"] == "Playboy"  # first word
    assert table.loc[frame["productDisplayName"] == "NA", "brand"].isna().all()
    casual = table[frame["articleType"] == "Casual Shoes"]
    assert (casual["brand_source"] == "gender word").sum() == 2_832
    assert casual["brand"].value_counts().index[0] == "Puma"
    assert catalog.brands(frame).equals(table["brand"])


# --- category, tables, quality -----------------------------------------------------------------


def test_select_category_and_close_matches(real_read):
    casual = catalog.select_category(real_read.frame, "Casual Shoes")
    assert len(casual) == 2_846
    assert (casual["articleType"] == "Casual Shoes").all()
    with pytest.raises(CatalogError, match=r"'casual shoe'.*143 exist.*Casual Shoes"):
        catalog.select_category(real_read.frame, "casual shoe")
    with pytest.raises(CatalogError, match="no close match"):
        catalog.select_category(real_read.frame, "Spaceships")  # nothing alike


def test_casual_shoes_shares_match_domain_facts(real_read):
    casual = catalog.select_category(real_read.frame, "Casual Shoes")
    colours = catalog.share_table(casual["baseColour"])
    assert colours["count"].head(3).to_dict() == {"Black": 875, "Brown": 511, "White": 435}
    assert len(colours) == 32
    genders = catalog.share_table(casual["gender"])["share"].round(3).to_dict()
    assert genders == {"Men": 0.790, "Women": 0.117, "Unisex": 0.080, "Boys": 0.008,
                       "Girls": 0.005}


def test_share_table_top_n_and_missing():
    values = pd.Series(["a", "a", "a", "b", "b", "c", None], name="x", dtype="string")
    table = catalog.share_table(values, top_n=2)
    assert table["count"].to_dict() == {"a": 3, "b": 2, "Other": 2}
    assert table["share"].sum() == pytest.approx(1.0)
    assert catalog.share_table(values)["count"]["<missing>"] == 1


def test_quality_flags_on_demo_catalogue(demo_catalog):
    frame = read_styles(demo_catalog).frame
    flags = catalog.quality_flags(frame)
    assert set(frame.loc[flags["is_test_row"], "id"]) == set(QUIRK_IDS["test_row"])
    assert set(frame.loc[flags["duplicated_id"], "id"]) == set(QUIRK_IDS["duplicated_id"])
    assert flags["duplicated_id"].sum() == 2  # both rows of the id are flagged
    empty = dict(zip(frame["id"], flags["empty_fields"], strict=True))
    assert empty[QUIRK_IDS["empty_season"][0]] == "season"
    assert empty[QUIRK_IDS["empty_colour"][0]] == "baseColour"
    assert empty[QUIRK_IDS["empty_year"][0]] == "year"
    missing = catalog.missing_by_column(frame)
    assert missing.loc["usage", "NA_string"] >= 2 and missing.loc["season", "empty"] == 1


def test_quality_flags_on_real_sample(real_read):
    frame = real_read.frame
    flags = catalog.quality_flags(frame)
    assert sorted(frame.loc[flags["is_test_row"], "productDisplayName"]) == [
        "RTV_LoadTest", "productDisplayName", "test dispName"]
    assert not flags["duplicated_id"].any()
    assert (flags["n_empty"] > 0).sum() == 22  # 21 seasons, 1 year, 1 usage; one row has two


# --- image inventory ---------------------------------------------------------------------------


def test_inventory_statuses_for_every_quirk_file(demo_catalog):
    frame = read_styles(demo_catalog).frame
    inv = catalog.inventory_images(frame, demo_catalog / "images", workers=2, progress=False)
    by_id = inv.drop_duplicates("id").set_index("id")

    def row(quirk):
        return by_id.loc[QUIRK_IDS[quirk][0]]

    for product_id in QUIRK_IDS["missing_image"]:
        assert by_id.loc[product_id, "image_status"] == "missing"
        assert by_id.loc[product_id, "image_path"] is None
    assert row("truncated_jpeg")["image_status"] == "unreadable"
    assert "truncated" in row("truncated_jpeg")["image_error"]
    assert row("truncated_jpeg")["image_width"] == 224  # the header was readable
    assert row("zero_byte_image")["image_status"] == "unreadable"
    assert row("zero_byte_image")["image_bytes"] == 0
    zero = QUIRK_IDS["zero_byte_image"][0]
    assert row("zero_byte_image")["image_error"] == (  # the file, not this machine's folder
        f"UnidentifiedImageError: cannot identify image file '{zero}.jpg'")
    assert (row("grayscale_jpeg")["image_status"], row("grayscale_jpeg")["image_mode"]) == ("ok", "L")
    assert (row("cmyk_jpeg")["image_status"], row("cmyk_jpeg")["image_mode"]) == ("ok", "CMYK")
    png = row("png_as_jpg")
    assert (png["image_status"], png["image_format"], png["image_mode"]) == ("ok", "PNG", "RGBA")
    sizes = {(by_id.loc[i, "image_width"], by_id.loc[i, "image_height"]) for i in QUIRK_IDS["odd_size"]}
    assert sizes == {(1080, 1440), (2400, 1800)}
    assert set(inv.columns) >= set(catalog.IMAGE_COLUMNS)
    assert len(inv) == len(frame) and inv.index.equals(frame.index)
    counts = inv["image_status"].value_counts()
    assert counts["missing"] == 3 and counts["unreadable"] == 2


def test_draft_decoding_agrees_with_full_decoding(demo_catalog):
    """Reference: a plain full-resolution PIL decode must give the same verdict per file."""
    for path in sorted((demo_catalog / "images").iterdir())[:40] + [
            demo_catalog / "images" / f"{i}.jpg" for ids in QUIRK_IDS.values() for i in ids]:
        if not path.exists():
            continue
        try:
            with Image.open(path) as img:
                img.load()
            full = "ok"
        except Exception:  # any decoder failure
            full = "unreadable"
        assert catalog.probe_image(path).status == full, path.name


def test_inventory_real_sample_casual_shoes(real_read, real_sample_dir):
    casual = catalog.select_category(real_read.frame, "Casual Shoes")
    inv = catalog.inventory_images(casual, real_sample_dir / "images", progress=False)
    ok = inv[inv["image_status"] == "ok"]
    assert len(ok) == 400
    assert (inv["image_status"] == "missing").sum() == 2_446
    assert set(zip(ok["image_width"], ok["image_height"], ok["image_mode"], strict=True)) == {
        (224, 224, "RGB")}
    assert len(catalog.image_ids_on_disk(real_sample_dir / "images")) == 900


# --- the notebook on the real sample -----------------------------------------------------------


@pytest.mark.slow
def test_notebook_01_on_real_sample(real_sample_dir, tmp_path):
    from shoelib.run import main

    out = tmp_path / "run"
    # the demo profile lists three types; the figures below are Casual Shoes' alone
    rc = main(["--profile", "demo", "--only", "01", "-p", "data_root", str(real_sample_dir),
               "-p", "categories", "[]",
               "-p", "output_root", str(out), "--reports-dir", str(tmp_path / "reports")])
    assert rc == 0
    analysis = out / "analysis"
    summary = json.loads((analysis / "summary.json").read_text())
    assert summary["rows_read"] == 44_446 and summary["rows_repaired"] == 0
    assert summary["category_rows"] == 2_846
    assert (summary["images_present"], summary["images_ok"]) == (400, 400)
    assert summary["images_missing"] == 2_446 and summary["images_unreadable"] == 0
    assert summary["colour_counts"]["Black"] == 875
    assert summary["gender_shares"]["Men"] == pytest.approx(0.790, abs=1e-3)
    for figure in summary["figures"]:
        assert (analysis / figure).is_file()
    cat = pd.read_parquet(analysis / "category.parquet")
    assert len(cat) == 2_846
    assert set(cat.columns) >= {*catalog.REQUIRED_COLUMNS, "brand", "image_path", "image_status",
                                "image_width", "image_height", "image_mode"}
    assert (cat["usage"] == "NA").sum() == (summary["usage_counts"].get("NA", 0))
    assert len(pd.read_parquet(analysis / "catalog.parquet")) == 44_446
    assert (tmp_path / "reports" / "01_analysis.html").is_file()


def test_a_photo_below_min_side_is_unreadable_in_the_inventory(tmp_path):
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    Image.new("RGB", (1, 1), (255, 255, 255)).save(images_dir / "1.jpg", format="JPEG")
    Image.new("RGB", (60, 80), (20, 20, 20)).save(images_dir / "2.jpg", format="JPEG")
    frame = pd.DataFrame({"id": [1, 2]})
    inventory = catalog.inventory_images(frame, images_dir, progress=False, min_side=32)
    assert inventory["image_status"].tolist() == ["unreadable", "ok"]
    assert inventory["image_error"].tolist()[0] == "too small: 1x1 px, below min_image_side=32"
    assert inventory["image_width"].tolist() == [1, 60]  # the file's size is still reported
    lenient = catalog.inventory_images(frame, images_dir, progress=False, min_side=1)
    assert lenient["image_status"].tolist() == ["ok", "ok"]
    with pytest.raises(ValueError, match="^min_image_side=0 must be a whole number"):
        catalog.inventory_images(frame, images_dir, progress=False, min_side=0)
