"""The product catalogue: a lossless styles.csv reader, brands, category filter, image inventory.

The Kaggle "Fashion Product Images" `styles.csv` has a few lines whose product name holds an
unquoted comma, so they carry 11 or 12 fields instead of 10. `pd.read_csv` either fails on
them or (with `on_bad_lines="skip"`) silently drops them; `read_styles` joins the surplus
fields back into the name and reports the line numbers instead. `NA` is a real value of
`usage` and of some names, so only empty cells are missing.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import io
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd
from PIL import Image

from shoelib import checks
from shoelib.images import MIN_IMAGE_SIDE, check_min_side, size_problem

REQUIRED_COLUMNS = (
    "id", "gender", "masterCategory", "subCategory", "articleType",
    "baseColour", "season", "year", "usage", "productDisplayName",
)
NAME_COLUMN = "productDisplayName"

# Words that open the product part of a name ("<brand> <gender word> <product>"), lower-cased,
# after stripping a possessive ("Men's", "Girls'") and a "-suffix" ("Kids-Boys"). Taken from
# the real catalogue. Left out on evidence: "man"/"lady"/"jr" (Decathlon model names such as
# "Quechua Jawar 5.0 Man"), "baby"/"child" ("Plum Baby Lipstick", "Wild Child Nail Polish").
GENDER_WORDS = frozenset({
    "men", "mens", "women", "womens", "woman", "boys", "boy", "girls", "girl", "unisex",
    "kids", "kid", "infant", "infants", "teens", "teen", "youth", "junior", "juniors",
})

# A brand parsed only once or twice often swallowed model words because the gender word came
# late ("Red Tape Semi Casual Brown Men's Shoe"); the fallback does not trust those.
MIN_KNOWN_BRAND_ROWS = 3

# Placeholder names of test products, as found in the real catalogue (exact, case-insensitive).
TEST_NAME_PATTERN = re.compile(r"^(?:test dispname|rtv_loadtest|productdisplayname)$", re.I)

IMAGE_COLUMNS = (
    "image_path", "image_status", "image_width", "image_height",
    "image_mode", "image_format", "image_bytes", "image_error",
)


class CatalogError(ValueError):
    """A catalogue that cannot be read as asked (missing column, unknown category, bad value)."""


@dataclass(frozen=True)
class AnalysisConfig:
    """Notebook 01's parameters, checked on construction (before anything is read)."""

    data_root: str
    category: str
    output_root: str
    sample_seed: int
    top_n: int
    sample_grid_size: int
    min_image_side: int
    categories: tuple[str, ...] | list[str] = ()  # () = `category` alone

    def __post_init__(self) -> None:
        checks.text(self.data_root, "data_root", "data/raw/fashion-dataset", CatalogError)
        object.__setattr__(self, "categories",
                           checks.categories(self.category, self.categories, CatalogError))
        checks.text(self.output_root, "output_root", "data/demo", CatalogError)
        checks.random_seed(self.sample_seed, "sample_seed", CatalogError)
        checks.whole_number(self.top_n, "top_n", 1, 15, CatalogError)
        checks.whole_number(self.sample_grid_size, "sample_grid_size", 1, 12, CatalogError)
        check_min_side(self.min_image_side)


@dataclass(frozen=True)
class StylesRead:
    """What `read_styles` returns.

    frame: one row per data line of the file, in file order.
    repaired_lines: 1-based file line numbers whose field count was not the header's
        (surplus fields joined back into the name, or missing trailing fields left empty).
    rows_read: rows in `frame` (data lines; blank lines are not rows).
    short_lines: the subset of `repaired_lines` that had too few fields.
    latin1_lines: 1-based file line numbers that were not UTF-8 and were read as Latin-1.
    """

    frame: pd.DataFrame
    repaired_lines: tuple[int, ...]
    rows_read: int
    short_lines: tuple[int, ...] = ()
    latin1_lines: tuple[int, ...] = ()


@dataclass(frozen=True)
class DecodedText:
    """styles.csv as text. latin1_lines: 1-based lines that were not valid UTF-8 and were
    read as Latin-1 (every byte is a Latin-1 character, so nothing is lost or guessed away)."""

    text: str
    latin1_lines: tuple[int, ...] = ()


# ---------------------------------------------------------------------------------------------
# Reading


