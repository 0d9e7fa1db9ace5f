"""CLIP: loading, image and text embeddings, CLIP score (text alignment), CLIP as a feature space."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from shoelib.metrics.features import library_versions

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
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        local = f"models/{Path(name).name}"
        raise ClipUnavailableError(
            f"clip_model={name!r} could not be loaded ({type(err).__name__}: {first}). Fetch it "
            f"on a machine with network access: hf download {name} --local-dir {local} (then "
            f"set clip_model: {local}), or use 'none' to skip CLIP score and CMMD."
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
