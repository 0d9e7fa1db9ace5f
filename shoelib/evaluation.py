"""Notebook 07's steps: load the image sets, run every measure, draw the figures, write the summary.

Each step returns `MetricResult` rows (value + the N it used, or None + why), so the summary
table and summary.json hold exactly the same numbers. A missing or empty synthetic run does
not stop the evaluation: the real-only baselines are still computed and every synthetic row
says what is missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shoelib import checks
from shoelib import classifier as C
from shoelib import metrics as M
from shoelib.images import open_rgb
from shoelib.paths import RunPaths, resolve

FIDELITY_FEATURES = ("clip", "pixels", "inception", "encoder", "dinov2")


@dataclass(frozen=True)
class EvalConfig:
    """Settings of the evaluation (from notebook 07's parameters).

    Attributes:
        fidelity_features: "clip" (CLIP image embeddings), "pixels" (weight-free),
            "inception" (needs torch-fidelity), "encoder" (the image encoder pretrained with
            the embedded model: the demo's domain feature space) or "dinov2" (DINOv2 CLS
            embeddings, the space recommended for FD by Stein et al. 2023).
        kid_subsets: subsets KID averages over.
        min_images: fewest images per set for KID and CMMD.
        near_duplicate_bits: pHash distance (of 64 bits) that counts as a near duplicate.
        classifier: how the downstream colour classifier is trained.
        classifier_seeds: one classifier per seed and training set.
        classifier_min_per_class: fewest real training images for a colour to be a class.
        gallery_size: images in each of the best/worst galleries.
        seed: KID subset and bootstrap sampling seed (07's kid_seed).
        prdc_k: nearest neighbours of precision/recall/density/coverage.
        bootstrap_samples: resamples of every bootstrap CI (07's bootstrap_samples).

    `check` names 07's parameters (metric_min_images for min_images, ...).
    """

    fidelity_features: str = "clip"
    kid_subsets: int = 100
    min_images: int = 20
    near_duplicate_bits: int = 6
    classifier: C.ClassifierConfig = field(default_factory=C.ClassifierConfig)
    classifier_seeds: tuple[int, ...] = (0, 1, 2)
    classifier_min_per_class: int = 10
    gallery_size: int = 8
    seed: int = 0
    prdc_k: int = 5
    bootstrap_samples: int = 200

    def check(self) -> None:
        if self.fidelity_features not in FIDELITY_FEATURES:
            raise ValueError(f"fidelity_features={self.fidelity_features!r} is unknown; use "
                             f"{' | '.join(FIDELITY_FEATURES)}")
        checks.whole_number(self.kid_subsets, "kid_subsets", 1, 100)
        checks.whole_number(self.min_images, "metric_min_images", 2, 50)
        checks.whole_number(self.near_duplicate_bits, "near_duplicate_bits", 0, 6)
        checks.whole_number(self.classifier.steps, "classifier_steps", 1, 600)
        # Two 2x poolings: below 4 px nothing is left to pool.
        checks.whole_number(self.classifier.image_px, "classifier_image_px", 4, 32)
        seeds = self.classifier_seeds
        if not isinstance(seeds, tuple | list) or not seeds:
            raise checks.SettingError(f"classifier_seeds={seeds!r} must be a non-empty list of "
                                      "seeds, e.g. [0, 1, 2]")
        for value in seeds:
            checks.random_seed(value, "classifier_seeds")
        checks.whole_number(self.classifier_min_per_class, "classifier_min_per_class", 1, 10)
        checks.whole_number(self.gallery_size, "gallery_size", 1, 8)
        checks.random_seed(self.seed, "kid_seed")
        checks.whole_number(self.prdc_k, "prdc_k", 1, 5)
        checks.whole_number(self.bootstrap_samples, "bootstrap_samples", 20, 200)


# --- the image sets


@dataclass(frozen=True)
class EvalSets:
    """The images 07 compares; every frame has `image_path`, `colour` and `text`.

    Attributes:
        train: real training split (the LoRA saw these: the memorisation reference).
        test: real held-out test split (fidelity and downstream reference).
        synthetic: the synthetic run (empty if there is none).
        notes: report lines about what is missing or partial.
        run_summary: the run's summary.json ({} if none).
    """

    train: pd.DataFrame
    test: pd.DataFrame
    synthetic: pd.DataFrame
    notes: tuple[str, ...]
    run_summary: dict

    def counts(self) -> dict[str, int]:
        return {"real_train": len(self.train), "real_test": len(self.test),
                "synthetic": len(self.synthetic)}


def load_eval_sets(output_root: str | Path, category: str | Sequence[str],
                   run_name: str) -> EvalSets:
    """Real train/test splits from 02 and the synthetic run `run_name` from 06.

    With several categories, every frame gets a `category` column and holds all of them.
    Synthetic images of a category not asked for (a run over more categories) are left
    out, with a note.

    Raises:
        FileNotFoundError: a real split is missing (run 02 first).
    """
    from shoelib.dataset import read_split
    from shoelib.generate import EmptyRunError, read_run

    cats = [category] if isinstance(category, str) else list(category)
    paths = RunPaths.from_param(output_root)
    run_dir = paths.synthetic_run(run_name)  # a bad name fails before any data is read

    def real(split: str) -> pd.DataFrame:
        frames = [read_split(paths.processed(c) / split).assign(category=c) for c in cats]
        frame = pd.concat(frames, ignore_index=True)
        return frame if len(cats) > 1 else frame.drop(columns="category")

    train, test = real("train"), real("test")
    notes: list[str] = []
    try:
        run = read_run(run_dir)
        synthetic, summary = run.frame, run.summary
        notes += list(run.notes)
    except EmptyRunError as err:
        synthetic, summary = pd.DataFrame(columns=["image_path", "colour", "text"]), {}
        notes.append(f"No synthetic images: {err}. Only the real baselines are computed.")
    if "category" in synthetic.columns:
        other = ~synthetic["category"].isin(cats)
        if other.any():
            notes.append(f"{int(other.sum())} synthetic images of other categories "
                         f"({', '.join(sorted(set(synthetic.loc[other, 'category'])))}) left out")
            synthetic = synthetic[~other].reset_index(drop=True)
        if len(cats) == 1:
            synthetic = synthetic.drop(columns="category")
    elif len(cats) > 1 and len(synthetic):
        raise ValueError(f"synthetic/{run_name} was generated for one category (its images "
                         f"record none), not for {', '.join(cats)}; rerun 06 with the same "
                         "categories into a new run_name")
    return EvalSets(train, test, synthetic, tuple(notes), summary)


def is_demo_run(sets: EvalSets, clip: M.ClipBundle | None) -> bool:
    """True when the images come from the tiny random demo model or CLIP is random."""
    model = str(sets.run_summary.get("model", ""))
    return "tiny-sd" in model or bool(clip and clip.random_weights)


# --- features


def feature_extractor(name: str, clip: M.ClipBundle | None,
                      encoder_model: str | Path | None = None,
                      dinov2_model: str = M.DINOV2_DEFAULT,
                      device: str = "cpu") -> tuple[M.FeatureExtractor, str]:
    """The extractor for fidelity and memorisation, and a report line about the choice.

    `clip` without weights ("none") falls back to pixel features, and says so.
    """
    if name == "dinov2":
        source = str(resolve(dinov2_model)) if Path(dinov2_model).exists() else dinov2_model
        return M.DinoFeatures(source, device), (f"DINOv2 CLS embeddings of {dinov2_model} (the "
                                                "FD feature space Stein et al. 2023 recommend)")
    if name == "encoder":
        if not encoder_model:
            raise ValueError("fidelity_features='encoder' needs encoder_model (a folder written "
                             "by `python -m shoelib.pretrain`, e.g. assets/models/catalog-encoder)")
        extractor = M.EncoderFeatures(resolve(encoder_model))
        return extractor, (f"embeddings of the image encoder {extractor.folder.name} (trained on "
                           "real catalogue photos: article type + colour)")
    if name == "inception":
        return M.inception_features(), ("Inception v3 (torch-fidelity weights and resize): the "
                                        "standard of published FID/KID")
    if name == "clip" and clip is not None:
        how = "random weights: meaningless" if clip.random_weights else "CMMD paper's choice"
        return M.ClipFeatures(clip), f"CLIP image embeddings of {clip.name} ({how})"
    if name == "clip":
        return M.PixelFeatures(), ("clip_model='none': fidelity falls back to weight-free pixel "
                                   "features (colour histogram + thumbnail), not comparable "
                                   "with published KID/FID")
    return M.PixelFeatures(), "weight-free pixel features (colour histogram + thumbnail)"


def set_features(sets: EvalSets, extractor: M.FeatureExtractor) -> dict[str, np.ndarray]:
    """Features of the train, test and synthetic images."""
    return {name: M.extract_features(list(frame["image_path"]), extractor, desc=f"{name} features")
            for name, frame in (("train", sets.train), ("test", sets.test),
                                ("synthetic", sets.synthetic))}


# --- fidelity and text alignment


def fidelity_results(feats: dict[str, np.ndarray], config: EvalConfig, feature_space: str,
                     clip_feats: dict[str, np.ndarray] | None = None,
                     clip_name: str = "") -> list[M.MetricResult]:
    """KID (primary), FID, CMMD and precision/recall/density/coverage of synthetic vs real test,
    and the KID of real train vs real test as the reference a perfect generator would reach at
    this N. Every row carries its 95 % CI."""
    test, syn, train = feats["test"], feats["synthetic"], feats["train"]
    kid = M.kid(test, syn, subsets=config.kid_subsets, min_images=config.min_images,
                seed=config.seed, feature_space=feature_space)
    ref = M.kid(test, train, subsets=config.kid_subsets, min_images=config.min_images,
                seed=config.seed, feature_space=feature_space)
    boot = {"n_boot": config.bootstrap_samples, "seed": config.seed}
    out = [kid, M.MetricResult("KID reference (real train vs real test)", ref.value, ref.std,
                               ref.n_real, None, f"{len(train)} real train images in place of "
                               "synthetic ones: the floor at this N", "lower",
                               ref.ci_low, ref.ci_high),
           M.fid(test, syn, feature_space=feature_space, **boot)]
    if clip_feats is None:
        out.append(M.MetricResult("CMMD", None, n_real=len(test), n_synthetic=len(syn),
                                  note="needs CLIP (clip_model='none')"))
    else:
        out.append(M.cmmd(clip_feats["test"], clip_feats["synthetic"],
                          min_images=config.min_images, clip_name=clip_name, **boot))
    return out + M.prdc_results(test, syn, k=config.prdc_k, feature_space=feature_space, **boot)


def clip_score_results(clip: M.ClipBundle | None, sets: EvalSets, batch_size: int = 32,
                       seed: int = 0) -> tuple[list[M.MetricResult], pd.Series]:
    """CLIP score of each synthetic image against its prompt, and of each real test image
    against its caption (the reference).

    Returns:
        (table rows, per-synthetic-image scores aligned with sets.synthetic).
    """
    if clip is None:
        row = M.MetricResult("CLIP score (synthetic)", None, note="skipped: clip_model='none' "
                             "(set it to openai/clip-vit-large-patch14 on a machine with network)")
        return [row], pd.Series(np.nan, index=sets.synthetic.index)
    rows, per_image = [], pd.Series(np.nan, index=sets.synthetic.index)
    for which, frame in (("synthetic", sets.synthetic), ("real test", sets.test)):
        scores = _scores(clip, frame, batch_size)
        n_key = "n_synthetic" if which == "synthetic" else "n_real"
        if len(scores) == 0:
            rows.append(M.MetricResult(f"CLIP score ({which})", None, note="no images", **{n_key: 0}))
            continue
        note = f"100 * max(cos, 0) of image and its {'prompt' if which == 'synthetic' else 'caption'}"
        if clip.random_weights:
            note += "; random-weight CLIP: meaningless"
        rows.append(M.with_ci(M.MetricResult(f"CLIP score ({which})", float(scores.mean()),
                                             float(scores.std()), better="higher", note=note,
                                             **{n_key: len(scores)}),
                              M.mean_ci(scores, seed=seed)))
        if which == "synthetic":
            per_image = pd.Series(scores, index=frame.index)
    return rows, per_image


def _scores(clip: M.ClipBundle, frame: pd.DataFrame, batch_size: int) -> np.ndarray:
    out = []
    for chunk in M.batches(frame.index, batch_size):
        images = [open_rgb(p) for p in frame.loc[chunk, "image_path"]]
        out.append(M.clip_scores(clip, images, list(frame.loc[chunk, "text"])))
    return np.concatenate(out) if out else np.zeros(0)


# --- weight-free photo checks


@dataclass(frozen=True)
class PhotoChecks:
    """Per-image measures and the rows/tables derived from them."""

    results: list[M.MetricResult]
    synthetic: pd.DataFrame
    test: pd.DataFrame
    confusion_synthetic: pd.DataFrame
    confusion_real: pd.DataFrame

    @property
    def real_colour_ceiling(self) -> M.MetricResult:
        """Agreement of the real test photos' dominant colour with their labels: label noise
        and the measure's limits cap what a synthetic set can score, at this run's N."""
        return next(r for r in self.results if r.name == "colour accuracy (real)")


def photo_checks(sets: EvalSets, thresholds: M.PhotoThresholds | None = None,
                 seed: int = 0) -> PhotoChecks:
    """Colour faithfulness (synthetic vs prompt; real test vs label = the label-noise baseline)
    and product-photo conformity of both sets."""
    thresholds = thresholds or M.PhotoThresholds()
    syn = M.measure_photos(list(sets.synthetic["image_path"]), thresholds, desc="synthetic checks")
    test = M.measure_photos(list(sets.test["image_path"]), thresholds, desc="real checks")
    acc_syn, conf_syn = M.colour_faithfulness(list(sets.synthetic["colour"]),
                                              list(syn["dominant_colour"]), "synthetic", seed)
    acc_real, conf_real = M.colour_faithfulness(list(sets.test["colour"]),
                                                list(test["dominant_colour"]), "real", seed)
    acc_real = M.MetricResult(acc_real.name, acc_real.value, None, acc_real.n_real, None,
                              acc_real.note + ": the ceiling set by label noise and the measure",
                              "higher", acc_real.ci_low, acc_real.ci_high)
    results = [acc_syn, acc_real, *M.conformity_results(syn, "synthetic", seed),
               *M.conformity_results(test, "real", seed)]
    return PhotoChecks(results, syn, test, conf_syn, conf_real)


def diversity_and_memorisation(checks: PhotoChecks, feats: dict[str, np.ndarray],
                               config: EvalConfig, feature_space: str,
                               pixels: dict[str, np.ndarray] | None = None,
                               copy_feats: dict[str, np.ndarray] | None = None,
                               copy_threshold: float | None = None,
                               ) -> tuple[list[M.MetricResult], M.MemorisationReport]:
    """Diversity of the synthetic set (real test as reference): the Vendi score on the features
    and on `pixels` (`pixel_features`) at the same N, near duplicates and spread; and the
    nearest training image of each synthetic one in `copy_feats` (a copy descriptor's, e.g.
    SSCD) or else in `feats`, flagged as a copy above `copy_threshold` (the descriptor's own)
    or else above the real-test baseline."""
    boot = {"n_boot": config.bootstrap_samples, "seed": config.seed}
    rows = []
    for space, spaces in ((feature_space, feats), ("pixels", pixels)):
        if spaces is not None:
            rows += M.vendi_results({"synthetic": spaces["synthetic"], "real test": spaces["test"]},
                                    space, seed=config.seed)
    for which, measures, key in (("synthetic", checks.synthetic, "synthetic"),
                                 ("real", checks.test, "test")):
        bits = M.hash_bits(list(measures["phash"]))
        rows += M.diversity_results(bits, feats[key], which, config.near_duplicate_bits, **boot)
    copy = copy_feats if copy_feats is not None else feats
    report = M.memorisation(copy["synthetic"], copy["train"], copy["test"],
                            feature_space="copy descriptor" if copy_feats is not None else feature_space,
                            threshold=copy_threshold, **boot)
    return rows + report.results, report


def pixel_features(sets: EvalSets) -> dict[str, np.ndarray]:
    """Raw 32 x 32 RGB pixels of the real test and synthetic images (the Vendi score on pixels)."""
    return {name: M.extract_features(list(frame["image_path"]), M.RawPixels(), desc=f"{name} pixels")
            for name, frame in (("test", sets.test), ("synthetic", sets.synthetic))}


# --- downstream classifier


@dataclass(frozen=True)
class DownstreamStudy:
    """The classifier study: classes, every run, mean ± std per training set, table rows,
    and the majority-class baseline (`classifier.majority_baseline`; {} if not computed)."""

    classes: list[str]
    runs: pd.DataFrame
    summary: pd.DataFrame
    results: list[M.MetricResult]
    notes: tuple[str, ...]
    baseline: dict = field(default_factory=dict)


def downstream_study(sets: EvalSets, config: EvalConfig) -> DownstreamStudy:
    """Train colour classifiers on real, real + synthetic and synthetic only; test on real."""
    classes = C.select_classes(sets.train["colour"], sets.test["colour"],
                               config.classifier_min_per_class)
    if len(classes) < 2:
        note = (f"fewer than 2 colours have {config.classifier_min_per_class}+ real training "
                f"images and a test image (found {classes}); lower classifier_min_per_class")
        row = M.MetricResult("classifier accuracy", None, n_real=len(sets.test), note=note)
        return DownstreamStudy(classes, pd.DataFrame(), pd.DataFrame(), [row], (note,))
    px = config.classifier.image_px
    real = labelled_set("real", sets.train, classes, px)
    test = labelled_set("test", sets.test, classes, px)
    syn = labelled_set("synthetic", sets.synthetic, classes, px)
    notes = [f"{len(sets.synthetic) - len(syn)} synthetic images of other colours left out"]
    train_sets = [real]
    if len(syn):
        train_sets += [C.LabelledSet("real+synthetic", np.concatenate([real.x, syn.x]),
                                     np.concatenate([real.y, syn.y])), syn]
    else:
        notes.append("no synthetic images of these colours: only the real classifier is trained")
    runs = C.run_classifiers(train_sets, test, len(classes), config.classifier,
                             config.classifier_seeds)
    summary = C.summarise_study(runs)
    baseline = C.majority_baseline(real.y, test.y, len(classes))
    return DownstreamStudy(classes, runs, summary,
                           C.study_results(summary, len(classes), baseline), tuple(notes),
                           baseline)


def labelled_set(name: str, frame: pd.DataFrame, classes: Sequence[str], px: int) -> C.LabelledSet:
    """The images of `frame` whose colour is one of `classes`, as classifier input."""
    keep, y = C.encode_labels(list(frame["colour"]), classes)
    return C.LabelledSet(name, C.load_pixels(list(frame["image_path"][keep]), px), y)


# --- figures


def confusion_figure(confusion: pd.DataFrame, title: str) -> Any:
    """Heatmap of a colour confusion matrix (rows asked, columns found), row-normalised."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1 + 0.5 * max(2, confusion.shape[1]),
                                    1 + 0.45 * max(2, confusion.shape[0])))
    if confusion.empty:
        ax.text(0.5, 0.5, "no colour labels", ha="center", va="center")
        ax.axis("off")
        return fig
    share = confusion.div(confusion.sum(axis=1).replace(0, 1), axis=0)
    ax.imshow(share.values, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(confusion.shape[1]), confusion.columns, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(confusion.shape[0]), confusion.index, fontsize=8)
    for (i, j), v in np.ndenumerate(confusion.values):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                    color="white" if share.values[i, j] > 0.5 else "black")
    ax.set_xlabel("dominant colour found")
    ax.set_ylabel("colour asked")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def downstream_figure(summary: pd.DataFrame, baseline: dict | None = None) -> Any:
    """Bars of accuracy and macro-F1 (mean ± std over seeds) per training set, with the
    majority-class baseline (`classifier.majority_baseline`) as a dashed line."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, metric in zip(axes, ("accuracy", "macro_f1"), strict=True):
        if summary.empty:
            ax.text(0.5, 0.5, "not computed", ha="center", va="center")
            continue
        ax.bar(summary["training_set"], summary[f"{metric}_mean"], yerr=summary[f"{metric}_std"],
               capsize=4, color=["#4c72b0", "#55a868", "#c44e52"][:len(summary)])
        if baseline:
            ax.axhline(baseline[metric], color="grey", ls="--", lw=1, label="majority baseline")
            ax.legend(fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"{metric.replace('_', '-')} on real test (mean ± std over seeds)", fontsize=9)
    fig.tight_layout()
    return fig


def distribution_figure(values: dict[str, np.ndarray], title: str, xlabel: str) -> Any:
    """Overlaid histograms (e.g. nearest-train similarity of synthetic vs real test images)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for label, v in values.items():
        if len(v):
            ax.hist(v, bins=20, alpha=0.55, label=f"{label} (N={len(v)})", density=True)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def interval_figure(results: Sequence[M.MetricResult], title: str) -> Any:
    """Each row with a value as a point with its 95 % CI, one panel (own scale) per row,
    titled with its name and N."""
    import matplotlib.pyplot as plt

    rows = [r for r in results if r.value is not None]
    fig, axes = plt.subplots(max(1, len(rows)), 1, figsize=(6, 0.2 + 0.62 * max(1, len(rows))),
                             squeeze=False)
    if not rows:
        axes[0, 0].text(0.5, 0.5, "no values", ha="center", va="center")
        axes[0, 0].axis("off")
        return fig
    for ax, r in zip(axes[:, 0], rows, strict=True):
        if r.ci_low is not None:
            ax.plot([r.ci_low, r.ci_high], [0, 0], color="#4c72b0", lw=3, label="95 % CI")
        ax.plot([r.value], [0], "o", color="#c44e52")
        ax.set_yticks([])
        ax.set_title(f"{r.name} (N={_n_label(r)})", fontsize=8, loc="left")
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _n_label(r: M.MetricResult) -> str:
    return " / ".join(str(n) for n in (r.n_real, r.n_synthetic) if n is not None) or "?"


def ranked_examples(sets: EvalSets, checks: PhotoChecks, clip_scores: pd.Series,
                    k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Best and worst synthetic images: colour right and conforming first, then CLIP score."""
    if sets.synthetic.empty:
        return sets.synthetic, sets.synthetic
    frame = sets.synthetic.assign(
        found=checks.synthetic["dominant_colour"].to_numpy(),
        conforming=checks.synthetic["conforming"].to_numpy(),
        clip_score=clip_scores.to_numpy())
    frame["colour_ok"] = [M.palette_name(a) == f for a, f in zip(frame["colour"], frame["found"],
                                                                 strict=True)]
    ranked = frame.sort_values(["colour_ok", "conforming", "clip_score"], ascending=False,
                               na_position="last")
    return ranked.head(k), ranked.tail(k).iloc[::-1]


def example_titles(frame: pd.DataFrame) -> list[str]:
    return [f"asked {r.colour} -> {r.found}\n"
            + ("conforming" if r.conforming else "not conforming")
            + ("" if pd.isna(r.clip_score) else f", CLIP {r.clip_score:.1f}")
            for r in frame.itertuples()]


# --- summary


def summary_record(results: Sequence[M.MetricResult], **extra: Any) -> dict:
    """summary.json: every table row (value, std, N) plus context (`extra`)."""
    rows = [r.as_row() for r in results]
    return {"results": rows, "table": {r["name"]: r["value"] for r in rows}, **extra}


# --- run against run: base model vs LoRA, or two strengths


def check_reference_categories(categories: Any) -> list[str]:
    """07's `reference_categories`: a list of article types ([] for no recogniser)."""
    if not isinstance(categories, (list, tuple)) or not all(
            isinstance(c, str) and c.strip() for c in categories):
        raise ValueError(f"reference_categories={categories!r} must be a list of article types, "
                         'e.g. ["Sports Shoes", "Heels"] ([] for no recogniser)')
    return list(categories)


def reference_photos(data_root: str | Path, categories: Sequence[str]) -> pd.DataFrame:
    """Readable catalogue photos of `categories` (image_path, articleType, colour): the real
    examples a category recogniser, and the downstream study, learn the other classes from."""
    from shoelib.catalog import image_path_for, read_styles

    root = resolve(data_root)
    frame = read_styles(root / "styles.csv").frame.drop_duplicates("id")
    frame = frame[frame["articleType"].isin(categories)]
    rows = []
    for r in frame.itertuples():
        path = image_path_for(root / "images", int(r.id))
        try:
            open_rgb(path)
        except Exception:  # missing or broken photos are 01's to report, not a reference
            continue
        rows.append({"image_path": str(path), "articleType": r.articleType,
                     "colour": r.baseColour})
    return pd.DataFrame(rows, columns=["image_path", "articleType", "colour"])


def per_category_results(sets: EvalSets, feats: dict[str, np.ndarray], checks: PhotoChecks,
                         config: EvalConfig, feature_space: str,
                         references: tuple[np.ndarray, Sequence[str]] | None = None
                         ) -> tuple[pd.DataFrame, dict[str, dict]]:
    """Each category of a multi-category evaluation on its own: its real test and synthetic
    counts, KID and precision / coverage of its synthetic images against its own real test
    photos, their colour accuracy, and the share a linear probe (trained on real train photos
    of every listed category plus the `references` photos of other types) recognises as it.

    Returns:
        (table: one row per category, values with their 95 % CIs as text;
         {category: {measure: MetricResult.as_row()}} for summary.json).
    """
    table, record = {}, {}
    labels = {which: sets_frame["category"].to_numpy()
              for which, sets_frame in (("train", sets.train), ("test", sets.test),
                                        ("synthetic", sets.synthetic))}
    for category in dict.fromkeys(labels["train"]):
        mask = {which: labels[which] == category for which in labels}
        sub = {which: feats[which][mask[which]] for which in labels}
        fidelity = {r.name.split(" (")[0]: r for r in fidelity_results(sub, config, feature_space)}
        found = checks.synthetic["dominant_colour"].to_numpy()[mask["synthetic"]]
        colour, _ = M.colour_faithfulness(list(sets.synthetic["colour"][mask["synthetic"]]),
                                          list(found), "synthetic", config.seed)
        rows = [fidelity["KID"], fidelity["precision"], fidelity["coverage"], colour]
        if references is not None:
            others = [feats["train"][~mask["train"]], references[0]]
            other_labels = [*labels["train"][~mask["train"]], *references[1]]
            recogniser = category_recogniser(category, sub["train"], sub["test"],
                                             np.concatenate(others), other_labels, config.seed)
            hits = recogniser.recognised(sub["synthetic"])
            share = M.MetricResult(
                "recognised as its category", float(hits.mean()) if len(hits) else None,
                n_synthetic=len(hits), better="higher",
                note=f"real test ceiling {recogniser.real_test_share:.2f}")
            rows.append(M.with_ci(share, M.mean_ci(hits, config.bootstrap_samples, config.seed))
                        if len(hits) else share)
        # "precision (synthetic)" -> "precision": every row here is of the synthetic images
        table[category] = {"real test": int(mask["test"].sum()),
                           "synthetic": int(mask["synthetic"].sum()),
                           **{r.name.split(" (")[0]: _with_interval(r) for r in rows}}
        record[category] = {r.name.split(" (")[0]: r.as_row() for r in rows}
    return pd.DataFrame.from_dict(table, orient="index"), record


def _with_interval(result: M.MetricResult) -> str:
    if result.value is None:
        return f"n/a ({result.note})" if result.note else "n/a"
    if result.ci_low is None:
        return f"{result.value:.3f}"
    return f"{result.value:.3f} [{result.ci_low:.3f}, {result.ci_high:.3f}]"


@dataclass(frozen=True)
class CategoryRecogniser:
    """A linear probe on image features telling the LoRA's category from other article types,
    trained on real photos only (its accuracy on the real test split is the ceiling)."""

    model: Any
    category: str
    classes: tuple[str, ...]
    real_test_share: float  # share of real test photos of `category` recognised as it

    def recognised(self, feats: np.ndarray) -> np.ndarray:
        """1.0 for each image recognised as the category, else 0.0."""
        if not len(feats):
            return np.zeros(0)
        return (self.model.predict(feats) == self.category).astype(float)

    def share(self, feats: np.ndarray) -> float:
        return float(self.recognised(feats).mean()) if len(feats) else float("nan")


def category_recogniser(category: str, category_train: np.ndarray, category_test: np.ndarray,
                        others: np.ndarray, other_labels: Sequence[str],
                        seed: int = 0) -> CategoryRecogniser:
    """Logistic regression over {category} + the other article types, on real features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([category_train, others])
    y = np.array([category] * len(category_train) + list(other_labels))
    # Balanced: the category has several times the photos of each other type, and a probe fitted
    # to raw counts would recognise it in whatever is uncertain, even a base model that never saw it.
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed,
                                                               class_weight="balanced"))
    model.fit(x, y)
    rec = CategoryRecogniser(model, category, tuple(sorted(set(y))), 0.0)
    return CategoryRecogniser(model, category, rec.classes, rec.share(category_test))


@dataclass(frozen=True)
class RunComparison:
    """Two synthetic runs measured the same way against the same real photos."""

    table: pd.DataFrame       # measure, run_a, run_b, difference, verdict, n
    results: list[M.MetricResult]


def photo_check_table(frame: pd.DataFrame, thresholds: M.PhotoThresholds | None = None,
                      desc: str = "photo checks") -> pd.DataFrame:
    """`measure_photos` of a set plus `colour_match` (dominant colour = the colour asked for or
    labelled; NaN where that colour has no palette meaning) and `conforms`."""
    measures = M.measure_photos(list(frame["image_path"]), thresholds or M.PhotoThresholds(),
                                desc=desc)
    asked = [M.palette_name(c) for c in frame["colour"]]
    measures["colour_match"] = [float(a == f) if a is not None else np.nan
                                for a, f in zip(asked, measures["dominant_colour"], strict=True)]
    measures["conforms"] = measures["conforming"].astype(float)
    return measures


def compare_runs(name_a: str, feats_a: np.ndarray, checks_a: pd.DataFrame,
                 name_b: str, feats_b: np.ndarray, checks_b: pd.DataFrame,
                 real_test: np.ndarray, recogniser: CategoryRecogniser | None,
                 config: EvalConfig, feature_space: str) -> RunComparison:
    """KID against real test, category recognition and the photo checks of run A and run B
    side by side, each with its 95 % CI. A difference (a - b) is called one only when its
    bootstrap CI excludes 0: images of both runs (and, for KID, of the real test set, shared
    by both) are resampled together and the difference recomputed each time."""
    kid_a, kid_b = (M.kid(real_test, f, subsets=config.kid_subsets, min_images=config.min_images,
                          seed=config.seed, feature_space=feature_space)
                    for f in (feats_a, feats_b))
    rows, results = [], []
    n_boot, seed = config.bootstrap_samples, config.seed
    if kid_a.value is not None and kid_b.value is not None:
        diffs = M.bootstrap_statistic(
            lambda r, a, b: M.polynomial_mmd(r, a) - M.polynomial_mmd(r, b),
            (real_test, feats_a, feats_b), n_boot, seed)
        rows.append(_comparison_row("KID vs real test", name_a, kid_a, name_b, kid_b,
                                    kid_a.value - kid_b.value, M.percentile_interval(diffs),
                                    f"{len(real_test)} real, {len(feats_a)} / {len(feats_b)}"))
    results += [replace(kid_a, name=f"KID ({name_a})"), replace(kid_b, name=f"KID ({name_b})")]
    shares = []
    if recogniser is not None:
        shares.append((f"recognised as {recogniser.category}", recogniser.recognised(feats_a),
                       recogniser.recognised(feats_b)))
    for column, label in (("colour_match", "colour as asked"), ("conforms", "passes photo checks")):
        if column in checks_a and column in checks_b:
            shares.append((label, checks_a[column].dropna().to_numpy(dtype=float),
                           checks_b[column].dropna().to_numpy(dtype=float)))
    for label, a, b in shares:
        if not len(a) or not len(b):
            continue
        res_a, res_b = (M.with_ci(M.MetricResult(f"{label} ({name})", float(v.mean()), None, None,
                                                 len(v), "share; CI: bootstrap over images",
                                                 "higher"), M.mean_ci(v, n_boot, seed))
                        for name, v in ((name_a, a), (name_b, b)))
        diffs = M.bootstrap_statistic(lambda x, y: x.mean() - y.mean(), (a, b), n_boot, seed)
        rows.append(_comparison_row(label, name_a, res_a, name_b, res_b,
                                    res_a.value - res_b.value, M.percentile_interval(diffs),
                                    f"{len(a)} / {len(b)}"))
        results += [res_a, res_b]
    return RunComparison(pd.DataFrame(rows), results)


def _comparison_row(measure: str, name_a: str, a: M.MetricResult, name_b: str, b: M.MetricResult,
                    difference: float, interval: tuple[float, float], n: str) -> dict[str, Any]:
    def shown(r: M.MetricResult) -> str:
        return f"{r.value:.4f} [{r.ci_low:.4f}, {r.ci_high:.4f}]" if r.ci_low is not None \
            else f"{r.value:.4f}"

    return {"measure": measure, name_a: shown(a), name_b: shown(b),
            "difference (a - b)": round(difference, 4),
            "95 % CI of difference": f"[{interval[0]:.4f}, {interval[1]:.4f}]",
            "verdict": M.verdict(interval, name_a, name_b), "n": n}


def wilson_interval(share: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (sensible at small n and at 0 or 1)."""
    if n == 0 or share != share:
        return float("nan"), float("nan")
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)
