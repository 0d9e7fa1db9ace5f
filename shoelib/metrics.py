"""Measures of a synthetic image set against real product photos.

Four families, each a set of small functions on arrays so that tests can feed known cases:

- fidelity (KID, FID, CMMD) on feature matrices from an injectable `FeatureExtractor`
  (CLIP image embeddings for the real run, weight-free pixel statistics anywhere);
- text alignment: CLIP score of each image against its own prompt;
- weight-free photo checks: dominant foreground colour vs the colour asked for, product-photo
  conformity (white background, centred, fully in frame), perceptual hashes for diversity;
- memorisation: nearest real training image of each synthetic one in a feature space.

A metric that cannot give a meaningful number (too few images, no model) returns a
`MetricResult` whose `value` is None and whose `note` says why and what it needs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from PIL import Image
from scipy import fft, ndimage

from shoelib.images import open_rgb

# --- results


@dataclass(frozen=True)
class MetricResult:
    """One number of the evaluation table, with the N it was computed on.

    Attributes:
        name: what is measured ("KID", "colour accuracy", ...).
        value: the number; None when it could not be computed meaningfully (see `note`).
        std: spread (over subsets, seeds or images, as `note` says); None if not applicable.
        n_real: real images it used (None if none).
        n_synthetic: synthetic images it used (None if none).
        note: how to read it, or why `value` is None and what would fix it.
        better: "lower", "higher" or "" (no direction).
    """

    name: str
    value: float | None
    std: float | None = None
    n_real: int | None = None
    n_synthetic: int | None = None
    note: str = ""
    better: str = ""

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


class TooFewImagesError(ValueError):
    """A metric was asked for with fewer images than it needs to mean anything."""


def require_images(metric: str, which: str, have: int, need: int) -> None:
    """Raise TooFewImagesError naming the metric, the set and how many images are needed."""
    if have < need:
        raise TooFewImagesError(
            f"{metric} needs at least {need} {which} images; got {have} "
            f"({need - have} more needed)"
        )


def results_table(results: Sequence[MetricResult]) -> pd.DataFrame:
    """The summary table: one row per MetricResult (image counts stay integers, blank if none)."""
    table = pd.DataFrame([r.as_row() for r in results])
    for column in ("n_real", "n_synthetic"):
        if column in table:
            table[column] = table[column].astype("Int64")
    return table


# --- images


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# --- feature extractors


class FeatureExtractor(Protocol):
    """Turns a batch of RGB images into an (N, d) float matrix.

    `describe()` returns what a report must state for the numbers to be comparable:
    the model, its input size and resize method, and library versions.
    """

    name: str

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class PixelFeatures:
    """Weight-free features: a joint RGB histogram plus a tiny thumbnail.

    Runs everywhere without downloads. It sees colour and layout, not shape, so fidelity
    numbers on it are a sanity check, not a substitute for CLIP or Inception features.

    Attributes:
        hist_bins: bins per RGB channel of the joint histogram (hist_bins**3 features).
        thumb_px: side of the RGB thumbnail (3 * thumb_px**2 features, values in [0, 1]).
    """

    hist_bins: int = 4
    thumb_px: int = 4
    name: str = "pixels"

    @property
    def dim(self) -> int:
        return self.hist_bins**3 + 3 * self.thumb_px**2

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        return np.stack([self._one(im) for im in images]).astype(np.float64)

    def _one(self, image: Image.Image) -> np.ndarray:
        rgb = np.asarray(image.convert("RGB"), dtype=np.int64)
        q = rgb * self.hist_bins // 256
        codes = (q[..., 0] * self.hist_bins + q[..., 1]) * self.hist_bins + q[..., 2]
        hist = np.bincount(codes.ravel(), minlength=self.hist_bins**3) / codes.size
        thumb = image.convert("RGB").resize((self.thumb_px, self.thumb_px), Image.Resampling.BOX)
        return np.concatenate([hist, np.asarray(thumb, dtype=np.float64).ravel() / 255.0])

    def describe(self) -> dict[str, Any]:
        return {"extractor": self.name, "dim": self.dim, "weights": "none",
                "resize": f"PIL BOX to {self.thumb_px}x{self.thumb_px} (thumbnail part only)",
                "versions": library_versions()}


class EncoderFeatures:
    """Penultimate-layer embeddings of the image encoder `python -m shoelib.pretrain` trains
    (a CNN classifying article type and colour on real catalogue photos): a domain-specific
    feature space for KID, FD and nearest neighbours where no pretrained network is available.

    Images are letterboxed to the encoder's resolution (as in its training) and scaled to [-1, 1].
    """

    name = "catalog-encoder"

    def __init__(self, folder: str | Path) -> None:
        from shoelib.pretrain import load_encoder

        self.folder = Path(folder)
        self.model, self.labels = load_encoder(folder)

    def tensor(self, images: Sequence[Image.Image]):
        import torch

        from shoelib.images import letterbox

        side = self.model.resolution
        arrays = [np.asarray(letterbox(im, side), dtype=np.float32) for im in images]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.model.embed(self.tensor(images)).double().numpy()

    def describe(self) -> dict[str, Any]:
        return {"extractor": self.name, "dim": int(self.model.type_head.in_features),
                "weights": str(self.folder.name),
                "resize": f"letterbox to {self.model.resolution}x{self.model.resolution} (PIL LANCZOS)",
                "versions": library_versions()}


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour moves metric values."""
    import PIL
    import scipy
    import torch
    import torchmetrics
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "torchmetrics": torchmetrics.__version__, "pillow": PIL.__version__,
            "numpy": np.__version__, "scipy": scipy.__version__}


