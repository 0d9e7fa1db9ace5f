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
