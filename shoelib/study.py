"""The downstream study: do synthetic images help a classifier, at which share of real data?

A small CNN is trained from scratch on nested fractions of the real training photos (10, 25,
50, 100 %), on each fraction plus synthetic images at 1x and 2x its real count, and on the
synthetic images alone, over several seeds, always with the same number of optimizer steps
(more data must not mean more training), and always tested on the same real test photos.
The published effect of synthetic training data lives in the low-data regime and in per-class
gains, and turns into a loss when synthetic images swamp the real ones, so the study reports
the whole curve and a verdict per regime.

Uncertainty: a two-level bootstrap, over seeds and over test images, gives the 95 % interval
of each set's accuracy and macro-F1 and of the difference between "fraction + synthetic" and
"fraction alone" (paired: the same test images). A verdict is "helped" or "hurt" only when the
interval of that difference excludes 0; otherwise "no detectable difference".

Runs are resumable: each finished (training set, seed) run is written to `runs.jsonl` with its
test predictions, and a rerun trains only what is missing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from shoelib.classifier import (
    ClassifierConfig,
    LabelledSet,
    load_backbone,
    predict,
    torch_threads,
    train_classifier,
)
from shoelib.io import write_text

RUNS_FILE = "runs.jsonl"


class StudyConfigError(ValueError):
    """A study setting is out of range."""


@dataclass(frozen=True)
class StudyConfig:
    """What the study trains.

    Attributes:
        fractions: shares of the real training photos (nested: the 10 % set is inside the
            25 % set ...), each drawn per class so every class keeps at least one photo.
        synthetic_multiples: synthetic images added per real image of the set (1x and 2x:
            the range where the literature finds gains, and where it finds them turning into
            losses).
        synthetic_only: also train on the synthetic images alone.
        seeds: one classifier per seed and training set (>= 3 for an interval).
        classifier: the CNN's input size, steps, batch and learning rate (the same for every
            training set).
        subset_seed: draws the nested real fractions and the synthetic subsets.
        bootstrap: resamples of the two-level bootstrap.
    """

    fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    synthetic_multiples: tuple[float, ...] = (1.0, 2.0)
    synthetic_only: bool = True
    seeds: tuple[int, ...] = (0, 1, 2)
    classifier: ClassifierConfig = field(default_factory=lambda: ClassifierConfig(image_px=64, steps=300))
    subset_seed: int = 0
    bootstrap: int = 1000

    def __post_init__(self) -> None:
        if not self.fractions or not all(isinstance(f, (int, float)) and 0 < f <= 1
                                         for f in self.fractions):
            raise StudyConfigError(f"study_fractions={list(self.fractions)!r} must be shares in "
                                   "(0, 1]; use e.g. [0.1, 0.25, 0.5, 1.0]")
        if not all(isinstance(m, (int, float)) and m > 0 for m in self.synthetic_multiples):
            raise StudyConfigError(f"study_synthetic_multiples={list(self.synthetic_multiples)!r} "
                                   "must be positive; use e.g. [1, 2]")
        if len(set(self.seeds)) < 3:
            raise StudyConfigError(f"study_seeds={list(self.seeds)!r} needs at least 3 different "
                                   "seeds for an interval; use e.g. [0, 1, 2]")
        if self.bootstrap < 100:
            raise StudyConfigError(f"bootstrap={self.bootstrap} is too few resamples; use 1000")


TASKS = ("article type", "colour")


def _number_list(value, param: str, example: str) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise StudyConfigError(f"{param}={value!r} must be a list of numbers; use e.g. {example}")
    return tuple(value)


CLASSIFIERS = ("small", "probe")


def config_from_params(*, study_fractions, study_synthetic_multiples, study_seeds, study_steps,
                       study_image_px, study_tasks, cpu_threads, study_classifier="small",
                       study_backbone="") -> tuple[StudyConfig, list[str]]:
    """09's parameters as a StudyConfig and its tasks; a bad value is one line naming it.

    A probe's backbone is loaded here, so a model that cannot load stops the study before
    any classifier trains.
    """
    from shoelib import checks

    fractions = _number_list(study_fractions, "study_fractions", "[0.1, 0.25, 0.5, 1.0]")
    multiples = _number_list(study_synthetic_multiples, "study_synthetic_multiples", "[1, 2]")
    seeds = _number_list(study_seeds, "study_seeds", "[0, 1, 2]")
    for s in seeds:
        checks.random_seed(s, "study_seeds", StudyConfigError)
    if (not isinstance(study_tasks, (list, tuple)) or not study_tasks
            or any(t not in TASKS for t in study_tasks)):
        raise StudyConfigError(f"study_tasks={study_tasks!r} must be a list drawn from {list(TASKS)}")
    if study_classifier not in CLASSIFIERS:
        raise StudyConfigError(f"study_classifier={study_classifier!r} must be one of "
                               f"{list(CLASSIFIERS)} (small: a CNN from scratch; probe: a linear "
                               "probe on study_backbone's embeddings)")
    if study_classifier == "probe":
        if not isinstance(study_backbone, str) or not study_backbone.strip():
            raise StudyConfigError("study_classifier='probe' needs study_backbone: a DINOv2 or "
                                   "CLIP model, e.g. facebook/dinov2-base or a local folder")
        load_backbone(study_backbone)
    classifier = ClassifierConfig(
        image_px=checks.whole_number(study_image_px, "study_image_px", 8, 64, StudyConfigError),
        steps=checks.whole_number(study_steps, "study_steps", 1, 300, StudyConfigError),
        architecture=study_classifier,
        backbone=study_backbone if study_classifier == "probe" else "",
        threads=checks.whole_number(cpu_threads, "cpu_threads", 0, 1, StudyConfigError))
    return StudyConfig(fractions=fractions, synthetic_multiples=multiples, seeds=tuple(seeds),
                       classifier=classifier), list(study_tasks)


@dataclass(frozen=True)
class TrainingSet:
    """Indices into the real pool and the synthetic pool that one classifier trains on."""

    name: str
    fraction: float | None     # share of the real training photos; None = synthetic only
    multiple: float            # synthetic images per real image of the set
    real: np.ndarray
    synthetic: np.ndarray
    note: str = ""


def nested_fractions(labels: Sequence[str], fractions: Sequence[float], seed: int) -> dict[float, np.ndarray]:
    """Indices of each fraction of `labels`, drawn per class (at least one photo of each class),
    nested: a smaller fraction is the head of every larger one."""
    labels = np.asarray(labels, dtype=object)
    rng = np.random.default_rng(seed)
    orders = {c: rng.permutation(np.flatnonzero(labels == c)) for c in sorted(set(labels))}
    return {f: np.sort(np.concatenate([o[:max(1, math.ceil(f * len(o)))] for o in orders.values()]))
            for f in fractions}


def training_sets(real_labels: Sequence[str], synthetic_labels: Sequence[str],
                  config: StudyConfig) -> list[TrainingSet]:
    """Every training set of the study, smallest real fraction first.

    The synthetic count of "fraction + k x synthetic" is k times the set's real photos (the
    literature's definition), drawn as the head of one seeded order (so 1x is inside 2x) and
    capped at the images the run has: the note says when a cap applies, and a larger multiple
    capped to the same images as a smaller one is not trained again.
    """
    synthetic_labels = np.asarray(synthetic_labels, dtype=object)
    order = np.random.default_rng(config.subset_seed + 1).permutation(len(synthetic_labels))
    real_labels = np.asarray(real_labels, dtype=object)
    sets = []
    for f, real in nested_fractions(real_labels, config.fractions, config.subset_seed).items():
        sets.append(TrainingSet(f"real {f:.0%}", f, 0.0, real, np.zeros(0, np.int64)))
        taken = 0
        for k in sorted(config.synthetic_multiples) if len(synthetic_labels) else ():
            want = int(round(k * len(real)))
            take = order[:want]
            if len(take) == taken:  # capped to the set of the smaller multiple: nothing new to learn
                sets[-1] = replace(sets[-1], note=f"{sets[-1].note}; {k:g}x ({want}) capped to the same set")
                continue
            taken = len(take)
            note = (f"{want} synthetic images wanted, the run has {len(order)}"
                    if want > len(order) else "")
            sets.append(TrainingSet(f"real {f:.0%} + {k:g}x synthetic", f, float(k), real,
                                    np.sort(take), note))
    if config.synthetic_only and len(synthetic_labels):
        sets.append(TrainingSet("synthetic only", None, 0.0, np.zeros(0, np.int64),
                                np.arange(len(synthetic_labels))))
    return sets


@dataclass(frozen=True)
class StudyPools:
    """The study's images, each frame with image_path, articleType and colour."""

    real: pd.DataFrame        # real training pool (the fractions are drawn from it)
    test: pd.DataFrame        # real test photos (every set is scored on these)
    synthetic: pd.DataFrame   # the synthetic run's images
    notes: tuple[str, ...]