def extract_features(paths: Sequence[str | Path], extractor: FeatureExtractor,
                     batch_size: int = 32, desc: str = "features") -> np.ndarray:
    """Features of the images at `paths`, read in batches (never all in memory).

    Returns:
        (len(paths), d) float64 matrix; (0, 0) for no paths.
    """
    from tqdm.auto import tqdm

    chunks = []
    for chunk in tqdm(list(batches(list(paths), batch_size)), desc=desc, leave=False):
        chunks.append(np.asarray(extractor([open_rgb(p) for p in chunk]), dtype=np.float64))
    return np.concatenate(chunks) if chunks else np.zeros((0, 0))


# --- CLIP


@dataclass(frozen=True)
class ClipBundle:
    """A CLIP model and its processor.

    Attributes:
        model: transformers CLIPModel (eval mode).
        processor: matching CLIPProcessor (tokenizer + image processor).
        name: hub id or folder it came from, or "tiny-random".
        random_weights: True for the offline stand-in: its numbers mean nothing.
        device: where the model runs.
    """

    model: Any
    processor: Any
    name: str
    random_weights: bool = False
    device: str = "cpu"


class ClipUnavailableError(FileNotFoundError):
    """The CLIP model named by `clip_model` could not be loaded."""


def load_clip(name: str, device: str = "cpu") -> ClipBundle | None:
    """Load CLIP for CLIP score, CMMD and CLIP features.

    Args:
        name: hub id (e.g. "openai/clip-vit-large-patch14") or local folder; "tiny-random"
            for a random-weight offline stand-in (demo and tests: numbers are meaningless);
            "none" to skip everything that needs CLIP.
        device: torch device for the model.

    Returns:
        The bundle, or None for "none".

    Raises:
        ClipUnavailableError: the id/folder cannot be loaded (no network, typo).
    """
    if name.strip().lower() == "none":
        return None
    if name == "tiny-random":
        return tiny_random_clip(device=device)
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(name).eval().to(device)
        processor = CLIPProcessor.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise ClipUnavailableError(
            f"clip_model={name!r} could not be loaded ({type(err).__name__}: {err}). Use a hub "
            "id on a machine with network access (openai/clip-vit-large-patch14), a local "
            "folder saved with save_pretrained, or 'none' to skip CLIP score and CMMD."
        ) from None
    return ClipBundle(model, processor, name, random_weights=False, device=device)


