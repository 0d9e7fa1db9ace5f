"""The embedded default: a generated sample catalogue in the Kaggle layout, and the tiny model.

    python -m shoelib.demo [--root DIR]     # builds DIR/catalog and DIR/models/tiny-sd

The catalogue (`styles.csv` + `images/<id>.jpg`) has about 300 rows over seven article types,
Casual Shoes with the real colour and gender shape (Black/Brown/White largest, a long tail of
rare colours; Men ~79 %), and every quirk of the real file (QUIRK_IDS). Its images are flat
drawn shoe silhouettes in the row's colour on an off-white background: they exercise the code,
they are not data, and nothing learned from them means anything.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from PIL import Image, ImageDraw

from shoelib.metrics import PALETTE, palette_name
from shoelib.paths import DEMO_DIR

# Bump when the generated catalogue changes, so `ensure_demo_assets` rebuilds an old copy.
GENERATOR_VERSION = 2
COMPLETE_MARKER = ".complete"  # written last inside the catalogue folder
HEADER = ("id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,"
          "productDisplayName")
IMAGE_SIZE = (1800, 2400)  # width, height of most Kaggle originals
JPEG_QUALITY = 85

# Rows per article type (Casual Shoes get the quirk rows on top: see QUIRK_ROWS).
ARTICLE_COUNTS = {
    "Casual Shoes": 115, "Sports Shoes": 40, "Formal Shoes": 30, "Sandals": 25,
    "Flip Flops": 20, "Heels": 15, "Tshirts": 30,
}
# Casual Shoes colours: the real shape scaled down (the Kaggle styles.csv, as 01 counts it:
# Black 30.7 %, Brown 18.0 %, White 15.3 %, ... a long tail). 16 colours, 11 with fewer than 10 rows; plus one "NA" and
# one empty cell from the quirk rows.
CASUAL_COLOURS = {
    "Black": 34, "Brown": 21, "White": 18, "Grey": 10, "Blue": 10, "Navy Blue": 8, "Red": 7,
    "Green": 5, "Olive": 4, "Tan": 3, "Beige": 3, "Khaki": 2, "Pink": 2, "Purple": 1,
    "Yellow": 1, "Orange": 1,
}
# Casual Shoes genders: Men 79.0 %, Women 11.7 %, Unisex 8.0 %, Boys 0.8 %, Girls 0.5 % (real).
CASUAL_GENDERS = {"Men": 104, "Women": 16, "Unisex": 9, "Boys": 2, "Girls": 1}

# Deliberate quirks, by fixed id (the same for every seed). Each reproduces one of the Kaggle
# styles.csv (unquoted commas in about 22 names, "NA" as a value, empty cells, test rows) or a
# failure a real image folder has.
QUIRK_IDS = {
    "comma_11_fields": (58001, 58003, 58004),  # one unquoted comma in the name: 11 fields
    "comma_12_fields": (58002,),               # two unquoted commas: 12 fields
    "quote_in_name": (58005,),                 # a literal " inside an unquoted name
    "usage_NA": (58006,),                      # usage is the string "NA" (more rows at random)
    "name_NA": (58007,),                       # productDisplayName is "NA"
    "colour_NA": (58008,),                     # baseColour is "NA"
    "empty_season": (58009,),
    "empty_colour": (58010,),
    "empty_year": (58011,),
    "test_row": (58012, 58013, 58014),         # "test dispName", "RTV_LoadTest", "productDisplayName"
    "duplicated_id": (58015,),                 # two rows share this id
    "missing_image": (58016, 58017, 58018),    # no images/<id>.jpg
    "truncated_jpeg": (58019,),                # JPEG cut in half: opens, fails to decode
    "zero_byte_image": (58020,),
    "grayscale_jpeg": (58021,),                # mode L
    "cmyk_jpeg": (58022,),                     # mode CMYK
    "png_as_jpg": (58023,),                    # RGBA PNG saved as <id>.jpg
    "odd_size": (58024, 58025),                # 1080x1440 and 2400x1800 instead of 1800x2400
}
# id -> (articleType, fields that differ from a generated row). Quirk rows of Casual Shoes
# take colour/gender slots of the distributions above unless they set baseColour themselves;
# "{gender}"/"{colour}" in a name are filled with the row's own values.
QUIRK_ROWS: tuple[tuple[int, str, dict], ...] = (
    (58001, "Casual Shoes", {"name": "Nike {gender} {colour}, White Casual Shoes"}),
    (58002, "Casual Shoes", {"name": "Puma {gender} Suede Classic, {colour}, White Sneakers"}),
    (58003, "Sports Shoes", {"name": "ADIDAS {gender} {colour} Running, Training Shoes"}),
    (58004, "Tshirts", {"name": "Lee Cooper {gender} {colour}, White Striped T-shirt"}),
    (58005, "Tshirts", {"name": 'Nike Women\'s EM Tempo 3.5" Pink T-shirt', "gender": "Women",
                        "baseColour": "Pink"}),
    (58006, "Casual Shoes", {"usage": "NA"}),
    (58007, "Flip Flops", {"name": "NA"}),
    (58008, "Casual Shoes", {"baseColour": "NA"}),
    (58009, "Casual Shoes", {"season": ""}),
    (58010, "Casual Shoes", {"baseColour": ""}),
    (58011, "Sports Shoes", {"year": ""}),
    (58012, "Heels", {"name": "test dispName"}),
    (58013, "Sandals", {"name": "RTV_LoadTest", "usage": ""}),
    (58014, "Heels", {"name": "productDisplayName"}),
    (58015, "Casual Shoes", {}),
    (58015, "Casual Shoes", {}),
    (58016, "Casual Shoes", {"image": None}),
    (58017, "Casual Shoes", {"image": None}),
    (58018, "Formal Shoes", {"image": None}),
    (58019, "Casual Shoes", {"image": "truncated"}),
    (58020, "Casual Shoes", {"image": "zero_byte"}),
    (58021, "Casual Shoes", {"image": "L"}),
    (58022, "Casual Shoes", {"image": "CMYK"}),
    (58023, "Casual Shoes", {"image": "png"}),
    (58024, "Casual Shoes", {"image_size": (1080, 1440)}),
    (58025, "Casual Shoes", {"image_size": (2400, 1800)}),
)
EXTRA_USAGE_NA = 4  # further random rows whose usage is "NA" (the real file has 316)

# Products are drawn in the colour the evaluation reads back (`metrics.PALETTE`).
NEUTRAL_RGB = (140, 140, 140)  # "NA", empty or a name with no palette colour

# What the other article types look like: genders, colours, brands, usage, product nouns.
TYPE_SPECS = {
    "Casual Shoes": dict(master="Footwear", sub="Shoes", usage="Casual",
                         nouns=("Casual Shoes", "Sneakers", "Canvas Shoes", "Loafers")),
    "Sports Shoes": dict(master="Footwear", sub="Shoes", usage="Sports",
                         nouns=("Sports Shoes", "Running Shoes"),
                         genders={"Men": 8, "Women": 3, "Unisex": 1},
                         colours={"Black": 4, "White": 4, "Blue": 2, "Grey": 2, "Red": 1}),
    "Formal Shoes": dict(master="Footwear", sub="Shoes", usage="Formal",
                         nouns=("Formal Shoes", "Derby Shoes"), genders={"Men": 1},
                         colours={"Black": 3, "Brown": 3, "Tan": 1}),
    "Sandals": dict(master="Footwear", sub="Sandal", usage="Casual", nouns=("Sandals",),
                    genders={"Men": 3, "Women": 2, "Boys": 1},
                    colours={"Brown": 3, "Black": 3, "Tan": 1, "Olive": 1}),
    "Flip Flops": dict(master="Footwear", sub="Flip Flops", usage="Casual",
                       nouns=("Flip Flops",), genders={"Men": 2, "Women": 2, "Unisex": 1},
                       colours={"Black": 2, "Blue": 2, "Red": 1, "Yellow": 1}),
    "Heels": dict(master="Footwear", sub="Shoes", usage="Casual", nouns=("Heels", "Pumps"),
                  genders={"Women": 1}, colours={"Black": 3, "Red": 1, "Beige": 1, "Gold": 1}),
    "Tshirts": dict(master="Apparel", sub="Topwear", usage="Casual", nouns=("T-shirt",),
                    genders={"Men": 3, "Women": 2},
                    colours={"Black": 2, "White": 2, "Navy Blue": 1, "Grey": 1, "Red": 1}),
}
BRANDS = (  # multi-word brands on purpose: the first word is not the brand
    "United Colors of Benetton", "Red Tape", "Lee Cooper", "U.S. Polo Assn.", "Numero Uno",
    "Puma", "Nike", "ADIDAS", "Converse", "Vans", "Woodland", "Carlton London",
)
# How a gender appears in names (real forms: "Men", "Men's", "Mens", "Women's", ...).
GENDER_FORMS = {
    "Men": ("Men", "Men", "Men", "Men's", "Mens"), "Women": ("Women", "Women", "Women's"),
    "Unisex": ("Unisex",), "Boys": ("Boys", "Boy's"), "Girls": ("Girls", "Girl's"),
}
SEASONS = {"Summer": 5, "Fall": 4, "Winter": 2, "Spring": 1}
YEARS = {2010: 1, 2011: 5, 2012: 4, 2013: 1, 2014: 1, 2015: 2, 2016: 2, 2017: 1}


@dataclass(frozen=True)
class DemoRow:
    id: int
    gender: str
    article_type: str
    colour: str
    season: str
    year: str
    usage: str
    name: str
    image: str | None = "jpeg"  # 'jpeg' | None (missing) | 'truncated' | 'zero_byte' | 'L' | ...
    image_size: tuple[int, int] = IMAGE_SIZE

    def csv_line(self) -> str:
        """Written the way the Kaggle file is: no quoting, so a comma in the name splits it."""
        spec = TYPE_SPECS[self.article_type]
        return ",".join((str(self.id), self.gender, spec["master"], spec["sub"],
                         self.article_type, self.colour, self.season, self.year, self.usage,
                         self.name))


@dataclass(frozen=True)
class DemoAssets:
    catalog_dir: Path  # styles.csv + images/
    model_dir: Path    # tiny SD pipeline in diffusers layout


# ---------------------------------------------------------------------------------------------
# Rows


def _expand(counts: dict, rng: random.Random) -> list:
    items = [value for value, n in counts.items() for _ in range(n)]
    rng.shuffle(items)
    return items


def _weighted(weights: dict, rng: random.Random):
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _product_name(brand: str, gender: str, colour: str, noun: str, rng: random.Random) -> str:
    words = [brand, rng.choice(GENDER_FORMS[gender])]
    if colour not in ("", "NA"):
        words.append(colour)
    words.append(noun)
    return " ".join(words)


def demo_rows(seed: int = 0) -> list[DemoRow]:
    """Every row of the demo catalogue, in file order (shuffled, as the real file is).

    Args:
        seed: drives everything but QUIRK_IDS.
    Returns:
        DemoRow list: ARTICLE_COUNTS rows plus QUIRK_ROWS.
    """
    rng = random.Random(seed)
    quirk_types = [t for _, t, _ in QUIRK_ROWS]
    n_casual = ARTICLE_COUNTS["Casual Shoes"] + quirk_types.count("Casual Shoes")
    own_colour = sum(1 for _, t, f in QUIRK_ROWS if t == "Casual Shoes" and "baseColour" in f)
    casual_colours = _expand(CASUAL_COLOURS, rng)
    casual_genders = _expand(CASUAL_GENDERS, rng)
    if len(casual_colours) != n_casual - own_colour or len(casual_genders) != n_casual:
        raise AssertionError("CASUAL_COLOURS/CASUAL_GENDERS must add up to the Casual Shoes rows")

    reserved = {i for i, _, _ in QUIRK_ROWS}
    pool = [i for i in range(1500, 57000) if i not in reserved]
    ids = iter(rng.sample(pool, sum(ARTICLE_COUNTS.values())))

    def make(article_type: str, product_id: int, fields: dict) -> DemoRow:
        spec = TYPE_SPECS[article_type]
        if article_type == "Casual Shoes":
            gender = fields.get("gender") or casual_genders.pop()
            colour = fields["baseColour"] if "baseColour" in fields else casual_colours.pop()
        else:
            gender = fields.get("gender") or _weighted(spec["genders"], rng)
            colour = fields.get("baseColour") or _weighted(spec["colours"], rng)
        brand = rng.choice(BRANDS)
        name = fields.get("name") or _product_name(brand, gender, colour,
                                                   rng.choice(spec["nouns"]), rng)
        if "{" in name:  # a quirk name written around the row's own gender and colour
            name = name.format(gender=rng.choice(GENDER_FORMS[gender]), colour=colour)
        return DemoRow(
            id=product_id, gender=gender, article_type=article_type, colour=colour,
            season=fields.get("season", _weighted(SEASONS, rng)),
            year=fields.get("year", str(_weighted(YEARS, rng))),
            usage=fields.get("usage", spec["usage"]), name=name,
            image=fields.get("image", "jpeg"), image_size=fields.get("image_size", IMAGE_SIZE),
        )

    rows = [make(t, i, f) for i, t, f in QUIRK_ROWS]
    for article_type, count in ARTICLE_COUNTS.items():
        rows += [make(article_type, next(ids), {}) for _ in range(count)]
    rng.shuffle(rows)
    plain = [k for k, r in enumerate(rows) if r.id not in reserved]
    for k in rng.sample(plain, EXTRA_USAGE_NA):
        rows[k] = replace(rows[k], usage="NA")
    return rows


# ---------------------------------------------------------------------------------------------
# Images


def _shade(rgb: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(max(0, min(255, round(c * factor))) for c in rgb)


def draw_product(row: DemoRow, rng: random.Random) -> Image.Image:
    """A flat product shot: the silhouette in the row's colour on an off-white background.

    Size and position vary per image, as they do in the real photos.
    """
    width, height = row.image_size
    background = rng.randint(250, 255)
    img = Image.new("RGB", (width, height), (background,) * 3)
    draw = ImageDraw.Draw(img)
    base = PALETTE.get(palette_name(row.colour), NEUTRAL_RGB)
    rgb = tuple(max(0, min(255, c + rng.randint(-12, 12))) for c in base)
    length = min(width, height * 1.3) * rng.uniform(0.55, 0.85)
    cx = width / 2 + rng.uniform(-0.08, 0.08) * width
    cy = height / 2 + rng.uniform(-0.08, 0.08) * height
    flip = rng.random() < 0.3

    def pt(x: float, y: float) -> tuple[float, float]:
        """Unit shoe coordinates (x 0 heel .. 1 toe, y 0 top .. 1 sole) -> pixels."""
        x = 1 - x if flip else x
        return cx + (x - 0.5) * length, cy + (y - 0.5) * length * 0.55

    def box(x0: float, y0: float, x1: float, y1: float) -> tuple[float, ...]:
        """A rectangle in unit coordinates -> pixel box with x0 <= x1 (flip swaps them)."""
        (a, b), (c, d) = pt(x0, y0), pt(x1, y1)
        return min(a, c), min(b, d), max(a, c), max(b, d)

    # a soft floor shadow, then the product
    draw.ellipse(box(0.05, 0.95, 0.98, 1.12), fill=(background - 14,) * 3)
    outline = _shade(rgb, 0.6) if sum(rgb) > 200 else _shade(rgb, 1.8)
    if row.article_type == "Tshirts":
        shirt = [(0.3, -0.6), (0.42, -0.55), (0.58, -0.55), (0.7, -0.6), (0.95, -0.3),
                 (0.85, -0.15), (0.75, -0.25), (0.75, 1.0), (0.25, 1.0), (0.25, -0.25),
                 (0.15, -0.15), (0.05, -0.3)]
        draw.polygon([pt(x, y) for x, y in shirt], fill=rgb, outline=outline, width=6)
        return img
    if row.article_type in ("Sandals", "Flip Flops"):
        draw.rounded_rectangle(box(0.0, 0.78, 1.0, 0.95), radius=int(length * 0.04), fill=_shade(rgb, 0.8))
        for x0 in (0.25, 0.55):
            draw.line([pt(x0, 0.8), pt(x0 + 0.12, 0.45), pt(x0 + 0.24, 0.8)], fill=rgb,
                      width=max(8, int(length * 0.03)))
        return img
    upper = [(0.0, 0.85), (0.0, 0.22), (0.1, 0.12), (0.3, 0.28), (0.45, 0.26), (0.62, 0.42),
             (0.84, 0.52), (0.97, 0.66), (1.0, 0.85)]
    if row.article_type == "Heels":
        upper = [(0.0, 0.3), (0.12, 0.25), (0.35, 0.45), (0.7, 0.6), (0.98, 0.7), (1.0, 0.85),
                 (0.6, 0.82), (0.1, 0.5)]
        draw.rectangle(box(0.02, 0.45, 0.09, 1.0), fill=_shade(rgb, 0.7))
    draw.polygon([pt(x, y) for x, y in upper], fill=rgb, outline=outline, width=6)
    if row.article_type != "Heels":
        sole = (235, 235, 230) if rng.random() < 0.6 else (60, 55, 50)
        draw.rounded_rectangle(box(-0.02, 0.82, 1.02, 1.0), radius=int(length * 0.03), fill=sole, outline=outline, width=4)
        for k in range(4):  # laces
            x = 0.42 + 0.07 * k
            draw.line([pt(x, 0.3 + 0.05 * k), pt(x + 0.05, 0.42 + 0.05 * k)],
                      fill=_shade(rgb, 0.5) if sum(rgb) > 200 else (230, 230, 230),
                      width=max(4, int(length * 0.008)))
    return img


def write_image(row: DemoRow, images_dir: Path, seed: int) -> None:
    """Write images/<id>.jpg for one row, with the row's image quirk."""
    if row.image is None:
        return
    path = images_dir / f"{row.id}.jpg"
    if row.image == "zero_byte":
        path.write_bytes(b"")
        return
    img = draw_product(row, random.Random(seed * 1_000_003 + row.id))
    if row.image == "png":
        rgba = img.convert("RGBA")
        rgba.putalpha(Image.eval(img.convert("L"), lambda v: 0 if v >= 248 else 255))
        rgba.save(path, format="PNG")
    elif row.image == "truncated":
        img.save(path, format="JPEG", quality=JPEG_QUALITY)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif row.image in ("L", "CMYK"):
        img.convert(row.image).save(path, format="JPEG", quality=JPEG_QUALITY)
    else:
        img.save(path, format="JPEG", quality=JPEG_QUALITY)