def chain_pools(category: str, train: pd.DataFrame, test: pd.DataFrame,
                synthetic: pd.DataFrame, others: pd.DataFrame, *, seed: int,
                test_share: float = 0.3) -> StudyPools:
    """Pools for the chain's categories: their own train/test splits (02's), their synthetic
    images, and the real photos of the other article types split per type into train and
    test (`test_share` of each, seeded) so that the classifier has classes to tell apart.

    The chain's splits are used as they are (no test photo is trained, and no photo the LoRA
    trained on is tested). With several categories the frames carry a `category` column
    (`evaluation.load_eval_sets`); otherwise every image is of `category`."""
    parts = []
    for _, group in others.groupby("articleType", sort=True):
        order = np.random.default_rng(seed).permutation(len(group))
        n_test = max(1, int(round(test_share * len(group))))
        parts.append((group.iloc[order[n_test:]], group.iloc[order[:n_test]]))
    notes = [] if len(synthetic) else ["the synthetic run has no images: only real sets are trained"]
    columns = ["image_path", "articleType", "colour"]

    def own(frame: pd.DataFrame) -> pd.DataFrame:
        types = frame["category"] if "category" in frame.columns else category
        return frame.assign(articleType=types)[columns].reset_index(drop=True)

    return StudyPools(
        pd.concat([own(train)] + [p[0][columns] for p in parts], ignore_index=True),
        pd.concat([own(test)] + [p[1][columns] for p in parts], ignore_index=True),
        own(synthetic), tuple(notes))


