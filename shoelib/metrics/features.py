"""Feature extractors: images -> (N, d) matrices for the distances, precision/recall, diversity
and nearest-neighbour measures (weight-free pixels, the demo's own encoder, Inception)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from shoelib.images import open_rgb

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


@dataclass(frozen=True)
class RawPixels:
    """The image itself as a vector: RGB values in [0, 1] of a side x side BOX thumbnail
    (the Vendi score "on pixels": a diversity that no learnt feature space filters)."""

    side: int = 32
    name: str = "raw pixels"

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        return np.stack([np.asarray(im.convert("RGB").resize((self.side, self.side),
                                                              Image.Resampling.BOX),
                                    dtype=np.float64).ravel() / 255.0 for im in images])

    def describe(self) -> dict[str, Any]:
        return {"extractor": self.name, "dim": 3 * self.side**2, "weights": "none",
                "resize": f"PIL BOX to {self.side}x{self.side}", "versions": library_versions()}


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
    """Versions of the libraries whose behaviour moves metric values.

    Read from the installed packages' metadata: importing transformers and torchmetrics only
    to read their version cost 07 seconds per feature space.
    """
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("torch", "transformers", "torchmetrics", "pillow", "numpy", "scipy"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


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


class FeatureModelUnavailableError(FileNotFoundError):
    """A feature model (DINOv2, SSCD, Inception) cannot be loaded or cannot run here."""


def inception_unavailable() -> str | None:
    """Why the standard FID Inception (torch-fidelity) cannot run here, in one line; None if it can."""
    import importlib.util

    try:
        import torchvision  # noqa: F401 - torch-fidelity imports it
    except Exception as err:  # noqa: BLE001 - a torchvision built for another torch raises anything
        import torch

        return (f"fidelity_features='inception' is unavailable: torchvision does not import beside "
                f"torch {torch.__version__} ({type(err).__name__}: {str(err).splitlines()[0]}), and "
                "torch-fidelity needs it. Install the inception extra (pip install -e '.[inception]') "
                "with a torchvision built for this torch, or use fidelity_features='dinov2', 'clip' "
                "or 'encoder'")
    if importlib.util.find_spec("torch_fidelity") is None:
        return ("fidelity_features='inception' needs torch-fidelity for the FID Inception weights: "
                "pip install -e '.[inception]', or use fidelity_features='dinov2', 'clip' or 'encoder'")
    return None


def inception_features(net: Any = None) -> FeatureExtractor:
    """The FID Inception v3 of torch-fidelity (the standard FID/KID feature space).

    Args:
        net: the network to use instead of the FID Inception: a callable from a uint8
            (N, 3, H, W) tensor to (N, 2048) features (tests pass a stand-in).

    Raises:
        FeatureModelUnavailableError: torchvision or torch-fidelity cannot be imported here
            (`inception_unavailable` says which, in one line).
    """
    if net is None and (why := inception_unavailable()):
        raise FeatureModelUnavailableError(why)
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
        import importlib.metadata

        try:
            fidelity = importlib.metadata.version("torch-fidelity")
        except importlib.metadata.PackageNotFoundError:
            fidelity = "not installed (stand-in network)"
        # torch-fidelity resizes inside the network, as the TF1 FID code did: published FIDs
        # compare only with this resize (Parmar et al. 2022).
        return {"extractor": "inception-v3-compat (torch-fidelity)", "dim": 2048,
                "weights": "pt_inception-2015-12-05",
                "resize": ("uint8 RGB input at its own size; torch-fidelity's "
                           "interpolate_bilinear_2d_like_tensorflow1x to 299x299 inside the network"),
                "versions": {**library_versions(), "torch-fidelity": fidelity}}


def _same_size(images: Sequence[Image.Image]) -> list[Image.Image]:
    size = images[0].size
    return [im if im.size == size else im.resize(size, Image.Resampling.BICUBIC) for im in images]


# --- DINOv2 (Stein et al. 2023: the feature space whose FD agrees best with human judgement)

DINOV2_DEFAULT = "facebook/dinov2-large"


class DinoFeatures:
    """CLS embeddings (after the final layer norm) of a transformers `Dinov2Model`.

    Images are preprocessed by the model's own image processor (its preprocessor_config.json;
    for facebook/dinov2-*: bicubic resize of the shortest edge to 256, centre crop 224,
    ImageNet mean/std), in the PIL backend: the default one needs torchvision.
    """

    name = "dinov2"

    def __init__(self, model: str = DINOV2_DEFAULT, device: str = "cpu") -> None:
        from transformers import BitImageProcessorPil, Dinov2Model

        self.source, self.device = str(model), device
        try:
            self.model = Dinov2Model.from_pretrained(self.source).eval().to(device)
            self.processor = BitImageProcessorPil.from_pretrained(self.source)
        except (OSError, ValueError) as err:
            local = f"models/{Path(self.source).name}"
            raise FeatureModelUnavailableError(
                f"dinov2_model={self.source!r} could not be loaded ({type(err).__name__}); fetch "
                f"it on a machine with network access: hf download {self.source} --local-dir "
                f"{local} (then set dinov2_model: {local})") from None

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        pixels = self.processor(images=[im.convert("RGB") for im in images],
                                return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            out = self.model(pixel_values=pixels.to(self.device))
        return out.pooler_output.float().cpu().numpy().astype(np.float64)

    def describe(self) -> dict[str, Any]:
        ip = self.processor
        size = ip.size.get("shortest_edge") if isinstance(ip.size, dict) else getattr(ip.size, "shortest_edge", None)
        crop = ip.crop_size if isinstance(ip.crop_size, dict) else vars(ip.crop_size)
        resample = getattr(ip, "resample", None)
        try:
            resample = Image.Resampling(int(resample)).name.lower()
        except (TypeError, ValueError):
            resample = str(resample)
        return {"extractor": f"dinov2:{self.source}", "dim": int(self.model.config.hidden_size),
                "weights": self.source,
                "resize": f"{type(ip).__name__}: {resample} shortest edge {size}, centre crop "
                          f"{crop.get('height')}x{crop.get('width')}, ImageNet mean/std",
                "versions": library_versions()}


# --- SSCD copy-detection descriptor (Pizzi et al. 2022)

# The SSCD authors: sscd_disc_mixup descriptor pairs with cosine similarity above 0.75 are
# copies with 90 % precision on DISC.
SSCD_COPY_THRESHOLD = 0.75
SSCD_URL = "https://dl.fbaipublicfiles.com/sscd-copy-detection/sscd_disc_mixup.torchscript.pt"


class SscdFeatures:
    """L2-normalised SSCD descriptors from the authors' TorchScript file (sscd_disc_mixup).

    Preprocessing as the authors give it: shortest edge resized to 288 (bilinear), [0, 1],
    ImageNet mean/std; one image per forward pass, as their aspect ratios may differ.
    """

    name = "sscd"
    side = 288

    def __init__(self, path: str | Path) -> None:
        import warnings

        import torch

        self.path = Path(path)
        if not self.path.is_file():
            raise FeatureModelUnavailableError(
                f"copy_detector={str(path)!r} does not exist; fetch the SSCD descriptor with: "
                f"curl -L -o {path} {SSCD_URL}")
        with warnings.catch_warnings():  # the authors ship TorchScript, which torch now deprecates
            warnings.simplefilter("ignore", DeprecationWarning)
            self.model = torch.jit.load(str(self.path), map_location="cpu").eval()

    def tensor(self, image: Image.Image):
        import torch

        image = image.convert("RGB")
        scale = self.side / min(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        x = np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
        x = (x - np.array([0.485, 0.456, 0.406], dtype=np.float32)) / np.array(
            [0.229, 0.224, 0.225], dtype=np.float32)
        return torch.from_numpy(x).permute(2, 0, 1)[None]

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = np.concatenate([self.model(self.tensor(im)).float().numpy() for im in images])
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def describe(self) -> dict[str, Any]:
        return {"extractor": f"sscd:{self.path.name}", "weights": str(self.path.name),
                "resize": f"PIL bilinear shortest edge to {self.side}, ImageNet mean/std",
                "copy_threshold": SSCD_COPY_THRESHOLD, "versions": library_versions()}