# ---------------------------------------------------------------------------------------------
# Catalogue and assets


def build_demo_catalog(out_dir: str | Path, seed: int = 0, workers: int | None = None) -> Path:
    """Generate the sample catalogue into `out_dir` (replaced as a whole).

    Built in a staging folder beside `out_dir` and renamed into place, so `out_dir` is
    either absent, the old copy, or complete (COMPLETE_MARKER written last).

    Args:
        out_dir: the catalogue folder to create (styles.csv + images/).
        seed: same seed -> byte-identical styles.csv and images.
        workers: image-writing threads (JPEG encoding releases the GIL); default CPU count.
    Returns:
        out_dir.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    images_dir = staging / "images"
    images_dir.mkdir(parents=True)
    rows = demo_rows(seed)
    lines = [HEADER] + [r.csv_line() for r in rows]
    (staging / "styles.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    unique = list({r.id: r for r in rows}.values())  # a duplicated id has one image
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        list(tqdm(pool.map(partial(write_image, images_dir=images_dir, seed=seed), unique),
                  total=len(unique), desc="drawing demo images", unit="img"))
    marker = {"generator_version": GENERATOR_VERSION, "seed": seed, "rows": len(rows)}
    (staging / COMPLETE_MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
    # Swap by renames: readers see the old copy or the new one, never a half-deleted folder.
    retired = out_dir.with_name(f".{out_dir.name}.retired-{os.getpid()}")
    if out_dir.exists():
        os.replace(out_dir, retired)
    os.replace(staging, out_dir)
    shutil.rmtree(retired, ignore_errors=True)
    return out_dir


def catalog_is_complete(catalog_dir: Path, seed: int = 0) -> bool:
    """True when `catalog_dir` holds a finished catalogue of this generator version and seed."""
    marker = Path(catalog_dir) / COMPLETE_MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except ValueError:
        return False
    return info.get("generator_version") == GENERATOR_VERSION and info.get("seed") == seed


def ensure_demo_assets(root: str | Path = DEMO_DIR, seed: int = 0) -> DemoAssets:
    """Build root/catalog and root/models/tiny-sd unless complete copies are there.

    Args:
        root: the demo data folder (default data/demo).
        seed: catalogue seed.
    Returns:
        DemoAssets with both folders.
    """
    from shoelib.tiny_sd import ensure_tiny_sd

    root = Path(root)
    catalog_dir = root / "catalog"
    if not catalog_is_complete(catalog_dir, seed):
        build_demo_catalog(catalog_dir, seed=seed)
    model_dir = ensure_tiny_sd(root / "models" / "tiny-sd")
    return DemoAssets(catalog_dir=catalog_dir, model_dir=Path(model_dir))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shoelib.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=DEMO_DIR, help=f"default: {DEMO_DIR}")
    args = parser.parse_args(argv)
    assets = ensure_demo_assets(args.root)
    n_rows = sum(1 for _ in (assets.catalog_dir / "styles.csv").open(encoding="utf-8")) - 1
    n_images = sum(1 for _ in (assets.catalog_dir / "images").iterdir())
    print(f"catalogue: {assets.catalog_dir} ({n_rows} rows, {n_images} image files)")
    print(f"tiny model: {assets.model_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