def task_classes(pools: StudyPools, task: str, min_per_class: int = 5) -> list[str]:
    """The classes of a task: "article type" (every type with real training and test photos)
    or "colour" (palette colours with `min_per_class` real training photos and a test one)."""
    from shoelib.classifier import select_classes

    if task == "colour":
        return select_classes(pools.real["colour"], pools.test["colour"], min_per_class)
    if task == "article type":
        return sorted(set(pools.real["articleType"]) & set(pools.test["articleType"]))
    raise StudyConfigError(f"study task {task!r} is not one of ['article type', 'colour']")


def labelled(pools_frame: pd.DataFrame, task: str, classes: Sequence[str], px: int,
             name: str) -> LabelledSet:
    """The images of a pool whose label (article type or palette colour) is one of `classes`."""
    from shoelib.classifier import encode_labels, load_pixels

    if task == "colour":
        keep, y = encode_labels(list(pools_frame["colour"]), classes)
    else:
        index = {c: i for i, c in enumerate(classes)}
        keep = pools_frame["articleType"].isin(classes).to_numpy()
        y = np.array([index[c] for c in pools_frame["articleType"][keep]], dtype=np.int64)
    return LabelledSet(name, load_pixels(list(pools_frame["image_path"][keep]), px), y)


def _stack(pool_x: np.ndarray, pool_y: np.ndarray, syn_x: np.ndarray, syn_y: np.ndarray,
           ts: TrainingSet) -> LabelledSet:
    return LabelledSet(ts.name, np.concatenate([pool_x[ts.real], syn_x[ts.synthetic]]),
                       np.concatenate([pool_y[ts.real], syn_y[ts.synthetic]]).astype(np.int64))


