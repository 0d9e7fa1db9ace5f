"""Downstream value of synthetic images: does a colour classifier learn better with them?

A tiny CNN is trained from scratch on real-train, real-train + synthetic and synthetic only,
always tested on held-out real photos, over several seeds (mean ± std of accuracy and
macro-F1). Synthetic data helps most when mixed with real data, and only a real test set
can show it.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score
from torch import nn

from shoelib.images import open_rgb
from shoelib.metrics import MetricResult, palette_name


@dataclass(frozen=True)
class ClassifierConfig:
    """How the colour classifier is trained.

    Attributes:
        image_px: images are reduced to image_px x image_px (colour needs little resolution).
        steps: optimiser steps. The same for every training set, so a bigger (mixed) set
            wins only by what its images teach, not by more compute.
        batch_size: images per optimiser step.
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
        architecture: "tiny" (TinyColourCNN: colour needs little), "small" (SmallCNN:
            four batch-normalised stages, for article types, whose shapes need more) or
            "probe" (a linear probe on the frozen image embeddings of `backbone`).
        backbone: for "probe": a DINOv2 or CLIP model, hub id or local folder.
        device: torch device.
        threads: CPU threads while training and predicting; 0 keeps torch's count (the
            notebooks' `cpu_threads`). On a quiet 2-core machine 2 threads train the small CNN
            faster than 1 (benchmarks/bench_threads.py); on a machine busy with other work,
            one thread per process avoids their contention.
    """

    image_px: int = 32
    steps: int = 600
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    architecture: str = "tiny"
    backbone: str = ""
    device: str = "cpu"
    threads: int = 1


@dataclass(frozen=True)
class LabelledSet:
    """Images as a uint8 array (N, px, px, 3) with integer class labels (N,)."""

    name: str
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


class TinyColourCNN(nn.Module):
    """Three 3x3 conv layers and a linear head over global-average-pooled features."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Four stages of a batch-normalised 3x3 convolution (16-32-64-128 channels) and 2x2
    pooling, then a linear head over global-average-pooled features. A second convolution per
    stage cost 2.7x the time per step on this project's 2-core CPU."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        layers, prev = [], 3
        for c in (16, 32, 64, 128):
            layers += [nn.Conv2d(prev, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            prev = c
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(prev, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BackboneProbe(nn.Module):
    """A linear classifier on a frozen pretrained encoder's image embeddings.

    Takes the same input as the CNNs (pixels in [-0.5, 0.5]) and turns it back into images
    for the encoder. Embeddings are kept per distinct image (and mirror image), so the
    encoder sees each once however many training sets and seeds reuse it.
    """

    def __init__(self, n_classes: int, backbone) -> None:
        super().__init__()
        self.backbone = backbone
        dim = int(backbone.describe()["dim"])
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)  # embeddings of any scale
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.backbone_embeddings(x)))

    def backbone_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        pixels = ((x.detach().cpu() + 0.5) * 255).round().clamp(0, 255).to(torch.uint8)
        pixels = pixels.permute(0, 2, 3, 1).numpy()
        keys = [hashlib.sha1(p.tobytes()).hexdigest() for p in pixels]
        cache = _embedding_cache(self.backbone)
        missing = {k: i for i, k in enumerate(keys) if k not in cache}  # last index per image
        if missing:
            images = [Image.fromarray(pixels[i]) for i in missing.values()]
            for k, row in zip(missing, self.backbone(images), strict=True):
                cache[k] = torch.from_numpy(np.asarray(row, dtype=np.float32))
        return torch.stack([cache[k] for k in keys]).to(x.device)


_EMBEDDINGS: dict[int, dict[str, torch.Tensor]] = {}


def _embedding_cache(backbone) -> dict[str, torch.Tensor]:
    return _EMBEDDINGS.setdefault(id(backbone), {})


class BackboneError(ValueError):
    """A classifier backbone that cannot be loaded or is not an image encoder we know."""