def tiny_random_clip(seed: int = 0, device: str = "cpu", image_px: int = 32) -> ClipBundle:
    """A CLIP model with random weights built offline from small configs.

    It exercises the exact code path of the real model; every number it gives is noise.
    """
    import tempfile

    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer

    from shoelib.tiny_sd import write_tokenizer_files

    with tempfile.TemporaryDirectory() as tmp:
        vocab_size = write_tokenizer_files(Path(tmp))
        tokenizer = CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"),
                                  model_max_length=77)
    image_processor = _pil_clip_image_processor(image_px)
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    config = CLIPConfig(
        text_config={"vocab_size": vocab_size, "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 4,
                     "max_position_embeddings": 77, "bos_token_id": tokenizer.bos_token_id,
                     "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "image_size": image_px, "patch_size": 8},
        projection_dim=32,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval().to(device)
    return ClipBundle(model, processor, "tiny-random", random_weights=True, device=device)


def _pil_clip_image_processor(image_px: int) -> Any:
    """CLIP's image preprocessing (bicubic shortest-edge resize, centre crop, CLIP mean/std).

    The PIL backend: the default backend needs torchvision, which this project avoids.
    """
    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:  # older transformers: the slow processor is the PIL one
        from transformers import CLIPImageProcessor as Processor
    return Processor(size={"shortest_edge": image_px},
                     crop_size={"height": image_px, "width": image_px})


def _embedding(output: Any) -> Any:
    """transformers >= 5 returns a model output whose pooler_output is the projection."""
    return output if hasattr(output, "norm") else output.pooler_output


def clip_image_embeddings(clip: ClipBundle, images: Sequence[Image.Image],
                          normalise: bool = True) -> np.ndarray:
    """CLIP image embeddings, (N, projection_dim), L2-normalised unless `normalise` is False."""
    import torch

    pixels = clip.processor(images=list(images), return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        emb = _embedding(clip.model.get_image_features(pixel_values=pixels.to(clip.device)))
    if normalise:
        emb = emb / emb.norm(dim=-1, keepdim=True)
    return emb.float().cpu().numpy().astype(np.float64)


def clip_text_embeddings(clip: ClipBundle, texts: Sequence[str]) -> np.ndarray:
    """L2-normalised CLIP text embeddings, (N, projection_dim); prompts cut at 77 tokens."""
    import torch

    tokens = clip.processor.tokenizer(list(texts), padding=True, truncation=True,
                                      max_length=77, return_tensors="pt")
    tokens = {k: v.to(clip.device) for k, v in tokens.items()}
    with torch.inference_mode():
        emb = _embedding(clip.model.get_text_features(**tokens))
    emb = emb / emb.norm(dim=-1, keepdim=True)
    return emb.float().cpu().numpy().astype(np.float64)


def clip_scores(clip: ClipBundle, images: Sequence[Image.Image], prompts: Sequence[str]) -> np.ndarray:
    """CLIP score of each image against its own prompt: 100 * max(cos, 0) (Hessel et al. 2021).

    Same definition as torchmetrics' CLIPScore, per image instead of averaged.
    """
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts; pass one prompt per image")
    cos = np.sum(clip_image_embeddings(clip, images) * clip_text_embeddings(clip, prompts), axis=1)
    return 100.0 * np.maximum(cos, 0.0)


@dataclass(frozen=True)
class ClipFeatures:
    """CLIP image embeddings as a FeatureExtractor (for KID/FID/CMMD and memorisation).

    Not normalised: KID's polynomial kernel scales dot products by 1/d, and unit vectors
    would shrink every KID to ~1e-6. CMMD and the cosine measures normalise themselves.
    """

    clip: ClipBundle
    name: str = "clip"

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        return clip_image_embeddings(self.clip, images, normalise=False)

    def describe(self) -> dict[str, Any]:
        ip = self.clip.processor.image_processor
        return {"extractor": f"clip:{self.clip.name}",
                "dim": int(self.clip.model.config.projection_dim),
                "weights": "random (meaningless)" if self.clip.random_weights else self.clip.name,
                "resize": f"{type(ip).__name__}: resample={_resample_name(ip)}, shortest edge "
                          f"{_size_get(ip.size, 'shortest_edge')}, centre crop "
                          f"{_size_get(ip.crop_size, 'height')}x{_size_get(ip.crop_size, 'width')}",
                "normalised": "no (CMMD and cosine measures L2-normalise)",
                "versions": library_versions()}


def _size_get(size: Any, key: str) -> Any:
    """A field of an image processor's size (a dict, or transformers' SizeDict)."""
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def _resample_name(processor: Any) -> str:
    resample = getattr(processor, "resample", None)
    try:
        return Image.Resampling(int(resample)).name.lower()
    except (TypeError, ValueError):
        return str(resample)


def inception_features(net: Any = None) -> FeatureExtractor:
    """torchmetrics' FID Inception (the standard FID/KID feature space), if installable.

    Args:
        net: the network to use instead of the FID Inception: a callable from a uint8
            (N, 3, H, W) tensor to (N, 2048) features (tests pass a stand-in).

    Raises:
        ModuleNotFoundError: torch-fidelity is missing (it needs torchvision, which this
            project does not install); use fidelity_features='clip'.
    """
    import importlib.util

    if net is None and importlib.util.find_spec("torch_fidelity") is None:
        raise ModuleNotFoundError(
            "fidelity_features='inception' needs torch-fidelity (and torchvision) for the FID "
            "Inception weights; they are not installed here. Use fidelity_features='clip' "
            "(CLIP ViT-L/14 embeddings) or install torch-fidelity yourself.")
    return _InceptionFeatures(net)


class _InceptionFeatures:
    """2048-d pool features of the FID Inception v3 (torch-fidelity weights, 299 px bilinear)."""

    name = "inception"

    def __init__(self, net: Any = None) -> None:
        if net is None:
            from torchmetrics.image.fid import NoTrainInceptionV3

            net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])
        self.net = net

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        x = torch.stack([torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
                         for im in _same_size(images)])
        with torch.inference_mode():
            return self.net(x).double().numpy()

    def describe(self) -> dict[str, Any]:
        return {"extractor": "inception-v3-compat (torch-fidelity)", "dim": 2048,
                "weights": "pt_inception-2015-12-05",
                "resize": "uint8 input, torch-fidelity bilinear to 299x299",
                "versions": library_versions()}


def _same_size(images: Sequence[Image.Image]) -> list[Image.Image]:
    size = images[0].size
    return [im if im.size == size else im.resize(size, Image.Resampling.BICUBIC) for im in images]


# --- fidelity


def polynomial_mmd(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None,
                   coef: float = 1.0) -> float:
    """Unbiased squared MMD with the cubic polynomial kernel (the KID estimator).

    k(a, b) = (gamma * a.b + coef) ** degree, gamma = 1 / d by default (Binkowski et al. 2018).
    x and y must have the same number of rows.
    """
    m = x.shape[0]
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    k_xx = (x @ x.T * gamma + coef) ** degree
    k_yy = (y @ y.T * gamma + coef) ** degree
    k_xy = (x @ y.T * gamma + coef) ** degree
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / m**2)


