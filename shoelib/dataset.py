"""From the analysed catalogue to a training set: splits, captions, exports.

    plan = plan_dataset(category_table, DatasetConfig(category="Casual Shoes"))
    result = export_dataset(plan, RunPaths.from_param(root).processed("Casual Shoes"), config)
    train = read_split(result.out_dir / "train")

Layout written under processed/<category slug>/:

    train/ val/ test/        <id>.png (size x size, or its aspect bucket with aspect_buckets),
                             <id>.txt (caption, kohya sidecar),
                             masks/<id>.png (foreground mask, 255 = product),
                             metadata.jsonl (Hugging Face `imagefolder`: file_name, text,
                             mask_file_name, ...)
    metadata.json            split counts, colour counts per split, parameters, skipped images
    README.md                dataset card (how to load it, how to train on it)
    prepare_manifest.jsonl   what was prepared from which source file (resuming)

A split folder is what diffusers' train_text_to_image_lora.py reads with
`--train_data_dir <split folder>` (it loads `imagefolder` and captions from column `text`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from shoelib import checks, report
from shoelib.captions import DEFAULT_TEMPLATE, FIELDS, check_template, fill, is_missing
from shoelib.images import (
    MASKS_DIR,
    MIN_IMAGE_SIDE,
    PREPARATION_VERSION,
    PrepareConfig,
    bucket_step,
    mask_path,
    open_image,
    padding_share,
    prepare_box,
    prepare_images,
    size_problem,
    write_mask,
)
from shoelib.io import atomic_path, folder_lock, remove_temp_files, write_json, write_text
from shoelib.paths import resolve

SPLITS = ("train", "val", "test")
HF_SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}
OTHER = "Other"
UNKNOWN_COLOUR = "Unknown"  # stratification label of rows without a colour
METADATA_JSONL = "metadata.jsonl"
MANIFEST = "prepare_manifest.jsonl"

# placeholder -> the catalogue column that fills it (see shoelib.captions)
CAPTION_COLUMNS = {
    "colour": "baseColour", "article": "articleType", "season": "season", "gender": "gender",
    "brand": "brand", "usage": "usage", "year": "year", "name": "productDisplayName",
}
# Attributes copied into metadata.jsonl (column there -> catalogue column).
EXPORT_ATTRIBUTES = {
    "id": "id", "colour": "baseColour", "gender": "gender", "season": "season",
    "usage": "usage", "year": "year", "brand": "brand",
    "productDisplayName": "productDisplayName",
}
IMAGE_REASONS = {"missing": "image missing", "unreadable": "image unreadable"}


class DatasetError(ValueError):
    """A dataset request that cannot be met as given (bad parameter, empty selection)."""


class MissingInputError(FileNotFoundError):
    """An input another step should have written is absent."""


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class SplitConfig:
    """How rows are split.

    fractions: train, val, test shares (sum 1).
    min_class_rows: colours with fewer usable rows share one stratum, "Other".
    seed: random_state of the split (02's split_seed: no other step's seed moves the split).
    column: the stratification column.
    """

    fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)
    min_class_rows: int = 10
    seed: int = 42
    column: str = "baseColour"

    def __post_init__(self) -> None:
        shares = self.fractions
        if not isinstance(shares, list | tuple) or not all(
                isinstance(f, int | float) and not isinstance(f, bool) for f in shares):
            raise DatasetError(f"split_fractions={shares!r} must be a list of three shares for "
                               "train, val, test; e.g. [0.70, 0.15, 0.15]")
        values = tuple(float(f) for f in shares)
        object.__setattr__(self, "fractions", values)
        if len(values) != 3 or any(f < 0 for f in values) or values[0] <= 0:
            raise DatasetError(
                f"split_fractions={list(self.fractions)} must be three shares >= 0 "
                "(train > 0) for train, val, test; e.g. [0.70, 0.15, 0.15]")
        if not math.isclose(sum(values), 1.0, abs_tol=1e-6):
            raise DatasetError(
                f"split_fractions={list(values)} sum to {sum(values):g}, not 1; "
                "e.g. [0.70, 0.15, 0.15]")
        checks.whole_number(self.min_class_rows, "min_class_rows", 1, 10, DatasetError)
        checks.random_seed(self.seed, "split_seed", DatasetError)


@dataclass(frozen=True)
class DatasetConfig:
    """Everything `plan_dataset` and `export_dataset` need.

    category: the articleType (names the output folder).
    image_size: side of the square PNGs (px).
    caption_template: see `shoelib.captions` (its clauses without a value are dropped).
    split: SplitConfig.
    workers: image-preparation processes; 0 = one per CPU.
    png_compress_level: zlib level 0-9 (pixels identical; 1 is fast, 6 smaller).
    min_image_side: photos whose shorter side is below this (px) are skipped as unreadable.
    aspect_buckets: each photo at its aspect bucket of about image_size² pixels
        (`shoelib.images.bucket_sizes`, e.g. 448x576 for 3:4 at 512) instead of the square.
    """

    category: str
    image_size: int = 512
    caption_template: str = DEFAULT_TEMPLATE
    split: SplitConfig = field(default_factory=SplitConfig)
    workers: int = 0
    png_compress_level: int = 1
    min_image_side: int = MIN_IMAGE_SIDE
    aspect_buckets: bool = False

    def __post_init__(self) -> None:
        checks.text(self.category, "category", "Casual Shoes", DatasetError)
        checks.whole_number(self.image_size, "image_size", 8, 512, DatasetError)
        check_template(self.caption_template)
        checks.whole_number(self.workers, "prepare_workers", 0, 0, DatasetError)
        self.prepare_config()  # validates png_compress_level, min_image_side, aspect_buckets

    def prepare_config(self) -> PrepareConfig:
        return PrepareConfig(size=self.image_size, compress_level=self.png_compress_level,
                             min_side=self.min_image_side, masks=True,
                             buckets=self.aspect_buckets)

    def manifest_params(self) -> dict[str, Any]:
        """What a prepared image depends on besides its source file: a finished image whose
        manifest entry records other values is prepared again. Without buckets the entry is
        what it was before buckets existed, so those images are kept."""
        params = {"image_size": self.image_size, "preparation_version": PREPARATION_VERSION}
        return {**params, "aspect_buckets": True} if self.aspect_buckets else params

    def parameters(self) -> dict[str, Any]:
        """The settings as recorded in metadata.json."""
        return {
            "category": self.category, "image_size": self.image_size,
            "caption_template": self.caption_template,
            "split_fractions": list(self.split.fractions),
            "min_class_rows": self.split.min_class_rows, "split_seed": self.split.seed,
            "stratify_column": self.split.column, "png_compress_level": self.png_compress_level,
            "min_image_side": self.min_image_side, "preparation_version": PREPARATION_VERSION,
            "aspect_buckets": self.aspect_buckets,
        }


# ---------------------------------------------------------------------------------------------
# Input


def load_category_table(path: str | Path) -> pd.DataFrame:
    """The category table 01_analysis writes (analysis/category.parquet).

    Raises:
        MissingInputError: the file is absent.
        DatasetError: it lacks a column this step needs.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(
            f"{path} does not exist; run 01_analysis first with the same output_root")
    table = pd.read_parquet(path)
    needed = {"id", "image_path", "image_status", "articleType", "baseColour"}
    missing = sorted(needed - set(table.columns))
    if missing:
        raise DatasetError(
            f"{path} lacks column(s) {', '.join(missing)}; rerun 01_analysis to rewrite it")
    return table