def read_runs(folder: str | Path) -> list[dict]:
    """The finished runs of a study folder ([] when none)."""
    path = Path(folder) / RUNS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def run_study(real: LabelledSet, synthetic: LabelledSet, test: LabelledSet, classes: Sequence[str],
              config: StudyConfig, folder: str | Path, *, task: str = "article type") -> pd.DataFrame:
    """Train and test every (training set, seed), skipping those `folder` already holds.

    Args:
        real: the real training pool (labels index `classes`).
        synthetic: the synthetic pool (may be empty).
        test: the real test photos.
        classes: class names; label i is classes[i].
        config: the study settings.
        folder: where runs.jsonl is kept (one line per finished run, rewritten atomically).
        task: a name for the labels ("article type", "colour"), part of each run's key.

    Returns:
        One row per run: task, training_set, fraction, multiple, seed, n_real, n_synthetic,
        note, predictions (list of class indices on `test`).
    """
    from tqdm.auto import tqdm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    done = read_runs(folder)
    settings = {"classes": list(classes), "n_test": len(test), "subset_seed": config.subset_seed,
                "classifier": asdict(config.classifier)}
    keep = [r for r in done if r["settings"] == settings]  # other settings: those runs are stale
    have = {(r["task"], r["training_set"], r["seed"]) for r in keep}
    sets = training_sets([classes[i] for i in real.y], [classes[i] for i in synthetic.y], config)
    todo = [(ts, s) for ts in sets for s in config.seeds if (task, ts.name, s) not in have]
    for ts, seed in tqdm(todo, desc=f"study ({task})", leave=False):
        data = _stack(real.x, real.y, synthetic.x, synthetic.y, ts)
        model = train_classifier(data, len(classes), config.classifier, seed)
        with torch_threads(config.classifier.threads):
            pred = predict(model, test.x, device=config.classifier.device)
        keep.append({"task": task, "training_set": ts.name, "fraction": ts.fraction,
                     "multiple": ts.multiple, "seed": seed, "n_real": len(ts.real),
                     "n_synthetic": len(ts.synthetic), "note": ts.note,
                     "predictions": pred.tolist(), "settings": settings})
        write_text(folder / RUNS_FILE, "".join(json.dumps(r) + "\n" for r in keep))
    order = {(ts.name, s): i for i, (ts, s) in enumerate((ts, s) for ts in sets for s in config.seeds)}
    rows = sorted((r for r in keep if r["task"] == task and (r["training_set"], r["seed"]) in order),
                  key=lambda r: order[(r["training_set"], r["seed"])])
    notes = {ts.name: ts.note for ts in sets}  # the current sets' notes, not a stored run's
    return pd.DataFrame(rows).drop(columns="settings").assign(
        note=lambda f: f["training_set"].map(notes))