@functools.cache
def load_backbone(source: str):
    """The frozen image encoder of a probe: a DINOv2 or CLIP model, by hub id or folder
    (loaded once per process)."""
    from transformers import AutoConfig

    from shoelib import metrics as M

    try:
        kind = AutoConfig.from_pretrained(source).model_type
    except (OSError, ValueError) as err:
        raise BackboneError(
            f"study_backbone={source!r} could not be loaded ({type(err).__name__}); pass a "
            "DINOv2 or CLIP model: a hub id (e.g. facebook/dinov2-base) or a local folder "
            "(`hf download <id> --local-dir models/<name>` on a machine with network)") from None
    if kind == "dinov2":
        return M.DinoFeatures(source)
    if kind == "clip":
        return M.ClipFeatures(M.load_clip(source))
    raise BackboneError(f"study_backbone={source!r} is a {kind!r} model; the probe takes a "
                        "DINOv2 or CLIP image encoder")


ARCHITECTURES = {"tiny": TinyColourCNN, "small": SmallCNN, "probe": BackboneProbe}


def load_pixels(paths: Sequence[str | Path], image_px: int) -> np.ndarray:
    """Images reduced to image_px x image_px RGB (BOX filter), stacked as uint8 (N, px, px, 3)."""
    from tqdm.auto import tqdm

    arrays = [np.asarray(open_rgb(p).resize((image_px, image_px), Image.Resampling.BOX))
              for p in tqdm(list(paths), desc="load pixels", leave=False)]
    return np.stack(arrays) if arrays else np.zeros((0, image_px, image_px, 3), np.uint8)


def select_classes(train_colours: Sequence[str | None], test_colours: Sequence[str | None],
                   min_per_class: int) -> list[str]:
    """Palette colours with at least `min_per_class` real training images and a test image.

    Rarer colours cannot be learnt or measured; they are left out of the study.
    """
    train = pd.Series([palette_name(c) for c in train_colours]).dropna().value_counts()
    test = {palette_name(c) for c in test_colours} - {None}
    return [c for c, n in train.items() if n >= min_per_class and c in test]