def read_styles(path: str | Path) -> StylesRead:
    """Read styles.csv without losing a row.

    Args:
        path: styles.csv, or the folder holding it.
    Returns:
        StylesRead. Columns keep the file's order; `id` is int64, `year` nullable Int64, the
        others pandas "string" with pd.NA for empty cells ("NA" stays the string "NA").
    Raises:
        FileNotFoundError: no such file.
        CatalogError: a required column is missing, an `id`/`year` cell is not an integer,
            or the file is UTF-16.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "styles.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no styles.csv at {path}; data_root must hold styles.csv and images/")
    decoded = decode_styles(path)
    reader = csv.reader(io.StringIO(decoded.text, newline=""))
    header = [h.strip() for h in next(reader, [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise CatalogError(
            f"{path} lacks required column(s) {', '.join(missing)}; "
            f"its header is {','.join(header)!r}, expected {','.join(REQUIRED_COLUMNS)!r}"
        )
    rows, line_numbers, repaired, short = _read_rows(reader, len(header),
                                                     header.index(NAME_COLUMN))
    frame = _to_frame(rows, header, line_numbers, path)
    return StylesRead(frame, tuple(repaired), len(frame), tuple(short), decoded.latin1_lines)


def decode_styles(path: str | Path) -> DecodedText:
    """The text of styles.csv, whatever a spreadsheet did to its encoding.

    A UTF-8 byte-order mark (Excel's "CSV UTF-8") is dropped. A line that is not valid UTF-8
    (one cell saved as Windows-1252 / Latin-1) is read as Latin-1 and reported, not
    dropped; the fix is to re-save the file as UTF-8.

    Raises:
        CatalogError: the file is UTF-16 (Excel's "Unicode text").
    """
    data = Path(path).read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise CatalogError(f"{path} is UTF-16 text; re-save it as UTF-8 CSV")
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return DecodedText(data.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    # Line by line: "\n" is never part of a multi-byte UTF-8 character, so the split is exact.
    lines, latin1 = [], []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(raw.decode("latin-1"))
            latin1.append(number)
    return DecodedText("\n".join(lines), tuple(latin1))


def _read_rows(reader, n_fields: int, name_at: int):
    """Rows with exactly `n_fields` fields; the line number of each; repaired/short lines."""
    rows, line_numbers, repaired, short = [], [], [], []
    for fields in reader:
        if not fields:  # blank line: not a row
            continue
        line = reader.line_num  # physical line where this record ends (1-based, header = 1)
        surplus = len(fields) - n_fields
        if surplus > 0:
            # Only the name holds commas: its pieces are the fields name_at .. name_at+surplus.
            name = ",".join(fields[name_at:name_at + surplus + 1])
            fields = fields[:name_at] + [name] + fields[name_at + surplus + 1:]
            repaired.append(line)
        elif surplus < 0:
            fields = fields + [""] * -surplus
            repaired.append(line)
            short.append(line)
        rows.append(fields)
        line_numbers.append(line)
    return rows, line_numbers, repaired, short


def _to_frame(rows: list[list[str]], header: list[str], line_numbers: list[int],
              path: Path) -> pd.DataFrame:
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in header]
    data = {}
    for name, values in zip(header, columns, strict=True):
        series = pd.Series(values, dtype="string")
        data[name] = series.mask(series.str.strip() == "")  # empty -> pd.NA; "NA" stays
    frame = pd.DataFrame(data)
    frame["id"] = _integers(frame["id"], "id", line_numbers, path, nullable=False)
    frame["year"] = _integers(frame["year"], "year", line_numbers, path, nullable=True)
    return frame


def _integers(values: pd.Series, column: str, line_numbers: list[int], path: Path,
              nullable: bool) -> pd.Series:
    numbers = pd.to_numeric(values.str.strip(), errors="coerce")
    bad = numbers.isna() & (values.notna() | (not nullable))
    bad |= numbers.notna() & (numbers % 1 != 0)
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        raise CatalogError(
            f"{path} line {line_numbers[i]}: {column}={values.iloc[i]!r} is not an integer "
            f"({int(bad.sum())} such cells); fix the file or drop those lines"
        )
    return numbers.astype("Int64" if nullable else "int64")


# ---------------------------------------------------------------------------------------------
# Brands


def parse_brand(name: str | None, gender: str | None = None) -> str | None:
    """The brand: the words of the product name before its first gender word.

    "United Colors of Benetton Men Solid Black Shoes" -> "United Colors of Benetton"
    (the first word alone, "United", is wrong for multi-word brands). A gender word in first
    position belongs to the brand ("Kids Ville Girls Pink Top" -> "Kids Ville").

    Args:
        name: productDisplayName; None/missing, "NA" and blank give None.
        gender: the row's gender value; also accepted as a gender word, so a catalogue with
            a gender value outside GENDER_WORDS still splits.
    Returns:
        The brand, or None when the name has no gender word after its first word
        (`brands` then falls back to a known brand prefix or the first word).
    """
    if name is None or name is pd.NA or not isinstance(name, str):
        return None
    words = name.split()
    if not words or name.strip() == "NA":
        return None
    own = gender.strip().lower() if isinstance(gender, str) else None
    for i in range(1, len(words)):
        word = _gender_form(words[i])
        if word in GENDER_WORDS or (own is not None and word == own):
            return " ".join(words[:i])
    return None


def _gender_form(word: str) -> str:
    """"Men's" -> "men", "Girls'" -> "girls", "Kids-Boys" -> "kids", "Women." -> "women"."""
    word = word.lower().split("-")[0].rstrip(".,;:")
    return re.sub(r"'s$|'$", "", word)


def brand_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The brand of every row and where it came from, aligned with `frame`.

    Names without a gender word (about 7% of the real catalogue, 14 of 2,846 Casual Shoes)
    take the longest brand found at least MIN_KNOWN_BRAND_ROWS times elsewhere in the
    catalogue that prefixes the name ("Red Tape Semi Casual Brown Shoe" -> "Red Tape"),
    else the name's first word ("Playboy"). "NA" and empty names stay missing.

    Returns:
        DataFrame with `brand` ("string") and `brand_source`: 'gender word' | 'known brand' |
        'first word' | 'no name'.
    """
    names = frame[NAME_COLUMN].astype("object").where(frame[NAME_COLUMN].notna(), None)
    genders = frame["gender"].astype("object").where(frame["gender"].notna(), None)
    parsed = [parse_brand(n, g) for n, g in zip(names, genders, strict=True)]
    seen = pd.Series([b for b in parsed if b], dtype="object").value_counts()
    known = sorted(seen.index[seen >= MIN_KNOWN_BRAND_ROWS], key=len, reverse=True)
    by_first_word: dict[str, list[str]] = {}
    for brand in known:  # longest first within each first word
        by_first_word.setdefault(brand.split()[0].lower(), []).append(brand)
    out, sources = [], []
    for name, brand in zip(names, parsed, strict=True):
        source = "gender word"
        if brand is None:
            if not isinstance(name, str) or name.strip() in ("", "NA"):
                source = "no name"
            else:
                brand = _known_prefix(name, by_first_word)
                source = "known brand" if brand else "first word"
                brand = brand or name.split()[0]
        out.append(brand)
        sources.append(source)
    return pd.DataFrame({"brand": pd.Series(out, index=frame.index, dtype="string"),
                         "brand_source": pd.Series(sources, index=frame.index, dtype="string")})


def brands(frame: pd.DataFrame) -> pd.Series:
    """The brand of every row ("string" Series named `brand`); see `brand_table`."""
    return brand_table(frame)["brand"]


def _known_prefix(name: str, by_first_word: dict[str, list[str]]) -> str | None:
    lowered = name.lower()
    for brand in by_first_word.get(name.split()[0].lower(), []):
        b = brand.lower()
        # "U.S. Polo Assn.Men Brown Shoes" has no space after the brand: accept a prefix
        # followed by anything but a letter continuing the same word.
        if lowered.startswith(b) and (len(name) == len(b) or not name[len(b)].islower()):
            return name[:len(brand)]
    return None


# ---------------------------------------------------------------------------------------------
# Category, tables, quality


def select_category(frame: pd.DataFrame, category: str) -> pd.DataFrame:
    """Rows whose articleType is `category` (exact match), index reset.

    Raises:
        CatalogError: no row has that articleType; the message lists close matches.
    """
    types = frame["articleType"].dropna().unique().tolist()
    if category not in types:
        by_lower = {t.lower(): t for t in types}  # "casual shoes" should find "Casual Shoes"
        close = [by_lower[m] for m in difflib.get_close_matches(category.lower(), by_lower, n=5)]
        hint = f"close matches: {', '.join(close)}" if close else "no close match"
        raise CatalogError(
            f"category={category!r} is no articleType of this catalogue ({len(types)} exist); "
            f"{hint}"
        )
    return frame[frame["articleType"] == category].reset_index(drop=True)


def select_categories(frame: pd.DataFrame, categories: Sequence[str]
                      ) -> tuple[pd.DataFrame, dict[str, str]]:
    """Rows of every listed articleType, in list order, index reset; and the types left out.

    A type with no row is left out with its reason (the others go on), so one typo in a
    list of seven does not stop the run.

    Returns:
        (rows, {type: why it was left out}).
    Raises:
        CatalogError: none of the listed types has a row (the first one's error).
    """
    kept, skipped, first_error = [], {}, None
    for category in categories:
        try:
            kept.append(select_category(frame, category))
        except CatalogError as err:
            skipped[category] = str(err)
            first_error = first_error or err
    if not kept:
        raise first_error
    return pd.concat(kept, ignore_index=True), skipped


def compare_categories(rows: pd.DataFrame, catalogue_rows: int) -> pd.DataFrame:
    """One line per articleType of `rows` (01's inventoried category rows): its size, share
    of the catalogue, readable photos, colours, top colour and gender mix."""
    lines = {}
    for category, group in rows.groupby("articleType", sort=False):
        colours = group["baseColour"].astype("object").fillna("<missing>").value_counts()
        genders = group["gender"].astype("object").fillna("<missing>").value_counts(normalize=True)
        lines[category] = {
            "rows": len(group), "share of catalogue": len(group) / catalogue_rows,
            "readable photos": int((group["image_status"] == "ok").sum()),
            "colours": len(colours), "top colour": f"{colours.index[0]} ({colours.iloc[0] / len(group):.0%})",
            "gender": ", ".join(f"{g} {s:.0%}" for g, s in genders.head(3).items()),
        }
    return pd.DataFrame.from_dict(lines, orient="index")


def share_table(values: pd.Series, top_n: int | None = None, other: str = "Other") -> pd.DataFrame:
    """Counts and shares of a column, largest first; missing values count as "<missing>".

    Args:
        values: a column.
        top_n: keep the top_n values and sum the rest into one `other` row (None: keep all).
    Returns:
        DataFrame indexed by value with columns `count` and `share` (0..1).
    """
    counts = values.astype("object").fillna("<missing>").value_counts()
    if top_n is not None and len(counts) > top_n:
        counts = pd.concat([counts.iloc[:top_n], pd.Series({other: counts.iloc[top_n:].sum()})])
    table = pd.DataFrame({"count": counts.astype(int)})
    table["share"] = table["count"] / max(int(table["count"].sum()), 1)
    table.index.name = values.name
    return table


def missing_by_column(frame: pd.DataFrame) -> pd.DataFrame:
    """Per column: empty cells (missing) and cells holding the literal string "NA"."""
    na_literal = {c: int((frame[c].astype("object") == "NA").sum()) for c in frame.columns}
    return pd.DataFrame({
        "empty": frame.isna().sum().astype(int),
        "NA_string": pd.Series(na_literal),
    })


def quality_flags(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-row data-quality flags, aligned with `frame`.

    Returns:
        DataFrame with `is_test_row` (placeholder names, TEST_NAME_PATTERN),
        `duplicated_id` (every row of an id that occurs more than once),
        `empty_fields` (names of the row's required columns that are empty, comma-joined,
        "" when none) and `n_empty` (how many).
    """
    names = frame[NAME_COLUMN].astype("object")
    is_test = names.map(lambda n: isinstance(n, str) and bool(TEST_NAME_PATTERN.match(n.strip())))
    present = [c for c in REQUIRED_COLUMNS if c in frame.columns]
    empty = frame[present].isna().to_numpy()
    columns = pd.Index(present)
    empty_fields = [""] * len(frame)
    for i in empty.any(axis=1).nonzero()[0]:  # few rows: join names only where needed
        empty_fields[i] = ",".join(columns[empty[i]])
    return pd.DataFrame({
        "is_test_row": is_test.astype(bool).to_numpy(),
        "duplicated_id": frame["id"].duplicated(keep=False).to_numpy(),
        "empty_fields": pd.Series(empty_fields, index=frame.index, dtype="string"),
        "n_empty": empty.sum(axis=1).astype(int),
    }, index=frame.index)


# ---------------------------------------------------------------------------------------------
# Image inventory


@dataclass(frozen=True)
class ImageProbe:
    """What one image file is: status 'ok' | 'missing' | 'unreadable', plus its properties."""

    path: str | None
    status: str
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    format: str | None = None
    n_bytes: int | None = None
    error: str | None = None


def probe_image(path: str | Path, draft_side: int = 256,
                min_side: int = MIN_IMAGE_SIDE) -> ImageProbe:
    """Open and fully decode one image file.

    A file PIL can open is not necessarily readable: a truncated JPEG opens (the header is
    intact) and fails only when decoded, so every file is decoded to the end. JPEGs are
    decoded at reduced scale (`Image.draft`, DCT scaling in libjpeg), which reads the whole
    stream at a fraction of the cost of a 1800x2400 decode.

    Args:
        path: the image file.
        draft_side: JPEGs are decoded at the smallest 1/2^k scale whose sides stay >= this.
        min_side: a photo whose shorter side is below this is 'unreadable' (too small to
            show a product), with the reason as its error.
    Returns:
        ImageProbe; width/height/mode are the file's own, not the draft's.
    """
    path = Path(path)
    if not path.is_file():
        return ImageProbe(None, "missing")
    n_bytes = path.stat().st_size
    header: tuple = (None, None, None, None)  # kept for a file whose header opens but data fails
    try:
        with Image.open(path) as img:
            header = (img.width, img.height, img.mode, img.format)
            if img.format == "JPEG":
                img.draft(img.mode, (draft_side, draft_side))
            img.load()
    except Exception as err:  # any decoder failure means "unreadable"
        # the file's name, not the machine's folder: the error is shown in shared reports
        message = str(err).replace(str(path), path.name)
        return ImageProbe(str(path), "unreadable", *header, n_bytes,
                          error=f"{type(err).__name__}: {message}")
    if problem := size_problem(header[0], header[1], min_side):
        return ImageProbe(str(path), "unreadable", *header, n_bytes, error=problem)
    return ImageProbe(str(path), "ok", *header, n_bytes)


def image_ids_on_disk(images_dir: str | Path) -> set[int]:
    """Ids with an <id>.jpg file in `images_dir` (a listing, nothing opened); empty if absent."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        return set()
    return {int(e.name[:-4]) for e in os.scandir(images_dir)
            if e.name.endswith(".jpg") and e.name[:-4].isdigit()}


def image_path_for(images_dir: str | Path, product_id: int) -> Path:
    """Kaggle layout: images/<id>.jpg."""
    return Path(images_dir) / f"{int(product_id)}.jpg"


def inventory_images(frame: pd.DataFrame, images_dir: str | Path,
                     workers: int | None = None, progress: bool = True,
                     min_side: int = MIN_IMAGE_SIDE) -> pd.DataFrame:
    """A copy of `frame` with IMAGE_COLUMNS describing each row's image file.

    Args:
        frame: rows with an `id` column.
        images_dir: the catalogue's images/ folder (may be absent: every image is 'missing').
        min_side: `min_image_side`; smaller photos are 'unreadable' (see probe_image).
        workers: decoding threads (Pillow releases the GIL while decoding);
            default: the CPU count.
        progress: show a tqdm progress bar.
    Returns:
        The copy; image_path is None for a missing file; sizes are nullable Int64.
    """
    from tqdm.auto import tqdm

    probe = partial(probe_image, min_side=check_min_side(min_side))
    workers = workers or os.cpu_count() or 1
    paths = [image_path_for(images_dir, i) for i in frame["id"]]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        probes = list(tqdm(pool.map(probe, paths), total=len(paths),
                           desc="decoding images", unit="img", disable=not progress))
    out = frame.copy()
    out["image_path"] = pd.Series([p.path for p in probes], index=out.index, dtype="object")
    out["image_status"] = pd.Series([p.status for p in probes], index=out.index, dtype="string")
    for column, attr in (("image_width", "width"), ("image_height", "height"),
                         ("image_bytes", "n_bytes")):
        out[column] = pd.Series([getattr(p, attr) for p in probes], index=out.index,
                                dtype="Int64")
    for column, attr in (("image_mode", "mode"), ("image_format", "format"),
                         ("image_error", "error")):
        out[column] = pd.Series([getattr(p, attr) for p in probes], index=out.index,
                                dtype="string")
    return out
