"""The embedded default: a sample catalogue of real photos in the Kaggle layout, and the
pretrained model.

    python -m shoelib.demo [--root DIR]     # builds DIR/catalog from assets/photos

The catalogue (`styles.csv` + `images/<id>.jpg`) is made of the real product photos shipped in
`assets/photos/` (224 px, with their own styles.csv lines, so captions describe the photos):
every Casual Shoes photo, the photos held out from pretraining, and other footwear. Around
them it adds every quirk of the real file and of real image folders (QUIRK_IDS): unquoted
commas, "NA" values, test rows, a duplicated id, missing, truncated, empty, grey, CMYK, RGBA
and odd-sized images. The model is `assets/models/catalog-sd-64` (see its README.md), a small
Stable Diffusion-layout model pretrained on real catalogue photos without Casual Shoes.
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

import pandas as pd
from PIL import Image

from shoelib.paths import ASSETS_DIR, DEMO_DIR

# Bump when the generated catalogue changes, so `ensure_demo_assets` rebuilds an old copy.
GENERATOR_VERSION = 2
COMPLETE_MARKER = ".complete"  # written last inside the catalogue folder
HEADER = ("id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,"
          "productDisplayName")
JPEG_QUALITY = 85
PHOTOS_DIR = ASSETS_DIR / "photos"
MODEL_DIR = ASSETS_DIR / "models" / "catalog-sd-64"
ENCODER_DIR = ASSETS_DIR / "models" / "catalog-encoder"

# Deliberate quirks, by fixed id (the same for every seed; no real id is this high). Each
# reproduces one of the real Kaggle file or a failure a real image folder has.
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
    "odd_size": (58024, 58025),                # 1080x1440 and 2400x1800 canvases, not square
}
ODD_SIZES = ((1080, 1440), (2400, 1800))  # canvas sizes of the odd_size quirk rows (w, h)
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
    (58024, "Casual Shoes", {"image_size": ODD_SIZES[0]}),
    (58025, "Casual Shoes", {"image_size": ODD_SIZES[1]}),
)
EXTRA_USAGE_NA = 4  # further random rows whose usage is "NA" (the real file has 316)


@dataclass(frozen=True)
class DemoRow:
    """One styles.csv line: the 10 Kaggle fields, the photo it takes, and its image quirk."""

    fields: tuple[str, ...]           # id, gender, masterCategory, ..., productDisplayName
    photo_id: int | None              # shipped photo that becomes images/<id>.jpg
    image: str | None = "jpeg"        # 'jpeg' | None (missing) | 'truncated' | 'zero_byte' | 'L' | ...
    image_size: tuple[int, int] | None = None  # pad the photo onto a canvas of this size

    @property
    def id(self) -> int:
        return int(self.fields[0])

    @property
    def article_type(self) -> str:
        return self.fields[4]

    def csv_line(self) -> str:
        """Written the way the Kaggle file is: no quoting, so a comma in the name splits it."""
        return ",".join(self.fields)


@dataclass(frozen=True)
class DemoAssets:
    catalog_dir: Path  # styles.csv + images/
    model_dir: Path    # the pretrained SD-layout pipeline
    encoder_dir: Path  # the image encoder of the demo's fidelity measures


# ---------------------------------------------------------------------------------------------
# Rows: the shipped real rows, with the quirks applied to a few of them


FIELD = {name: i for i, name in enumerate(HEADER.split(","))}


def shipped_rows(photos_dir: Path = PHOTOS_DIR) -> list[tuple[str, ...]]:
    """The shipped real styles.csv rows, 10 fields each (a name's unquoted commas rejoined)."""
    rows = []
    for line in (photos_dir / "styles.csv").read_text(encoding="utf-8").splitlines()[1:]:
        parts = line.split(",")
        rows.append(tuple(parts[:9]) + (",".join(parts[9:]),))
    return rows


def demo_rows(seed: int = 0, photos_dir: Path = PHOTOS_DIR) -> list[DemoRow]:
    """Every row of the demo catalogue, in file order (shuffled, as the real file is).

    The shipped real rows, each with its own photo; the quirk rows of QUIRK_ROWS each take
    over one real row of their article type (lowest unused id first, so the same for every
    seed), keeping its photo and its labels (so captions still describe the photo) under
    the quirk's id, with the quirk applied.

    Args:
        seed: drives the row order and the EXTRA_USAGE_NA rows.
    """
    rng = random.Random(seed)
    real = sorted(shipped_rows(photos_dir), key=lambda f: int(f[0]))
    taken: set[int] = set()
    rows = []
    for quirk_id, article_type, fields in QUIRK_ROWS:
        if quirk_id in taken:  # the duplicated id: a second line identical to the first
            rows.append(next(r for r in rows if r.id == quirk_id))
            continue
        source = next(f for f in real if f[4] == article_type and int(f[0]) not in taken)
        taken.update({int(source[0]), quirk_id})
        values = list(source)
        values[0] = str(quirk_id)
        gender, colour = source[FIELD["gender"]], source[FIELD["baseColour"]]
        for key, value in fields.items():
            if key in FIELD:
                values[FIELD[key]] = value
            elif key == "name":  # a quirk name written around the row's own gender and colour
                values[FIELD["productDisplayName"]] = value.format(gender=gender, colour=colour)
        rows.append(DemoRow(tuple(values), int(source[0]), image=fields.get("image", "jpeg"),
                            image_size=fields.get("image_size")))
    rows += [DemoRow(f, int(f[0])) for f in real if int(f[0]) not in taken]
    rng.shuffle(rows)
    reserved = {i for i, _, _ in QUIRK_ROWS}
    plain = [k for k, r in enumerate(rows) if r.id not in reserved]
    for k in rng.sample(plain, EXTRA_USAGE_NA):
        values = list(rows[k].fields)
        values[FIELD["usage"]] = "NA"
        rows[k] = replace(rows[k], fields=tuple(values))
    return rows


# ---------------------------------------------------------------------------------------------
# Images


def write_image(row: DemoRow, images_dir: Path, photos_dir: Path = PHOTOS_DIR) -> None:
    """Write images/<id>.jpg for one row: its shipped photo, with the row's image quirk."""
    if row.image is None:
        return
    path = images_dir / f"{row.id}.jpg"
    if row.image == "zero_byte":
        path.write_bytes(b"")
        return
    source = photos_dir / "images" / f"{row.photo_id}.jpg"
    if row.image == "jpeg" and row.image_size is None:
        shutil.copyfile(source, path)  # the real bytes, untouched
        return
    with Image.open(source) as photo:
        img = photo.convert("RGB")
    if row.image_size is not None:
        img = _on_canvas(img, row.image_size)
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


def _on_canvas(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The photo scaled to fit `size` (w, h) and centred on white, as an odd-sized original."""
    scale = min(size[0] / img.width, size[1] / img.height)
    fitted = img.resize((round(img.width * scale), round(img.height * scale)),
                        Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", size, (255, 255, 255))
    canvas.paste(fitted, ((size[0] - fitted.width) // 2, (size[1] - fitted.height) // 2))
    return canvas


# ---------------------------------------------------------------------------------------------
# The shipped photos: how they were chosen


FOOTWEAR = ("Sports Shoes", "Formal Shoes", "Sandals", "Flip Flops", "Heels", "Flats")


def select_demo_photos(data_root: str | Path, holdout_csv: str | Path, out_dir: str | Path = PHOTOS_DIR,
                       *, lora_category: str = "Casual Shoes", per_footwear_type: int = 60,
                       seed: int = 0) -> Path:
    """Copy the photos the demo ships, with their own styles.csv lines, into `out_dir`.

    - every photo of `lora_category` (what the demo's LoRA learns; the base model never saw it);
    - every photo held out from pretraining (`holdout_csv`, written by `shoelib.pretrain`):
      04 prompts the base model with their captions and compares;
    - up to `per_footwear_type` photos of each other footwear type (held-out ones first):
      the negatives of 07's article-type recogniser and the other demo categories.
    """
    data_root, out_dir = Path(data_root), Path(out_dir)
    lines = (data_root / "styles.csv").read_text(encoding="utf-8").splitlines()
    by_id = {int(line.split(",", 1)[0]): line for line in lines[1:]}
    on_disk = {int(p.stem) for p in (data_root / "images").glob("*.jpg") if p.stem.isdigit()}
    types = {i: line.split(",")[4] for i, line in by_id.items()}
    holdout = [int(i) for i in pd.read_csv(holdout_csv)["id"]]
    chosen = [i for i in sorted(on_disk) if types.get(i) == lora_category] + holdout
    rng = random.Random(seed)
    for article_type in FOOTWEAR:
        held = [i for i in holdout if types.get(i) == article_type]
        rest = sorted(i for i in on_disk if types.get(i) == article_type and i not in held)
        chosen += rng.sample(rest, max(0, min(len(rest), per_footwear_type - len(held))))
    chosen = sorted(set(chosen))
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    for product_id in chosen:
        shutil.copyfile(data_root / "images" / f"{product_id}.jpg",
                        out_dir / "images" / f"{product_id}.jpg")
    text = "\n".join([lines[0]] + [by_id[i] for i in chosen]) + "\n"
    (out_dir / "styles.csv").write_text(text, encoding="utf-8")
    return out_dir


# ---------------------------------------------------------------------------------------------
# Catalogue and assets


def build_demo_catalog(out_dir: str | Path, seed: int = 0, workers: int | None = None) -> Path:
    """Build the sample catalogue into `out_dir` (replaced as a whole).

    Built in a staging folder beside `out_dir` and renamed into place, so `out_dir` is
    either absent, the old copy, or complete (COMPLETE_MARKER written last).

    Args:
        out_dir: the catalogue folder to create (styles.csv + images/).
        seed: same seed -> byte-identical styles.csv and images.
        workers: image-writing threads (JPEG encoding releases the GIL); default CPU count.
        (The photos come from PHOTOS_DIR.)
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
        list(tqdm(pool.map(partial(write_image, images_dir=images_dir), unique),
                  total=len(unique), desc="demo images", unit="img", mininterval=2))
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
    """Build root/catalog unless a complete copy is there; name the shipped model folders.

    Args:
        root: the demo data folder (default data/demo).
        seed: catalogue seed.
    Returns:
        DemoAssets with the catalogue, model and encoder folders.
    """
    root = Path(root)
    catalog_dir = root / "catalog"
    if not catalog_is_complete(catalog_dir, seed):
        build_demo_catalog(catalog_dir, seed=seed)
    return DemoAssets(catalog_dir=catalog_dir, model_dir=MODEL_DIR, encoder_dir=ENCODER_DIR)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shoelib.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=DEMO_DIR, help=f"default: {DEMO_DIR}")
    parser.add_argument("--select-photos", nargs=2, metavar=("DATA_ROOT", "HOLDOUT_CSV"),
                        help="re-select the shipped photos into assets/photos from a Kaggle-layout "
                             "folder and the holdout.csv that `python -m shoelib.pretrain` wrote")
    args = parser.parse_args(argv)
    if args.select_photos:
        out = select_demo_photos(*args.select_photos)
        print(f"shipped photos: {out} ({len(shipped_rows(out))} rows)")
        return 0
    assets = ensure_demo_assets(args.root)
    n_rows = sum(1 for _ in (assets.catalog_dir / "styles.csv").open(encoding="utf-8")) - 1
    n_images = sum(1 for _ in (assets.catalog_dir / "images").iterdir())
    print(f"catalogue: {assets.catalog_dir} ({n_rows} rows, {n_images} image files)")
    print(f"model: {assets.model_dir}")
    print(f"image encoder: {assets.encoder_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
