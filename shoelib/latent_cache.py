"""Encode training inputs once: VAE latent distributions of images, CLIP states of captions.

The VAE and the text encoder are frozen during LoRA training, so encoding every image and
caption at every step (as diffusers' example script does) repeats the same work thousands of
times and keeps both models in memory. Here each input is encoded once and stored on disk:

    <cache_dir>/latents/<key>.safetensors   "mean", "std" of the scaled latent distribution;
                                            "mask" (1, h, w): the foreground share of each
                                            latent pixel, when the image has a mask
    <cache_dir>/text/<key>.safetensors      "hidden": the text encoder's last hidden state

A latent key hashes (image bytes, resolution, flip, VAE fingerprint, mask bytes if any; the
mask is mirrored with the image; the width and height when the image is encoded at an aspect
bucket rather than the resolution x resolution square); a text key hashes
(caption, its token ids, text-encoder fingerprint). Changing an image, the resolution or the
model changes the key, so only what changed is encoded again and stale entries are never read.
The distribution (not one sample) is stored, so training still draws a fresh latent per step.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from shoelib.io import atomic_path

# Bump when the encoding itself changes (preprocessing, stored fields): old entries are ignored.
CACHE_VERSION = 1


@dataclass(frozen=True)
class CacheStats:
    """How many entries one caching pass encoded and how many it found on disk."""

    computed: int
    reused: int


def model_fingerprint(module: torch.nn.Module) -> str:
    """A content fingerprint of a model: its config and a strided sample of every weight.

    Cheap (no full hash of hundreds of MB) yet changes when the architecture or any weight
    tensor is replaced, whether the model came from the hub, a folder or a single file.

    Args:
        module: a diffusers or transformers model (has `.config`).

    Returns:
        A 16-hex-digit fingerprint.
    """
    config = module.config
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    # Keys starting with "_" record where the model was loaded from, not what it is.
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().flatten()
        sample = flat[:: max(1, flat.numel() // 512)].float().cpu().numpy()
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(sample.tobytes())
    return digest.hexdigest()[:16]


def _key(*parts: object) -> str:
    return hashlib.sha256(repr((CACHE_VERSION, *parts)).encode()).hexdigest()[:32]


def latent_key(image_bytes: bytes, resolution: int, flip: bool, vae_fingerprint: str,
               mask_bytes: bytes | None = None, size: tuple[int, int] | None = None) -> str:
    # Without a mask, or at the square, the key is what it was before masks (buckets) existed:
    # those entries stay valid.
    mask = () if mask_bytes is None else (hashlib.sha256(mask_bytes).hexdigest(),)
    bucket = () if size is None or tuple(size) == (resolution, resolution) else (tuple(size),)
    return _key("latent", hashlib.sha256(image_bytes).hexdigest(), resolution, flip,
                vae_fingerprint, *mask, *bucket)


def text_key(caption: str, token_ids: Sequence[int], encoder_fingerprint: str) -> str:
    return _key("text", caption, tuple(token_ids), encoder_fingerprint)


def image_tensor(image: Image.Image, resolution: int, flip: bool,
                 size: tuple[int, int] | None = None) -> torch.Tensor:
    """An image as the VAE expects it: RGB, resolution x resolution (or `size`, (width,
    height), an aspect bucket), values in [-1, 1].

    The image is resized to cover that size and the centre cropped (02's images already have
    the size's aspect; this only guards against other inputs).

    Returns:
        float32 tensor (3, height, width).
    """
    pixels = np.asarray(_cover(image.convert("RGB"), size or (resolution, resolution), flip,
                               Image.Resampling.BICUBIC), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def mask_tensor(mask: Image.Image, resolution: int, flip: bool,
                latent_size: tuple[int, int], size: tuple[int, int] | None = None) -> torch.Tensor:
    """A foreground mask (255 = product) on the latent grid: cropped and mirrored as
    `image_tensor` does with its image (at `size` if given), then the area average of each
    latent pixel's patch, i.e. the share of that latent pixel that is product (kohya's masked
    loss resizes the same way, `interpolate(mode="area")`).

    Returns:
        float32 tensor (1, *latent_size) in [0, 1].
    """
    fitted = _cover(mask.convert("L"), size or (resolution, resolution), flip,
                    Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.asarray(fitted, dtype=np.float32) / 255.0)[None, None]
    return F.interpolate(pixels, size=tuple(latent_size), mode="area")[0].contiguous()


def _cover(image: Image.Image, size: tuple[int, int], flip: bool,
           resample: Image.Resampling) -> Image.Image:
    """Resized to cover `size` (width, height), the centre cropped, mirrored if `flip`."""
    width, height = size
    scale = max(width / image.width, height / image.height)
    cover = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.resize(cover, resample)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    image = image.crop((left, top, left + width, top + height))
    return ImageOps.mirror(image) if flip else image


def load_image_tensor(path: Path, resolution: int, flip: bool,
                      size: tuple[int, int] | None = None) -> torch.Tensor:
    """`image_tensor` of an image file."""
    with Image.open(path) as image:
        return image_tensor(image, resolution, flip, size)


def entry_path(cache_dir: Path, kind: str, key: str) -> Path:
    return Path(cache_dir) / kind / f"{key}.safetensors"


def cache_latents(image_paths: Sequence[Path], resolution: int, flips: Sequence[bool], vae,
                  cache_dir: Path, batch_size: int = 8,
                  mask_paths: Sequence[Path] | None = None,
                  sizes: Sequence[tuple[int, int]] | None = None
                  ) -> tuple[list[dict[bool, str]], CacheStats]:
    """Encode each image (and its mirror image) to a latent distribution, unless cached.

    Args:
        image_paths: the images.
        resolution: side in pixels the images are encoded at.
        flips: which versions to cache: (False,) or (False, True) for random horizontal flip.
        vae: the AutoencoderKL (any device; float32 recommended: SD's VAE overflows in fp16).
        cache_dir: the cache root.
        batch_size: images per VAE call.
        mask_paths: each image's foreground mask (02's masks/<name>.png), or None.
        sizes: each image's (width, height) to encode at (its aspect bucket), or None for
            the resolution x resolution square. A VAE batch holds one size at a time.

    Returns:
        ({flip: key} per image, stats). Entries hold "mean" and "std" already multiplied by
        the VAE's scaling factor, so a training latent is `mean + std * randn`; with
        mask_paths also "mask" (`mask_tensor`, mirrored with the mirrored latent).
    """
    fingerprint = model_fingerprint(vae)
    masks = list(mask_paths) if mask_paths is not None else [None] * len(image_paths)
    sizes = list(sizes) if sizes is not None else [(resolution, resolution)] * len(image_paths)
    keys, todo = [], []
    for path, mask, size in zip(image_paths, masks, sizes, strict=True):
        data = Path(path).read_bytes()
        mask_bytes = Path(mask).read_bytes() if mask is not None else None
        keys.append({flip: latent_key(data, resolution, flip, fingerprint, mask_bytes, size)
                     for flip in flips})
        todo += [(path, mask, flip, keys[-1][flip], tuple(size)) for flip in flips
                 if not entry_path(cache_dir, "latents", keys[-1][flip]).exists()]
    scale = vae.config.scaling_factor
    chunks = []  # one size per VAE call; at one size, in the order listed
    for size in dict.fromkeys(job[4] for job in todo):
        jobs = [job for job in todo if job[4] == size]
        chunks += [jobs[start:start + batch_size] for start in range(0, len(jobs), batch_size)]
    for chunk in chunks:
        pixels = torch.stack([load_image_tensor(p, resolution, f, size)
                              for p, _, f, _, size in chunk])
        with torch.no_grad():
            dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
        for i, (_, mask, flip, key, size) in enumerate(chunk):
            entry = {"mean": (dist.mean[i] * scale).float().cpu().contiguous(),
                     "std": (dist.std[i] * scale).float().cpu().contiguous()}
            if mask is not None:
                with Image.open(mask) as image:
                    entry["mask"] = mask_tensor(image, resolution, flip, entry["mean"].shape[-2:],
                                                size)
            with atomic_path(entry_path(cache_dir, "latents", key)) as tmp:
                save_file(entry, str(tmp))
    total = len(image_paths) * len(flips)
    return keys, CacheStats(computed=len(todo), reused=total - len(todo))


def tokenize(tokenizer, captions: Sequence[str]) -> torch.Tensor:
    """Token ids padded/truncated to the tokenizer's max length (77 for SD 1.5), as the
    pipeline's `encode_prompt` does; a caption that is cut is said in one line."""
    from shoelib.pipeline import truncation_note

    note = truncation_note(tokenizer, sorted(set(captions)))
    if note:
        print(f"captions: {note}", flush=True)
    return tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def cache_text(captions: Sequence[str], tokenizer, text_encoder, cache_dir: Path,
               batch_size: int = 32) -> tuple[list[str], CacheStats]:
    """Encode each distinct caption to the text encoder's last hidden state, unless cached.

    Args:
        captions: caption per sample (duplicates are encoded once).
        tokenizer, text_encoder: the pipeline's CLIP tokenizer and text model.
        cache_dir: the cache root.
        batch_size: captions per text-encoder call.

    Returns:
        (key per caption, stats counted over distinct captions). Entries hold "hidden",
        shape (77, hidden size), float32.
    """
    fingerprint = model_fingerprint(text_encoder)
    distinct = list(dict.fromkeys(captions))
    ids = tokenize(tokenizer, distinct) if distinct else torch.zeros(0, 1, dtype=torch.long)
    key_of = {c: text_key(c, ids[i].tolist(), fingerprint) for i, c in enumerate(distinct)}
    todo = [i for i, c in enumerate(distinct)
            if not entry_path(cache_dir, "text", key_of[c]).exists()]
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        with torch.no_grad():
            hidden = text_encoder(ids[chunk].to(text_encoder.device))[0]
        for row, i in enumerate(chunk):
            with atomic_path(entry_path(cache_dir, "text", key_of[distinct[i]])) as tmp:
                save_file({"hidden": hidden[row].float().cpu().contiguous()}, str(tmp))
    return [key_of[c] for c in captions], CacheStats(len(todo), len(distinct) - len(todo))


def load_latent(cache_dir: Path, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of one cached latent distribution (scaled, float32, CPU)."""
    entry = load_file(str(entry_path(cache_dir, "latents", key)))
    return entry["mean"], entry["std"]


def load_mask(cache_dir: Path, key: str) -> torch.Tensor | None:
    """The foreground share (1, h, w) cached with one latent, or None if it has no mask."""
    with safe_open(str(entry_path(cache_dir, "latents", key)), framework="pt") as entry:
        return entry.get_tensor("mask") if "mask" in entry.keys() else None


def load_text(cache_dir: Path, key: str) -> torch.Tensor:
    """One cached caption's hidden states (float32, CPU)."""
    return load_file(str(entry_path(cache_dir, "text", key)))["hidden"]