def encode_labels(colours: Sequence[str | None], classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(boolean mask of images whose colour is one of `classes`, their class indices)."""
    index = {c: i for i, c in enumerate(classes)}
    names = [palette_name(c) for c in colours]
    keep = np.array([n in index for n in names], dtype=bool)
    return keep, np.array([index[n] for n in names if n in index], dtype=np.int64)


def _to_tensor(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0 - 0.5


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with `n` torch CPU threads (0: the current count), restoring the previous
    number after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_classifier(data: LabelledSet, n_classes: int, config: ClassifierConfig,
                     seed: int) -> nn.Module:
    """Train the configured CNN from scratch (random horizontal flips), deterministic for a seed."""
    with torch_threads(config.threads):
        return _train(data, n_classes, config, seed)


def _train(data: LabelledSet, n_classes: int, config: ClassifierConfig, seed: int) -> nn.Module:
    if config.architecture not in ARCHITECTURES:
        raise ValueError(f"architecture={config.architecture!r} is not one of {sorted(ARCHITECTURES)}")
    torch.manual_seed(seed)
    if config.architecture == "probe":
        model = BackboneProbe(n_classes, load_backbone(config.backbone)).to(config.device)
    else:
        model = ARCHITECTURES[config.architecture](n_classes).to(config.device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                            lr=config.learning_rate, weight_decay=config.weight_decay)
    x, y = _to_tensor(data.x), torch.from_numpy(data.y)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    order = torch.zeros(0, dtype=torch.int64)
    for _ in range(config.steps):
        if len(order) < min(config.batch_size, len(y)):  # a new shuffled pass over the data
            order = torch.cat([order, torch.randperm(len(y), generator=gen)])
        idx, order = order[:config.batch_size], order[config.batch_size:]
        xb = x[idx]
        flip = torch.rand(len(idx), generator=gen) < 0.5
        xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        loss = nn.functional.cross_entropy(model(xb.to(config.device)), y[idx].to(config.device))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def predict(model: nn.Module, x: np.ndarray, batch_size: int = 256, device: str = "cpu") -> np.ndarray:
    """Class index of every image."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            out.append(model(_to_tensor(x[start:start + batch_size]).to(device)).argmax(1).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, np.int64)


def run_classifiers(train_sets: Sequence[LabelledSet], test: LabelledSet, n_classes: int,
                    config: ClassifierConfig, seeds: Sequence[int]) -> pd.DataFrame:
    """Train on each training set with each seed; score on the real test set.

    Returns:
        One row per (training set, seed): training_set, seed, n_train, n_test, accuracy,
        macro_f1 (over the `n_classes` classes, absent ones counting as 0).
    """
    from tqdm.auto import tqdm

    rows = []
    runs = [(s, seed) for s in train_sets for seed in seeds]
    for data, seed in tqdm(runs, desc="downstream classifiers", leave=False):
        if len(data) == 0:
            continue
        model = train_classifier(data, n_classes, config, seed)
        with torch_threads(config.threads):
            pred = predict(model, test.x, device=config.device)
        rows.append({
            "training_set": data.name, "seed": seed, "n_train": len(data), "n_test": len(test),
            "accuracy": float(accuracy_score(test.y, pred)),
            "macro_f1": float(f1_score(test.y, pred, labels=list(range(n_classes)),
                                       average="macro", zero_division=0)),
        })
    return pd.DataFrame(rows, columns=["training_set", "seed", "n_train", "n_test",
                                       "accuracy", "macro_f1"])


def summarise_study(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (over seeds) of accuracy and macro-F1 per training set, in run order."""
    order = list(dict.fromkeys(runs["training_set"]))
    g = runs.groupby("training_set", sort=False)
    out = pd.DataFrame({
        "n_train": g["n_train"].first(), "n_test": g["n_test"].first(), "seeds": g["seed"].count(),
        "accuracy_mean": g["accuracy"].mean(), "accuracy_std": g["accuracy"].std(ddof=0),
        "macro_f1_mean": g["macro_f1"].mean(), "macro_f1_std": g["macro_f1"].std(ddof=0),
    })
    return out.loc[order].reset_index()


def majority_baseline(train_y: np.ndarray, test_y: np.ndarray, n_classes: int) -> dict[str, float]:
    """Scores of always answering the training set's most frequent class.

    This, not 1/n_classes, is the bar a classifier must clear: colours are imbalanced
    (one colour can be a third of a category), so the majority answer alone scores well.

    Returns:
        {"class": index of the majority class, "accuracy": ..., "macro_f1": ...} on test_y.
    """
    if len(train_y) == 0 or len(test_y) == 0:
        raise ValueError(f"the majority baseline needs training and test labels; got "
                         f"{len(train_y)} training and {len(test_y)} test labels")
    majority = int(np.bincount(train_y, minlength=n_classes).argmax())
    pred = np.full(len(test_y), majority)
    return {"class": majority, "accuracy": float(accuracy_score(test_y, pred)),
            "macro_f1": float(f1_score(test_y, pred, labels=list(range(n_classes)),
                                       average="macro", zero_division=0))}


def study_results(summary: pd.DataFrame, n_classes: int,
                  baseline: dict[str, float]) -> list[MetricResult]:
    """The study as table rows: accuracy and macro-F1 per training set (mean ± std over
    seeds), then the majority-class baseline (`majority_baseline`) they must beat."""
    out = []
    n_test = int(summary["n_test"].iloc[0]) if len(summary) else None
    for row in summary.itertuples():
        for metric in ("accuracy", "macro_f1"):
            out.append(MetricResult(
                f"classifier {metric.replace('_', '-')} ({row.training_set})",
                float(getattr(row, f"{metric}_mean")), float(getattr(row, f"{metric}_std")),
                n_real=int(row.n_test),
                note=f"trained on {row.n_train} images, {n_classes} colours, tested on real "
                     f"test; mean ± std over {row.seeds} seeds; majority baseline = "
                     f"{baseline[metric]:.2f}",
                better="higher"))
    for metric in ("accuracy", "macro_f1"):
        out.append(MetricResult(
            f"classifier {metric.replace('_', '-')} (majority baseline)", baseline[metric],
            n_real=n_test, note="always the most frequent colour of the real training set",
            better="higher"))
    return out