def _scores(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> tuple[float, float]:
    """Accuracy and macro-F1 over all `n_classes` (a class never seen nor predicted counts 0,
    as sklearn's zero_division=0), from one confusion matrix: the bootstrap calls this
    thousands of times."""
    cm = np.bincount(truth * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    tp = np.diag(cm).astype(float)
    denominator = cm.sum(0) + cm.sum(1)  # 2tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros(n_classes), where=denominator > 0)
    return float(tp.sum() / len(truth)), float(f1.mean())


def _bootstrap_draws(n_seeds: int, n_test: int, b: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_seeds, (b, n_seeds)), rng.integers(0, n_test, (b, n_test))


def _resampled(preds: np.ndarray, truth: np.ndarray, n_classes: int, seed_draw: np.ndarray,
               image_draw: np.ndarray) -> np.ndarray:
    """(b, 2) accuracy and macro-F1, each the mean over the resampled seeds on the resampled
    test images."""
    out = np.empty((len(seed_draw), 2))
    for i, (s, t) in enumerate(zip(seed_draw, image_draw, strict=True)):
        out[i] = np.mean([_scores(preds[k][t], truth[t], n_classes) for k in s], axis=0)
    return out


def summarise(runs: pd.DataFrame, truth: Sequence[int], classes: Sequence[str],
              config: StudyConfig) -> pd.DataFrame:
    """Per training set: accuracy and macro-F1 (mean over seeds) with their 95 % bootstrap
    intervals, and the recall of every class (mean over seeds)."""
    truth = np.asarray(truth)
    n_classes = len(classes)
    rows = []
    for name, group in runs.groupby("training_set", sort=False):
        preds = np.array(group["predictions"].tolist())
        seed_draw, image_draw = _bootstrap_draws(len(preds), len(truth), config.bootstrap,
                                                 config.subset_seed)
        boot = _resampled(preds, truth, n_classes, seed_draw, image_draw)
        point = np.mean([_scores(p, truth, n_classes) for p in preds], axis=0)
        lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
        row = {"training_set": name, "fraction": group["fraction"].iloc[0],
               "multiple": group["multiple"].iloc[0], "n_real": int(group["n_real"].iloc[0]),
               "n_synthetic": int(group["n_synthetic"].iloc[0]), "seeds": len(preds),
               "n_test": len(truth), "accuracy": point[0], "accuracy_lo": lo[0],
               "accuracy_hi": hi[0], "macro_f1": point[1], "macro_f1_lo": lo[1],
               "macro_f1_hi": hi[1], "note": group["note"].iloc[0]}
        for c, label in enumerate(classes):
            mask = truth == c
            row[f"recall {label}"] = float((preds[:, mask] == c).mean()) if mask.any() else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def verdicts(runs: pd.DataFrame, truth: Sequence[int], classes: Sequence[str], config: StudyConfig,
             focus_class: str | None = None) -> pd.DataFrame:
    """Each "fraction + k x synthetic" set against the same fraction alone.

    The difference in accuracy (and in `focus_class`'s recall, when given) with its 95 %
    interval from the paired two-level bootstrap (the same resampled test images for both
    sets, seeds resampled in each); "helped"/"hurt" only when the interval excludes 0.
    """
    truth = np.asarray(truth)
    focus = list(classes).index(focus_class) if focus_class is not None else None
    groups = {name: g for name, g in runs.groupby("training_set", sort=False)}
    rows = []
    for group in groups.values():
        multiple = group["multiple"].iloc[0]
        fraction = group["fraction"].iloc[0]
        if not multiple or fraction is None or np.isnan(fraction):
            continue
        base = groups[f"real {fraction:.0%}"]
        a, b = np.array(group["predictions"].tolist()), np.array(base["predictions"].tolist())
        rng = np.random.default_rng(config.subset_seed + 7)
        diffs, recall_diffs = [], []
        point = np.mean([(p == truth).mean() for p in a]) - np.mean([(p == truth).mean() for p in b])
        for _ in range(config.bootstrap):
            t = rng.integers(0, len(truth), len(truth))
            sa, sb = rng.integers(0, len(a), len(a)), rng.integers(0, len(b), len(b))
            diffs.append((a[sa][:, t] == truth[t]).mean() - (b[sb][:, t] == truth[t]).mean())
            if focus is not None:
                m = truth[t] == focus
                recall_diffs.append((a[sa][:, t][:, m] == focus).mean() - (b[sb][:, t][:, m] == focus).mean()
                                    if m.any() else np.nan)
        lo, hi = np.percentile(diffs, [2.5, 97.5])
        row = {"regime": f"{fraction:.0%} real", "synthetic": f"{multiple:g}x",
               "n_synthetic": int(group["n_synthetic"].iloc[0]), "note": group["note"].iloc[0],
               "accuracy difference": point, "accuracy_lo": lo, "accuracy_hi": hi,
               "verdict": _verdict(lo, hi, fraction, multiple)}
        if focus is not None:
            mask = truth == focus
            row[f"{focus_class} recall difference"] = float(
                (a[:, mask] == focus).mean() - (b[:, mask] == focus).mean())
            rlo, rhi = np.nanpercentile(recall_diffs, [2.5, 97.5])
            row["recall_lo"], row["recall_hi"] = rlo, rhi
            row["recall verdict"] = _verdict(rlo, rhi, fraction, multiple, f"{focus_class} recall")
        rows.append(row)
    return pd.DataFrame(rows)


def _verdict(lo: float, hi: float, fraction: float, multiple: float, what: str = "accuracy") -> str:
    where = f"at {fraction:.0%} real ({multiple:g}x synthetic)"
    if lo > 0:
        return f"synthetic data helped {what} {where}"
    if hi < 0:
        return f"synthetic data hurt {what} {where}"
    return f"no detectable difference in {what} {where}"


def curve_figure(summary: pd.DataFrame, title: str = "accuracy on the real test photos"):
    """Accuracy against the real fraction: real only, and with each synthetic multiple (95 %
    intervals as bars); synthetic only as a dashed line."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    with_real = summary[summary["fraction"].notna()]
    for multiple, group in with_real.groupby("multiple"):
        label = "real only" if not multiple else f"real + {multiple:g}x synthetic"
        x = group["fraction"] * 100
        ax.errorbar(x, group["accuracy"], yerr=[group["accuracy"] - group["accuracy_lo"],
                                                  group["accuracy_hi"] - group["accuracy"]],
                    marker="o", capsize=3, label=label)
    only = summary[summary["fraction"].isna()]
    if len(only):
        ax.axhline(float(only["accuracy"].iloc[0]), ls="--", color="grey", label="synthetic only")
    ax.set_xscale("log")
    ticks = sorted(with_real["fraction"].unique() * 100)
    ax.set_xticks(ticks, [f"{t:g} %" for t in ticks])
    ax.set_xlabel("share of the real training photos")
    ax.set_ylabel("accuracy (mean over seeds, 95 % CI)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