def kid(real: np.ndarray, fake: np.ndarray, *, subsets: int = 100, subset_size: int = 1000,
        min_images: int = 20, seed: int = 0, feature_space: str = "") -> MetricResult:
    """Kernel Inception Distance: mean and std of the unbiased MMD over random subsets.

    Each subset draws m = min(subset_size, N_real // 2, N_synthetic // 2) images from each
    set without replacement, so subsets differ and the std shows the sampling spread at m.
    KID is unbiased, which makes it the primary fidelity number at hundreds of images.

    Args:
        real, fake: (N, d) feature matrices.
        subsets: how many subsets to average.
        subset_size: largest m.
        min_images: fewest images per set for a number at all.
        seed: subset sampling seed (the same seed gives the same number).
        feature_space: named in the note (e.g. "clip:openai/clip-vit-large-patch14").
    """
    n_r, n_f = len(real), len(fake)
    try:
        require_images("KID", "real", n_r, min_images)
        require_images("KID", "synthetic", n_f, min_images)
    except TooFewImagesError as err:
        return MetricResult("KID", None, None, n_r, n_f, str(err), "lower")
    m = max(2, min(subset_size, n_r // 2, n_f // 2))
    rng = np.random.default_rng(seed)
    values = np.array([
        polynomial_mmd(real[rng.choice(n_r, m, replace=False)], fake[rng.choice(n_f, m, replace=False)])
        for _ in range(subsets)
    ])
    note = f"{subsets} subsets of {m} per set; features: {feature_space or 'unnamed'}"
    if min(n_r, n_f) < 1000:
        note += "; N < 1000: compare runs only at the same N"
    return MetricResult("KID", float(values.mean()), float(values.std()), n_r, n_f, note, "lower")


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), the trace root via eigenvalues."""
    eig = np.linalg.eigvals(sigma1 @ sigma2)
    root_trace = np.sqrt(eig.astype(np.complex128)).real.sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * root_trace)


def fid(real: np.ndarray, fake: np.ndarray, *, min_images: int | None = None,
        feature_space: str = "") -> MetricResult:
    """Fréchet distance between Gaussian fits of the two feature sets.

    Needs more images than feature dimensions (d + 1 by default), or the covariance is
    singular and the number is meaningless; and it is biased upward at small N, so two
    FIDs compare only at the same N (thousands for the 2048-d Inception standard).
    """
    n_r, n_f = len(real), len(fake)
    need = (real.shape[1] + 1 if real.ndim == 2 and real.shape[1] else 2) if min_images is None else min_images
    try:
        require_images(f"FID on {real.shape[1] if real.ndim == 2 else 0}-d features", "real", n_r, need)
        require_images(f"FID on {fake.shape[1] if fake.ndim == 2 else 0}-d features", "synthetic", n_f, need)
    except TooFewImagesError as err:
        return MetricResult("FID", None, None, n_r, n_f, f"{err}; KID is the primary metric", "lower")
    value = frechet_distance(real.mean(0), np.cov(real, rowvar=False),
                             fake.mean(0), np.cov(fake, rowvar=False))
    note = (f"N={min(n_r, n_f)}: FID is biased upward at small N (thousands needed); compare "
            f"only at equal N; features: {feature_space or 'unnamed'}")
    return MetricResult("FID", value, None, n_r, n_f, note, "lower")


def rbf_mmd(x: np.ndarray, y: np.ndarray, sigma: float = 10.0, scale: float = 1000.0) -> float:
    """Squared MMD with a Gaussian kernel, V-statistic form (as the CMMD reference computes it)."""
    gamma = 1.0 / (2.0 * sigma**2)

    def mean_kernel(a: np.ndarray, b: np.ndarray) -> float:
        sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
        return float(np.exp(-gamma * np.maximum(sq, 0.0)).mean())

    return scale * (mean_kernel(x, x) + mean_kernel(y, y) - 2.0 * mean_kernel(x, y))


def cmmd(real_clip: np.ndarray, fake_clip: np.ndarray, *, min_images: int = 20,
         clip_name: str = "") -> MetricResult:
    """CMMD (Jayasumana et al. 2024): RBF MMD (sigma 10, x1000) on L2-normalised CLIP embeddings."""
    n_r, n_f = len(real_clip), len(fake_clip)
    try:
        require_images("CMMD", "real", n_r, min_images)
        require_images("CMMD", "synthetic", n_f, min_images)
    except TooFewImagesError as err:
        return MetricResult("CMMD", None, None, n_r, n_f, str(err), "lower")
    value = rbf_mmd(_l2(real_clip), _l2(fake_clip))
    return MetricResult("CMMD", value, None, n_r, n_f,
                        f"CLIP {clip_name}; sigma=10, scale=1000, V-statistic", "lower")


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# --- colour: a palette of the catalogue's colour names

# Representative sRGB of the catalogue's `baseColour` values (those with enough rows to matter).
PALETTE: dict[str, tuple[int, int, int]] = {
    "Black": (25, 25, 25),
    "Grey": (128, 128, 128),
    "Silver": (190, 190, 195),
    "White": (245, 245, 245),
    "Brown": (100, 65, 35),
    "Tan": (200, 150, 95),
    "Beige": (225, 205, 170),
    "Khaki": (185, 170, 120),
    "Navy Blue": (25, 35, 80),
    "Blue": (40, 90, 190),
    "Red": (200, 30, 40),
    "Maroon": (110, 25, 35),
    "Pink": (235, 135, 170),
    "Purple": (110, 50, 140),
    "Green": (40, 135, 60),
    "Olive": (105, 105, 45),
    "Yellow": (240, 210, 40),
    "Orange": (240, 125, 30),
    "Gold": (200, 160, 60),
}

# Catalogue colour names that are shades of a palette colour.
COLOUR_SYNONYMS = {
    "off white": "White", "cream": "Beige", "charcoal": "Grey", "steel": "Grey", "taupe": "Grey",
    "coffee brown": "Brown", "mushroom brown": "Brown", "bronze": "Brown", "copper": "Brown",
    "rust": "Red", "burgundy": "Maroon", "magenta": "Pink", "rose": "Pink", "peach": "Pink",
    "lavender": "Purple", "mauve": "Purple", "teal": "Blue", "turquoise blue": "Blue",
    "sea green": "Green", "lime green": "Green", "fluorescent green": "Green",
    "mustard": "Yellow", "metallic": "Silver", "skin": "Beige", "nude": "Beige",
}


def palette_name(colour: str | None) -> str | None:
    """The palette colour a catalogue/prompt colour name means; None for "Multi", unknown, empty."""
    if colour is None or (isinstance(colour, float) and math.isnan(colour)):
        return None
    key = str(colour).strip().lower()
    for name in PALETTE:
        if name.lower() == key:
            return name
    return COLOUR_SYNONYMS.get(key)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of uint8 sRGB values, shape (..., 3) -> (..., 3)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375],
                  [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = linear @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], axis=-1)


_PALETTE_NAMES = list(PALETTE)
# Grey shades are told apart by lightness alone: shading moves a shoe's pixels along L*, so
# nearest-colour voting would call a shaded white shoe "Silver". Upper L* bound of each.
ACHROMATIC_LIGHTNESS = {"Black": 40.0, "Grey": 65.0, "Silver": 75.0, "White": 101.0}
_CHROMATIC_NAMES = [n for n in _PALETTE_NAMES if n not in ACHROMATIC_LIGHTNESS]
_CHROMATIC_LAB = srgb_to_lab(np.array([PALETTE[n] for n in _CHROMATIC_NAMES], dtype=np.uint8))


@dataclass(frozen=True)
class PhotoThresholds:
    """What counts as background and as a conforming product photo.

    Attributes:
        background_delta_e: a pixel within this CIELAB distance of pure white is "near white";
            near-white regions connected to the image border are background.
        chroma: CIELAB chroma above which an object pixel counts as coloured.
        chromatic_share: least share of coloured object pixels for the object to be called
            by a hue (else it is Black, Grey, Silver or White by lightness). The shipped value
            was chosen on 400 Casual Shoes photos of the Kaggle dataset, all of them (no photo
            was held out); `benchmarks/bench_photo_checks.py` tunes it on one half of a
            category's photos and reports the agreement with the labels on the other half.
        min_whiteness: least share of border-band pixels that must be background.
        max_centre_offset: largest distance of the object's centre from the image centre,
            as a fraction of the image side.
        max_edge_foreground: largest share of the outermost pixel ring covered by the object
            (more means the object is cut by the frame).
        min_foreground, max_foreground: plausible share of the image the object covers.
        analysis_px: images are reduced to this side before measuring (speed).
    """

    background_delta_e: float = 12.0
    chroma: float = 10.0
    chromatic_share: float = 0.35
    min_whiteness: float = 0.9
    max_centre_offset: float = 0.1
    max_edge_foreground: float = 0.02
    min_foreground: float = 0.03
    max_foreground: float = 0.9
    analysis_px: int = 128


def foreground_mask(rgb: np.ndarray, background_delta_e: float = 12.0) -> np.ndarray:
    """Object pixels: everything except near-white regions that touch the image border.

    The white inside a white shoe is enclosed by its outline, so it stays foreground.
    """
    lab = srgb_to_lab(rgb)
    near_white = np.linalg.norm(lab - np.array([100.0, 0.0, 0.0]), axis=-1) < background_delta_e
    labels, _ = ndimage.label(near_white)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    background = np.isin(labels, border[border > 0])
    return ~background


def dominant_colour(rgb: np.ndarray, mask: np.ndarray, chroma: float = 10.0,
                    chromatic_share: float = 0.35) -> tuple[str | None, float]:
    """The palette colour of an object: a vote of its pixels.

    If at least `chromatic_share` of the object's pixels are coloured (CIELAB chroma above
    `chroma`), those pixels vote for their nearest chromatic palette colour; otherwise the
    grey pixels vote for Black/Grey/Silver/White by lightness. White soles and laces then do
    not outvote the coloured upper of a red shoe.

    Returns:
        (colour name, share of the voting pixels for it); (None, 0.0) if no foreground.
    """
    lab = srgb_to_lab(rgb[mask])
    if len(lab) == 0:
        return None, 0.0
    coloured = np.hypot(lab[:, 1], lab[:, 2]) > chroma
    if coloured.mean() >= chromatic_share:
        dist = np.linalg.norm(lab[coloured][:, None, :] - _CHROMATIC_LAB[None], axis=-1)
        names, votes = _CHROMATIC_NAMES, np.bincount(dist.argmin(1), minlength=len(_CHROMATIC_NAMES))
    else:
        bounds = list(ACHROMATIC_LIGHTNESS.values())[:-1]
        names = list(ACHROMATIC_LIGHTNESS)
        votes = np.bincount(np.digitize(lab[~coloured][:, 0], bounds), minlength=len(names))
    best = int(votes.argmax())
    return names[best], float(votes[best] / votes.sum())


def analysis_pixels(image: Image.Image,
                    thresholds: PhotoThresholds = PhotoThresholds()) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 RGB reduced to `analysis_px`, its foreground mask): what the photo checks measure."""
    small = image.convert("RGB")
    small.thumbnail((thresholds.analysis_px, thresholds.analysis_px), Image.Resampling.BOX)
    rgb = np.asarray(small)
    return rgb, foreground_mask(rgb, thresholds.background_delta_e)