def select_usable(table: pd.DataFrame, min_image_side: int = MIN_IMAGE_SIDE
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows whose image can be prepared, and the others with the reason.

    Args:
        table: rows with `id`, `image_status` ('ok' | 'missing' | 'unreadable'), `image_path`,
            optionally `image_width`/`image_height` and `is_test_row` (placeholder products
            such as "test dispName").
        min_image_side: an 'ok' photo whose shorter side is below this is unreadable here
            too, when 01 ran with a smaller limit.
    Returns:
        (usable, skipped): usable keeps table's columns; skipped has `id`, `reason`
        ('image missing', 'image unreadable', 'test row', 'duplicate id'), `detail`.
    """
    status = table["image_status"].astype("object").fillna("missing")
    detail = (table["image_error"].astype("object") if "image_error" in table.columns
              else pd.Series(None, index=table.index, dtype="object"))
    if {"image_width", "image_height"} <= set(table.columns):
        sizes = zip(table["image_width"], table["image_height"], strict=True)
        small = pd.Series([size_problem(int(w), int(h), min_image_side)
                           if s == "ok" and pd.notna(w) and pd.notna(h) else None
                           for s, (w, h) in zip(status, sizes, strict=True)],
                          index=table.index, dtype="object")
        status = status.where(small.isna(), "unreadable")
        detail = detail.where(small.isna(), small)
    reason = status.map(lambda s: IMAGE_REASONS.get(s, f"image {s}") if s != "ok" else None)
    if "is_test_row" in table.columns:
        reason = reason.where(~table["is_test_row"].fillna(False).astype(bool), "test row")
    # A second row of an id would write the same <id>.png: the first one wins.
    reason = reason.where(~table["id"].duplicated(keep="first"), "duplicate id")
    skipped = pd.DataFrame({"id": table["id"], "reason": reason, "detail": detail})
    skipped = skipped[reason.notna()].reset_index(drop=True)
    skipped["detail"] = skipped["detail"].where(skipped["detail"].notna(), None)
    return table[reason.isna()].reset_index(drop=True), skipped


# ---------------------------------------------------------------------------------------------
# Splits


@dataclass(frozen=True)
class SplitResult:
    """split: 'train' | 'val' | 'test' per row (index of the input frame).
    strata: the stratification label per row (rare colours as "Other").
    stratified: True when both cuts were stratified.
    notes: what fell back and why (for the report).
    """

    split: pd.Series
    strata: pd.Series
    stratified: bool
    notes: tuple[str, ...]


def colour_labels(values: pd.Series) -> pd.Series:
    """Colours as split tables show them: missing values (empty, "NA") become "Unknown"."""
    return values.astype("object").map(lambda v: UNKNOWN_COLOUR if is_missing(v) else str(v))


def strata_labels(values: pd.Series, min_class_rows: int) -> pd.Series:
    """Colour labels with rare ones (< min_class_rows rows) grouped as "Other".

    Missing colours count as one colour, "Unknown". If "Other" would hold a single row it
    cannot be stratified, so it joins the largest colour instead.
    """
    labels = colour_labels(values)
    counts = labels.value_counts()
    rare = counts.index[counts < min_class_rows]
    labels = labels.where(~labels.isin(rare), OTHER)
    return _mergeable(labels)


def split_rows(frame: pd.DataFrame, config: SplitConfig = SplitConfig()) -> SplitResult:
    """Deterministic train/val/test split, stratified by colour.

    Two cuts with scikit-learn's `train_test_split` (the reference implementation): train vs
    the rest, then the rest into val and test; held-out counts are rounded up, which gives
    the seed project's 1,991/427/427 for 2,845 images. Rows are ordered by `id` first, so the
    split does not depend on row order. Within a cut, a stratum left with a single row joins
    "Other"; a cut that still cannot be stratified (more strata than held-out rows) falls
    back to a seeded random cut and says so in `notes`; fewer than 3 rows all go to train.

    Args:
        frame: usable rows with `id` and `config.column`.
        config: SplitConfig.
    Returns:
        SplitResult aligned with frame.index.
    Raises:
        DatasetError: frame is empty or lacks the column.
    """
    if len(frame) == 0:
        raise DatasetError("no usable rows to split; check the category and its images")
    if config.column not in frame.columns:
        raise DatasetError(f"stratify column {config.column!r} is not in the table")
    strata = strata_labels(frame[config.column], config.min_class_rows)
    order = (frame.sort_values("id", kind="stable").index if "id" in frame.columns
             else frame.index).to_numpy()
    _, val_f, test_f = config.fractions
    if len(order) < 3:
        notes = [f"only {len(order)} usable row(s): all go to train"]
        train, val, test = order, order[:0], order[:0]
    else:
        train, rest, note1 = _cut(order, val_f + test_f, strata, config.seed, "train | val+test")
        val, test, note2 = _cut(rest, test_f / (val_f + test_f) if val_f + test_f else 0.0,
                                strata, config.seed, "val | test")
        notes = [n for n in (note1, note2) if n]
    split = pd.Series("train", index=frame.index, dtype="object")
    split.loc[val] = "val"
    split.loc[test] = "test"
    for name, share in zip(SPLITS, config.fractions, strict=True):
        if share > 0 and not (split == name).any():
            notes.append(f"the {name} split is empty")
    stratified = not any("not stratified" in n for n in notes) and len(order) >= 3
    return SplitResult(split, strata, stratified, tuple(notes))


def _cut(index: np.ndarray, held_share: float, strata: pd.Series, seed: int,
         what: str) -> tuple[np.ndarray, np.ndarray, str | None]:
    """One stratified cut of `index` (held-out count rounded up); random if it cannot be.

    Returns:
        (kept, held, note): note is None for a stratified cut, else why it fell back.
    """
    from sklearn.model_selection import train_test_split

    if held_share <= 0 or len(index) == 0:
        return index, index[:0], None
    if held_share >= 1:
        return index[:0], index, None
    if len(index) < 2:
        return index, index[:0], f"{what}: a single row, kept on the first side"
    labels = _mergeable(strata.loc[index])
    try:
        kept, held = train_test_split(index, test_size=held_share, random_state=seed,
                                      stratify=labels.to_numpy())
        return kept, held, None
    except ValueError as err:  # a stratum with one row, more strata than held-out rows, ...
        kept, held = train_test_split(index, test_size=held_share, random_state=seed)
        return kept, held, f"{what}: not stratified ({err}); random split with seed {seed}"


def _mergeable(labels: pd.Series) -> pd.Series:
    """Strata of one cut with every single-row stratum moved to "Other" (then, if "Other"
    itself holds one row, to the largest stratum): one rare row must not stop the others
    from being stratified."""
    counts = labels.value_counts()
    labels = labels.where(~labels.isin(counts.index[counts < 2]), OTHER)
    if (labels == OTHER).sum() == 1 and labels.nunique() > 1:
        labels = labels.replace(OTHER, labels[labels != OTHER].value_counts().index[0])
    return labels


def split_table(frame: pd.DataFrame, split: pd.Series, column: str = "baseColour") -> pd.DataFrame:
    """Rows per colour (index) and split (columns train/val/test/total), largest first."""
    table = pd.crosstab(colour_labels(frame[column]), split).reindex(columns=list(SPLITS), fill_value=0)
    table["total"] = table.sum(axis=1)
    table.index.name = column
    table.columns.name = None
    return table.sort_values(["total"], ascending=False, kind="stable").astype(int)


# ---------------------------------------------------------------------------------------------
# Captions


def caption_values(row: Mapping[str, Any]) -> dict[str, Any]:
    """The placeholder values of one catalogue row (a row has no view phrase)."""
    values = {name: row.get(column) for name, column in CAPTION_COLUMNS.items()}
    if not is_missing(values["year"]):
        values["year"] = str(int(float(values["year"])))
    return values


def render_caption(template: str, row: Mapping[str, Any]) -> str:
    """The caption of one catalogue row: `shoelib.captions.fill` with the row's values."""
    return fill(template, caption_values(row))


def captions(frame: pd.DataFrame, template: str = DEFAULT_TEMPLATE) -> pd.Series:
    """`render_caption` for every row, aligned with frame.index."""
    check_template(template)
    records = frame.to_dict("records")
    return pd.Series([render_caption(template, r) for r in records], index=frame.index,
                     dtype="object", name="caption")


# ---------------------------------------------------------------------------------------------
# Plan


@dataclass(frozen=True)
class DatasetPlan:
    """What will be exported: no file written yet.

    rows: usable rows + `split`, `caption`, `stratum`.
    skipped: `id`, `reason`, `detail` of rows left out.
    split: the SplitResult (notes, stratified).
    """

    rows: pd.DataFrame
    skipped: pd.DataFrame
    split: SplitResult


def plan_dataset(table: pd.DataFrame, config: DatasetConfig) -> DatasetPlan:
    """Usable rows, their split and their caption (pure: reads no image).

    Raises:
        DatasetError: no row of the table has a usable image.
    """
    usable, skipped = select_usable(table, config.min_image_side)
    if usable.empty:
        reasons = skipped["reason"].value_counts().to_dict()
        raise DatasetError(
            f"none of the {len(table)} rows of {config.category!r} has a usable image "
            f"({reasons}); check data_root and rerun 01_analysis")
    split = split_rows(usable, config.split)
    rows = usable.assign(split=split.split, caption=captions(usable, config.caption_template),
                         stratum=split.strata)
    return DatasetPlan(rows, skipped, split)


def plan_categories(table: pd.DataFrame, configs: Mapping[str, DatasetConfig]
                    ) -> tuple[dict[str, DatasetPlan], dict[str, str]]:
    """Each category's plan, from its own rows of the table, with its own stratified split;
    and the categories left out, each with the reason (the others go on).

    A category is left out when the table has no row of it, none of its rows is usable, or
    it has too few usable rows to give every split with a share a row (a type that cannot
    be validated or tested would make every later figure about it empty).

    Raises:
        DatasetError: every category was left out (the first one's reason).
    """
    plans: dict[str, DatasetPlan] = {}
    skipped: dict[str, str] = {}
    for category, config in configs.items():
        rows = table[table["articleType"] == category].reset_index(drop=True)
        try:
            if rows.empty:
                raise DatasetError(
                    f"category {category!r} has no row in the category table; rerun "
                    "01_analysis with it in `categories` (same output_root)")
            plan = plan_dataset(rows, config)
            empty = [name for name, share in zip(SPLITS, config.split.fractions, strict=True)
                     if share > 0 and not (plan.rows["split"] == name).any()]
            if empty:
                raise DatasetError(
                    f"category {category!r} has {len(plan.rows)} usable row(s), too few for a "
                    f"{'/'.join(SPLITS)} split (the {' and '.join(empty)} split would be empty); "
                    "add photos or leave it out of `categories`")
        except DatasetError as err:
            skipped[category] = str(err)
            continue
        plans[category] = plan
    if not plans:
        raise DatasetError(next(iter(skipped.values())))
    return plans, skipped


def combine_plans(plans: Mapping[str, DatasetPlan]) -> DatasetPlan:
    """One view over several categories' plans (for reporting; each is exported on its own):
    rows and skipped rows concatenated, notes prefixed with their category."""
    if len(plans) == 1:
        return next(iter(plans.values()))
    rows = pd.concat([p.rows for p in plans.values()], ignore_index=True)
    split = SplitResult(
        split=rows["split"], strata=rows["stratum"],
        stratified=all(p.split.stratified for p in plans.values()),
        notes=tuple(f"{name}: {note}" for name, p in plans.items() for note in p.split.notes))
    return DatasetPlan(rows, pd.concat([p.skipped for p in plans.values()], ignore_index=True),
                       split)


def prepared_categories(output_root: str | Path, categories: Sequence[str]
                        ) -> tuple[list[str], list[str]]:
    """(the categories 02 exported a train split for, those it left out), in list order.

    A single category is always "prepared": reading its split is then the one-line error
    that names what to run. With several, one that 02 left out (too few photos) is skipped
    by the later notebooks, which say so; if none was prepared, all are returned so that
    the first one's error is raised.
    """
    from shoelib.paths import RunPaths

    paths = RunPaths.from_param(output_root)
    kept = [c for c in categories if (paths.processed(c) / "train" / "metadata.jsonl").is_file()]
    if len(categories) == 1 or not kept:
        return list(categories), []
    return kept, [c for c in categories if c not in kept]


def read_splits(split_dirs: Sequence[str | Path]) -> pd.DataFrame:
    """`read_split` of several folders (one split of several categories), concatenated."""
    return pd.concat([read_split(d) for d in split_dirs], ignore_index=True)


# ---------------------------------------------------------------------------------------------
# Export


@dataclass(frozen=True)
class ExportResult:
    """What `export_dataset` did.

    out_dir: processed/<category slug>.
    rows: exported rows (+ `file_name`, `png_path`), skipped: all rows left out (plan's
        and those whose image failed to decode now).
    counts: rows per split. prepared/reused/moved/removed: images newly written, kept
        from an earlier run, moved to another split folder, stale files deleted.
    """

    out_dir: Path
    rows: pd.DataFrame
    skipped: pd.DataFrame
    counts: dict[str, int]
    prepared: int
    reused: int
    moved: int
    removed: int
    metadata: dict[str, Any]

    @classmethod
    def combined(cls, results: Mapping[str, ExportResult]) -> ExportResult:
        """Several categories' exports as one (summed counts; metadata per category)."""
        if len(results) == 1:
            return next(iter(results.values()))
        parts = list(results.values())
        return cls(
            out_dir=parts[0].out_dir.parent,
            rows=pd.concat([r.rows for r in parts], ignore_index=True),
            skipped=pd.concat([r.skipped for r in parts], ignore_index=True),
            counts={name: sum(r.counts[name] for r in parts) for name in SPLITS},
            prepared=sum(r.prepared for r in parts), reused=sum(r.reused for r in parts),
            moved=sum(r.moved for r in parts), removed=sum(r.removed for r in parts),
            metadata={name: r.metadata for name, r in results.items()})


def source_fingerprint(path: str | Path) -> dict[str, int]:
    """Size and modification time (ns) of a source file: a changed photo has another."""
    stat = os.stat(path)
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def export_dataset(plan: DatasetPlan, out_dir: str | Path, config: DatasetConfig,
                   progress: bool = True) -> ExportResult:
    """Write the planned dataset; a rerun redoes only what is missing or changed.

    An image counts as finished when its PNG exists and the manifest records the same
    source fingerprint (bytes, mtime) and preparation parameters (size, PREPARATION_VERSION).
    Every file is written atomically and the manifest is appended to after each image, so a
    killed run leaves no half-written file and loses at most the images in flight. A row
    whose split changed has its PNG moved, not redone; files no row owns are deleted.

    Args:
        plan: from `plan_dataset`.
        out_dir: processed/<category slug>.
        config: the same DatasetConfig the plan was made with.
        progress: show a progress bar.
    Returns:
        ExportResult.
    Raises:
        FolderInUseError: another run is exporting into out_dir (the folder is locked for
            the export, so two runs never delete each other's files).
    """
    with folder_lock(out_dir):
        return _export_locked(plan, Path(out_dir), config, progress)


def _export_locked(plan: DatasetPlan, out_dir: Path, config: DatasetConfig,
                   progress: bool) -> ExportResult:
    for name in SPLITS:
        (out_dir / name / MASKS_DIR).mkdir(parents=True, exist_ok=True)
    remove_temp_files(out_dir, *(out_dir / s for s in SPLITS),
                      *(out_dir / s / MASKS_DIR for s in SPLITS))
    rows = plan.rows.copy()
    rows["file_name"] = rows["id"].map(lambda i: f"{int(i)}.png")
    rows["png_path"] = [str(out_dir / s / f) for s, f in zip(rows["split"], rows["file_name"],
                                                               strict=True)]
    params = config.manifest_params()

    with open(out_dir / MANIFEST, "a", encoding="utf-8") as log:
        # 1. Reuse finished images (moving those whose split changed); list the rest.
        todo, entries, lost, moved = _reuse_finished(rows, out_dir, params, log)
        reused = len(entries)
        # 2. Delete outputs no planned row owns, before anything new is written.
        removed = _remove_stale(out_dir, set(rows["png_path"]))
        # 3. Prepare the rest, each recorded in the manifest as soon as it is written.
        results = prepare_images([(e["source"], png) for png, e in todo],
                                 config.prepare_config(), workers=config.workers,
                                 progress=progress)
        for (_, entry), result in zip(todo, results, strict=True):
            if result.status == "ok":
                entries[str(entry["id"])] = entry
                log.write(json.dumps(entry) + "\n")
                log.flush()
            else:
                lost.append({"id": entry["id"], "reason": "image unreadable",
                             "detail": result.error})
    _write_manifest(out_dir / MANIFEST, entries)
    _write_missing_masks(rows[rows["id"].astype(int).astype(str).isin(entries)])

    # 4. Drop rows that failed, then captions, per-split metadata, metadata.json, card.
    lost_ids = {item["id"] for item in lost}
    rows = rows[~rows["id"].astype(int).isin(lost_ids)].reset_index(drop=True)
    removed += _remove_stale(out_dir, set(rows["png_path"]))
    skipped = pd.concat([plan.skipped, pd.DataFrame(lost, columns=["id", "reason", "detail"])],
                        ignore_index=True)
    _write_captions(rows)
    if config.aspect_buckets:  # each image's own size, as written (kept ones included)
        sizes = [_header_size(png) for png in rows["png_path"]]
        rows["width"] = [w for w, _ in sizes]
        rows["height"] = [h for _, h in sizes]
    counts = {name: int((rows["split"] == name).sum()) for name in SPLITS}
    for name in SPLITS:
        _write_split_metadata(out_dir / name, rows[rows["split"] == name])
    prepared = len(entries) - reused
    metadata = dataset_metadata(rows, skipped, plan.split, config, counts)
    metadata["run"] = {"prepared": prepared, "reused": reused, "moved": moved,
                       "removed": removed}
    write_json(out_dir / "metadata.json", metadata)
    if rows.empty:
        raise DatasetError(
            f"no image of {config.category!r} could be prepared ({len(skipped)} skipped; "
            f"reasons in {out_dir / 'metadata.json'}); check the photos under data_root")
    write_text(out_dir / "README.md", dataset_card(metadata))
    return ExportResult(out_dir, rows, skipped, counts, prepared, reused, moved, removed,
                        metadata)


def _reuse_finished(rows: pd.DataFrame, out_dir: Path, params: dict, log) -> tuple:
    """Split rows into finished images (kept, moved if their split changed) and work to do.

    Returns:
        (todo, entries, lost, moved): todo = [(png_path, manifest entry)] to prepare;
        entries = id -> manifest entry of finished images; lost = rows whose source file
        is gone; moved = PNGs moved to another split folder (logged in the manifest).
    """
    manifest = _read_manifest(out_dir / MANIFEST)
    todo, entries, lost, moved = [], {}, [], 0
    for key, src, png, split in zip(rows["id"], rows["image_path"], rows["png_path"],
                                    rows["split"], strict=True):
        key = str(int(key))
        try:
            source = resolve(src)
            fingerprint = source_fingerprint(source)
        except (OSError, TypeError) as err:  # TypeError: no path (None / NA)
            lost.append({"id": int(key), "reason": "image missing", "detail": str(err)})
            continue
        entry = {"id": int(key), "split": split, "source": str(source),
                 "fingerprint": fingerprint, "params": params}
        old = manifest.get(key)
        old_png = out_dir / old["split"] / f"{key}.png" if old else None
        if not (old and old.get("fingerprint") == fingerprint and old.get("params") == params
                and old_png.is_file()):
            todo.append((png, entry))
            continue
        if old["split"] != split:
            if mask_path(old_png).is_file():
                os.replace(mask_path(old_png), mask_path(png))
            os.replace(old_png, png)
            log.write(json.dumps(entry) + "\n")
            log.flush()
            moved += 1
        entries[key] = entry
    return todo, entries, lost, moved


def export_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """One metadata.jsonl line: file_name (relative to the split folder), text, attributes.

    Missing text attributes are "" and a missing year is null, so every split's file has the
    same column types (`imagefolder` refuses splits whose metadata types differ).
    `mask_file_name` is the image's foreground mask, relative to the split folder.
    """
    record: dict[str, Any] = {"file_name": row["file_name"], "text": row["caption"],
                              "mask_file_name": f"{MASKS_DIR}/{row['file_name']}"}
    for key, column in EXPORT_ATTRIBUTES.items():
        value = row.get(column)
        if key in ("id", "year"):
            record[key] = None if is_missing(value) else int(float(value))
        else:
            record[key] = "" if is_missing(value) else str(value)
    record["split"] = row["split"]
    if "width" in row:  # aspect buckets: the sizes differ from image to image
        record["width"], record["height"] = int(row["width"]), int(row["height"])
    return record


def _header_size(path: str | Path) -> tuple[int, int]:
    """An image file's (width, height) from its header (nothing decoded)."""
    with Image.open(path) as image:
        return image.size


def source_sizes(rows: pd.DataFrame) -> pd.Series:
    """Each row's photo (width, height): 01's `image_width`/`image_height` where the table has
    them, else read from the header of its `image_path` (nothing decoded)."""
    if {"image_width", "image_height"} <= set(rows.columns):
        pairs = zip(rows["image_width"].astype(int), rows["image_height"].astype(int), strict=True)
    else:
        pairs = (_header_size(resolve(path)) for path in rows["image_path"])
    return pd.Series(list(pairs), index=rows.index, dtype="object")


def padding_shares(rows: pd.DataFrame, image_size: int) -> dict[str, dict[str, float]]:
    """The share of prepared pixels that is padding, letterbox against aspect buckets, per
    split and over all rows, from each photo's own size (`source_sizes`).

    Returns:
        {"letterbox" | "buckets": {"train", "val", "test", "all": share}}; a split without
        rows is left out.
    """
    sizes = source_sizes(rows)
    parts = {name: sizes[rows["split"] == name] for name in SPLITS} | {"all": sizes}
    return {kind: {name: round(padding_share(list(part), image_size, kind == "buckets"), 4)
                   for name, part in parts.items() if len(part)}
            for kind in ("letterbox", "buckets")}


def bucket_counts(rows: pd.DataFrame, image_size: int) -> dict[str, int]:
    """How many photos fall into each aspect bucket ("WxH"), most first, from their own size."""
    boxes = [prepare_box(w, h, image_size, True) for w, h in source_sizes(rows)]
    counts = pd.Series([f"{w}x{h}" for w, h in boxes], dtype="object").value_counts()
    return {str(k): int(v) for k, v in counts.items()}


def dataset_metadata(rows: pd.DataFrame, skipped: pd.DataFrame, split: SplitResult,
                     config: DatasetConfig, counts: dict[str, int]) -> dict[str, Any]:
    """The content of metadata.json (JSON-ready)."""
    colours = split_table(rows, rows["split"], config.split.column) if len(rows) else None
    return {
        "category": config.category,
        "splits": counts,
        "total": int(sum(counts.values())),
        "colour_counts": {name: {str(c): int(n) for c, n in colours[name].items() if n}
                          for name in SPLITS} if colours is not None else {},
        "parameters": config.parameters(),
        **({"padding_share": padding_shares(rows, config.image_size),
            "bucket_counts": bucket_counts(rows, config.image_size)} if len(rows) else {}),
        "stratified": split.stratified,
        "split_notes": list(split.notes),
        "skipped_count": len(skipped),
        "skipped_reasons": {str(k): int(v) for k, v in skipped["reason"].value_counts().items()},
        "skipped": [{"id": int(r["id"]), "reason": r["reason"],
                     **({"detail": r["detail"]} if not is_missing(r["detail"]) else {})}
                    for r in skipped.to_dict("records")],
        "layout": {"images": "<split>/<id>.png", "captions": "<split>/<id>.txt",
                   "masks": f"<split>/{MASKS_DIR}/<id>.png",
                   "metadata": f"<split>/{METADATA_JSONL}"},
    }


def _read_manifest(path: Path) -> dict[str, dict]:
    """id -> last complete entry; a torn last line (killed run) is ignored."""
    entries: dict[str, dict] = {}
    if not path.is_file():
        return entries
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
            entries[str(int(entry["id"]))] = entry
        except (ValueError, KeyError, TypeError):
            continue
    return entries


def _write_manifest(path: Path, entries: dict[str, dict]) -> None:
    """Rewrite the manifest compactly (one line per current image)."""
    text = "".join(json.dumps(entries[k]) + "\n" for k in sorted(entries, key=int))
    write_text(path, text)


def _remove_stale(out_dir: Path, pngs: set[str]) -> int:
    """Delete <split>/*.png|*.txt and <split>/masks/*.png that no planned row owns (`pngs`:
    the owned PNG paths)."""
    expected = ({Path(p) for p in pngs} | {Path(p).with_suffix(".txt") for p in pngs}
                | {mask_path(p) for p in pngs})
    n = 0
    for name in SPLITS:
        for folder in (out_dir / name, out_dir / name / MASKS_DIR):
            for path in folder.iterdir():
                if path.suffix in (".png", ".txt") and path not in expected:
                    path.unlink()
                    n += 1
    return n


def _write_missing_masks(rows: pd.DataFrame) -> int:
    """The mask of every finished image that has none (an image kept from a run before masks
    were written), made from the prepared PNG itself; returns how many were written."""
    n = 0
    for png in rows["png_path"]:
        if not mask_path(png).is_file():
            with open_image(png) as square:
                write_mask(square, mask_path(png))
            n += 1
    return n


def foreground_share(split: pd.DataFrame) -> pd.Series:
    """The share of each image that is product (mean of its mask / 255), aligned with `split`
    (a `read_split` table with masks)."""
    shares = []
    for path in split["mask_path"]:
        with open_image(path) as mask:
            shares.append(float(np.asarray(mask.convert("L"), dtype=np.float64).mean() / 255))
    return pd.Series(shares, index=split.index, name="foreground_share")


def _write_captions(rows: pd.DataFrame) -> None:
    """<id>.txt beside each PNG (kohya's caption sidecar); unchanged files are not rewritten."""
    for png, caption in zip(rows["png_path"], rows["caption"], strict=True):
        txt = Path(png).with_suffix(".txt")
        if not txt.is_file() or txt.read_text(encoding="utf-8") != caption:
            write_text(txt, caption)


def _write_split_metadata(split_dir: Path, rows: pd.DataFrame) -> None:
    path = split_dir / METADATA_JSONL
    if rows.empty:  # imagefolder cannot read an empty metadata file; read_split explains
        path.unlink(missing_ok=True)
        return
    ordered = rows.sort_values("id", kind="stable")
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            for record in ordered.to_dict("records"):
                handle.write(json.dumps(export_record(record), ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------------------
# Dataset card


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if n < limit:
            return label
    return "100K<n<1M"


def dataset_card(metadata: Mapping[str, Any]) -> str:
    """A Hugging Face dataset card (README.md with YAML header) for the exported folder."""
    params = metadata["parameters"]
    counts = metadata["splits"]
    size = params["image_size"]
    configs = "\n".join(
        f"  - split: {HF_SPLIT_NAMES[name]}\n    path:\n    - {name}/*.png\n"
        f"    - {name}/{METADATA_JSONL}"
        for name in SPLITS if counts.get(name))
    rows = "\n".join(f"| {name} | {counts.get(name, 0):,} |" for name in SPLITS)
    fields = "\n".join(f"- `{{{k}}}`: {note}" for k, note in FIELDS.items())
    sizes = ", `width`, `height` (px)" if params.get("aspect_buckets") else ""
    buckets = params.get("aspect_buckets", False)
    shape = f"aspect buckets of about {size}x{size} px" if buckets else f"{size}x{size}"
    # The category is catalogue text: quoted for YAML, escaped for markdown.
    pretty_name = json.dumps(f"{metadata['category']} product photos ({shape})")
    category = report.text(metadata["category"])
    if buckets:
        how = (f"each fitted into the aspect bucket nearest its own shape (about {size}x{size} "
               "pixels, sides in steps of "
               f"{bucket_step(size)} px: {', '.join(metadata.get('bucket_counts', {}))}; whole "
               "photo kept, padded with its own background colour to the bucket), as PNG")
    else:
        how = (f"letterboxed to {size}x{size} PNG (whole photo\nkept, aspect unchanged, padded "
               "with the photo's own background colour)")
    padding = metadata.get("padding_share")
    padding_line = "" if not padding else (
        f"\nPadding (share of the pixels that are not photo, over all images): "
        f"{padding['letterbox']['all']:.2%} in the {size}x{size} letterbox, "
        f"{padding['buckets']['all']:.2%} with aspect buckets"
        f" ({'used here' if buckets else 'aspect_buckets: true'}).\n")
    return f"""---
pretty_name: {pretty_name}
license: other
license_name: fashion-product-images-source-terms
task_categories:
- text-to-image
size_categories:
- {_size_category(metadata["total"])}
configs:
- config_name: default
  data_files:
{configs}
---

# {category}: {shape} product photos with captions

Product photos of the catalogue's {category}, {how}, one caption each.
Made by `shoelib.dataset` (notebook 02_prepare_dataset).
{padding_line}
| split | images |
|---|---|
{rows}

Split: stratified by `{params["stratify_column"]}` (colours with fewer than
{params["min_class_rows"]} rows grouped as "Other"), fractions {params["split_fractions"]},
seed {params["split_seed"]}. Stratified: {metadata["stratified"]}. Skipped rows:
{metadata["skipped_count"]} ({metadata["skipped_reasons"]}); see metadata.json.

## Files

- `<split>/<id>.png`: the image; `<split>/<id>.txt`: its caption (kohya-ss sidecar).
- `<split>/masks/<id>.png`: its foreground mask (8-bit, 255 = product: everything but the
  near-white background connected to the border), for a loss weighted towards the product.
- `<split>/metadata.jsonl`: one JSON object per image: `file_name` (relative to the split
  folder), `text` (the caption), `mask_file_name` (`masks/<id>.png`), `id`, `colour`,
  `gender`, `season`, `usage`, `year`, `brand`, `productDisplayName`, `split`{sizes}. Missing text
  values are "", a missing year null.
- `metadata.json`: counts, colour counts per split, parameters, skipped rows with reasons.

## Captions

Template: `{params["caption_template"]}`

A comma-separated clause whose placeholders all lack a value is dropped. Placeholders:
{fields}

## Load

```python
from datasets import load_dataset
ds = load_dataset("imagefolder", data_dir="<this folder>")   # train / validation / test
train = load_dataset("imagefolder", data_dir="<this folder>/train", split="train")
```

## Train a LoRA with diffusers

```bash
accelerate launch examples/text_to_image/train_text_to_image_lora.py \\
  --pretrained_model_name_or_path stable-diffusion-v1-5/stable-diffusion-v1-5 \\
  --train_data_dir "<this folder>/train" --caption_column text \\
  --resolution {size} --output_dir lora-out
```

## Licence

The photos and catalogue values come from the Kaggle "Fashion Product Images" dataset
(paramaggarwal); the demo profile uses a small sample of them. This card grants no
rights: check the source's terms on its Kaggle page before redistributing the images.
"""


# ---------------------------------------------------------------------------------------------
# Reading back


def read_split(split_dir: str | Path) -> pd.DataFrame:
    """One exported split as a table (for training and evaluation).

    Args:
        split_dir: processed/<category>/<split>.
    Returns:
        DataFrame with metadata.jsonl's columns (file_name, text, id, colour, ...) plus
        `image_path` (absolute), in file order; and `mask_path` (absolute) when the split
        lists masks (`mask_file_name`).
    Raises:
        MissingInputError: folder, metadata.jsonl, an image or a listed mask is absent.
        DatasetError: the split is empty or a caption is empty.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise MissingInputError(
            f"split folder {split_dir} does not exist; run 02_prepare_dataset first with the "
            "same output_root and category")
    path = split_dir / METADATA_JSONL
    if not path.is_file():
        raise MissingInputError(
            f"{path} does not exist: the {split_dir.name} split is empty or was not exported; "
            "rerun 02_prepare_dataset (check split_fractions)")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
               if line.strip()]
    if not records:
        raise DatasetError(f"{path} lists no image; rerun 02_prepare_dataset")
    frame = pd.DataFrame.from_records(records)
    for column in ("file_name", "text"):
        if column not in frame.columns:
            raise DatasetError(f"{path} has no {column!r} column; rerun 02_prepare_dataset")
    no_text = frame["text"].isna() | (frame["text"].astype(str).str.strip() == "")
    if no_text.any():
        raise DatasetError(
            f"{path}: {int(no_text.sum())} image(s) without a caption, e.g. "
            f"{frame.loc[no_text, 'file_name'].iloc[0]}; rerun 02_prepare_dataset")
    frame["image_path"] = [str(split_dir / f) for f in frame["file_name"]]
    columns = {"image_path": "image"}
    if "mask_file_name" in frame.columns:
        frame["mask_path"] = [str(split_dir / f) for f in frame["mask_file_name"]]
        columns["mask_path"] = "mask"
    for column, what in columns.items():
        absent = [p for p in frame[column] if not Path(p).is_file()]
        if absent:
            raise MissingInputError(
                f"{len(absent)} {what}(s) listed in {path} are absent, e.g. {absent[0]}; "
                "rerun 02_prepare_dataset")
    return frame