def photo_measures(image: Image.Image, thresholds: PhotoThresholds = PhotoThresholds()) -> dict[str, Any]:
    """Weight-free measures of one product photo.

    Returns:
        dict with dominant_colour, colour_share, foreground (share of pixels), whiteness
        (background share of a border band 1/16 of the side wide), centre_offset (object
        centroid's distance from the centre / side), edge_foreground (object share of the
        outermost ring), conforming (all thresholds met), dhash and phash (16 hex digits).
    """
    rgb, mask = analysis_pixels(image, thresholds)
    h, w = mask.shape
    band = max(1, min(h, w) // 16)
    ring = np.ones_like(mask)
    ring[band:-band, band:-band] = False
    edge = np.ones_like(mask)
    edge[1:-1, 1:-1] = False
    fg = float(mask.mean())
    if mask.any():
        ys, xs = np.nonzero(mask)
        offset = float(math.hypot(xs.mean() + 0.5 - w / 2, ys.mean() + 0.5 - h / 2) / max(h, w))
    else:
        offset = float("nan")
    colour, share = dominant_colour(rgb, mask, thresholds.chroma, thresholds.chromatic_share)
    whiteness = float(1.0 - mask[ring].mean())
    edge_fg = float(mask[edge].mean())
    conforming = bool(whiteness >= thresholds.min_whiteness
                      and offset <= thresholds.max_centre_offset
                      and edge_fg <= thresholds.max_edge_foreground
                      and thresholds.min_foreground <= fg <= thresholds.max_foreground)
    return {"dominant_colour": colour, "colour_share": share, "foreground": fg,
            "whiteness": whiteness, "centre_offset": offset, "edge_foreground": edge_fg,
            "conforming": conforming, "dhash": hash_hex(dhash(image)),
            "phash": hash_hex(phash(image))}


def measure_photos(paths: Sequence[str | Path], thresholds: PhotoThresholds = PhotoThresholds(),
                   desc: str = "photo checks") -> pd.DataFrame:
    """`photo_measures` of every image, one row each, in the order of `paths` (column `path`)."""
    from tqdm.auto import tqdm

    rows = [{"path": str(p), **photo_measures(open_rgb(p), thresholds)}
            for p in tqdm(list(paths), desc=desc, leave=False)]
    return pd.DataFrame(rows, columns=["path", "dominant_colour", "colour_share", "foreground",
                                       "whiteness", "centre_offset", "edge_foreground",
                                       "conforming", "dhash", "phash"])


# --- colour faithfulness


def colour_faithfulness(asked: Sequence[str | None], found: Sequence[str | None],
                        which: str = "synthetic") -> tuple[MetricResult, pd.DataFrame]:
    """Accuracy of the dominant colour against the colour asked for (or labelled), and the
    confusion matrix (rows: asked, columns: found).

    Images whose asked colour has no palette meaning ("Multi", unknown) are left out and counted.
    """
    pairs = [(palette_name(a), f) for a, f in zip(asked, found, strict=True)]
    kept = [(a, f if f is not None else "(none)") for a, f in pairs if a is not None]
    left_out = len(pairs) - len(kept)
    n_key = "n_synthetic" if which == "synthetic" else "n_real"
    if not kept:
        result = MetricResult(f"colour accuracy ({which})", None, note="no image asks for a "
                              f"palette colour ({left_out} left out)", better="higher",
                              **{n_key: 0})
        return result, pd.DataFrame()
    a, f = zip(*kept, strict=True)
    labels = [n for n in _PALETTE_NAMES if n in set(a) | set(f)] + (["(none)"] if "(none)" in f else [])
    confusion = pd.crosstab(pd.Series(a, name="asked"), pd.Series(f, name="found"))
    confusion = confusion.reindex(index=[n for n in labels if n in set(a)], columns=labels, fill_value=0)
    acc = float(np.mean([x == y for x, y in kept]))
    note = f"dominant foreground colour vs {'prompt' if which == 'synthetic' else 'label'}"
    if left_out:
        note += f"; {left_out} images with no palette colour (e.g. Multi) left out"
    return MetricResult(f"colour accuracy ({which})", acc, None, note=note, better="higher",
                        **{n_key: len(kept)}), confusion


def conformity_results(measures: pd.DataFrame, which: str) -> list[MetricResult]:
    """Share of conforming photos and the mean of each conformity measure for one image set."""
    n = len(measures)
    n_key = "n_synthetic" if which == "synthetic" else "n_real"
    if n == 0:
        return [MetricResult(f"conforming photos ({which})", None, note="no images", **{n_key: 0})]
    out = [MetricResult(f"conforming photos ({which})", float(measures["conforming"].mean()),
                        note="white background, centred, in frame, plausible size (share)",
                        better="higher", **{n_key: n})]
    for col, label, better in (("whiteness", "background whiteness", "higher"),
                               ("centre_offset", "centre offset", "lower"),
                               ("edge_foreground", "object on frame edge", "lower")):
        values = measures[col].astype(float)
        out.append(MetricResult(f"{label} ({which})", float(values.mean()), float(values.std(ddof=0)),
                                note="mean ± std over images", better=better, **{n_key: n}))
    return out


# --- perceptual hashes and diversity


def dhash(image: Image.Image, size: int = 8) -> np.ndarray:
    """Difference hash: is each pixel brighter than its right neighbour, on a (size+1) x size
    greyscale thumbnail. Returns size*size booleans."""
    grey = np.asarray(image.convert("L").resize((size + 1, size), Image.Resampling.LANCZOS),
                      dtype=np.int16)
    return (grey[:, 1:] > grey[:, :-1]).ravel()


def phash(image: Image.Image, size: int = 8, highfreq_factor: int = 4) -> np.ndarray:
    """Perceptual hash: the low-frequency size x size block of the 2-D DCT of a greyscale
    thumbnail, thresholded at its median. Returns size*size booleans."""
    side = size * highfreq_factor
    grey = np.asarray(image.convert("L").resize((side, side), Image.Resampling.LANCZOS),
                      dtype=np.float64)
    low = fft.dct(fft.dct(grey, axis=0, norm="ortho"), axis=1, norm="ortho")[:size, :size]
    return (low > np.median(low)).ravel()


def hash_hex(bits: np.ndarray) -> str:
    return f"{int(''.join('1' if b else '0' for b in bits), 2):0{len(bits) // 4}x}"


def hash_bits(hex_strings: Sequence[str], n_bits: int = 64) -> np.ndarray:
    """Hex hashes -> (N, n_bits) boolean matrix."""
    return np.array([[c == "1" for c in format(int(h, 16), f"0{n_bits}b")] for h in hex_strings],
                    dtype=bool).reshape(len(hex_strings), n_bits)


def hamming_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances between rows of two boolean matrices."""
    a, b = a.astype(np.int32), b.astype(np.int32)
    return a @ (1 - b).T + (1 - a) @ b.T


def near_duplicates(bits: np.ndarray, threshold: int) -> tuple[float, pd.DataFrame]:
    """Images with another image of the same set within `threshold` bits.

    Returns:
        (share of images that have a near duplicate, pairs i < j with their distance).
    """
    n = len(bits)
    if n < 2:
        return 0.0, pd.DataFrame(columns=["i", "j", "distance"])
    dist = hamming_matrix(bits, bits)
    np.fill_diagonal(dist, bits.shape[1] + 1)
    close = dist <= threshold
    i, j = np.nonzero(np.triu(close, k=1))
    pairs = pd.DataFrame({"i": i, "j": j, "distance": dist[i, j]}).sort_values("distance")
    return float(close.any(axis=1).mean()), pairs.reset_index(drop=True)


def mean_pairwise_cosine_distance(features: np.ndarray) -> float:
    """Average 1 - cos over distinct pairs: higher means a more varied set."""
    n = len(features)
    if n < 2:
        return float("nan")
    x = _l2(features)
    sim = x @ x.T
    return float(1.0 - (sim.sum() - np.trace(sim)) / (n * (n - 1)))


def diversity_results(bits: np.ndarray, features: np.ndarray, which: str,
                      threshold: int = 6) -> list[MetricResult]:
    """Near-duplicate rate (pHash within `threshold` bits) and mean pairwise distances."""
    n = len(bits)
    n_key = "n_synthetic" if which == "synthetic" else "n_real"
    if n < 2:
        msg = f"diversity needs at least 2 images; got {n}"
        return [MetricResult(f"near-duplicate rate ({which})", None, note=msg, **{n_key: n})]
    rate, _ = near_duplicates(bits, threshold)
    dist = hamming_matrix(bits, bits)
    mean_bits = float((dist.sum() - np.trace(dist)) / (n * (n - 1)))
    return [
        MetricResult(f"near-duplicate rate ({which})", rate,
                     note=f"share with another image within {threshold} pHash bits",
                     better="lower", **{n_key: n}),
        MetricResult(f"mean pairwise pHash distance ({which})", mean_bits,
                     note="bits of 64", better="higher", **{n_key: n}),
        MetricResult(f"mean pairwise feature distance ({which})",
                     mean_pairwise_cosine_distance(features), note="1 - cosine",
                     better="higher", **{n_key: n}),
    ]


# --- memorisation


def nearest_neighbours(query: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the most cosine-similar reference row.

    Returns:
        (index into reference, cosine similarity), each of length len(query).
    """
    sim = _l2(query) @ _l2(reference).T
    idx = sim.argmax(axis=1)
    return idx, sim[np.arange(len(query)), idx]


@dataclass(frozen=True)
class MemorisationReport:
    """Nearest training image of every synthetic one, judged against real held-out images.

    Attributes:
        results: the table rows.
        closest: the closest synthetic/train pairs (synthetic_index, train_index, similarity).
        synthetic_similarity: nearest-train similarity of each synthetic image.
        test_similarity: nearest-train similarity of each real test image (the baseline).
    """

    results: list[MetricResult]
    closest: pd.DataFrame
    synthetic_similarity: np.ndarray = field(repr=False)
    test_similarity: np.ndarray = field(repr=False)


def memorisation(synthetic: np.ndarray, train: np.ndarray, test: np.ndarray, *,
                 top_k: int = 8, quantile: float = 0.99, feature_space: str = "") -> MemorisationReport:
    """How close synthetic images come to training images, compared with unseen real ones.

    A real test photo is never a copy of a training photo, so the `quantile` of test->train
    nearest similarities marks "as close as an unseen real photo gets"; synthetic images
    beyond it are candidates for memorised copies and are shown in `closest`.
    """
    if len(synthetic) == 0 or len(train) == 0:
        res = MetricResult("memorisation: share closer than real", None, n_real=len(train),
                           n_synthetic=len(synthetic), note="needs synthetic and training images")
        return MemorisationReport([res], pd.DataFrame(), np.zeros(0), np.zeros(0))
    idx, sim = nearest_neighbours(synthetic, train)
    test_sim = nearest_neighbours(test, train)[1] if len(test) else np.zeros(0)
    order = np.argsort(-sim)[:top_k]
    closest = pd.DataFrame({"synthetic_index": order, "train_index": idx[order], "similarity": sim[order]})
    results = [MetricResult("nearest-train similarity (synthetic)", float(sim.mean()), float(sim.std()),
                            len(train), len(synthetic), f"cosine, mean ± std; {feature_space}")]
    if len(test) >= 10:
        cut = float(np.quantile(test_sim, quantile))
        results += [
            MetricResult("nearest-train similarity (real test)", float(test_sim.mean()),
                         float(test_sim.std()), len(train) + len(test), None,
                         "baseline: unseen real photos"),
            MetricResult("memorisation: share closer than real", float((sim > cut).mean()), None,
                         len(train) + len(test), len(synthetic),
                         f"synthetic images nearer a training image than {quantile:.0%} of real "
                         f"test images are (cosine > {cut:.3f})", "lower"),
        ]
    else:
        results.append(MetricResult("memorisation: share closer than real", None, n_real=len(test),
                                    n_synthetic=len(synthetic),
                                    note=f"needs at least 10 real test images for the baseline; got {len(test)}"))
    return MemorisationReport(results, closest, sim, test_sim)
