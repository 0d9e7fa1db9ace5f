"""Train a LoRA on Stable Diffusion 1.5's UNet attention from cached latents and captions.

    config = TrainConfig(model=..., train_dir=..., val_dir=..., output_dir=..., cache_dir=...)
    result = train(config)                      # one process, device from the device policy

    python -m shoelib.train --config run.json   # the same from a JSON file of TrainConfig fields
    accelerate launch --multi_gpu --num_processes 2 -m shoelib.train --config run.json  # DDP

(`--multi_gpu` is accelerate's torchrun launcher; on a machine without GPUs it starts CPU
processes that talk over gloo. `--cpu` alone starts one process unless MPI is set up.)

`train()` is the whole run, top to bottom, with numbered steps; the loop fits on one screen.
The functions below it are its steps (input checks, the trainable UNet, one optimizer step's
gradient accumulation, validation, export); the small functions above it are the parts the
tests check against diffusers' own (noise targets, min-SNR weights) and the checkpoint
format. What happens, in short:
- the VAE latent distribution of every image (and its mirror image) and the text-encoder
  states of every caption are computed once and cached on disk (shoelib.latent_cache); the
  VAE and text encoder are then freed, so training holds only the UNet;
- with aspect_buckets, each image is encoded at its aspect bucket of about resolution²
  pixels (shoelib.images.bucket_sizes) and every micro-batch is drawn from one bucket;
- a PEFT LoRA (rank r, alpha a, scale a/r) on to_q/to_k/to_v/to_out.0 is the only trainable
  part, kept in float32 even when the frozen UNet runs in half precision;
- every `checkpoint_every` steps the LoRA, optimizer, LR schedule, every random state and
  the data order are written atomically, so a killed run resumes exactly where it was.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import statistics
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from shoelib.device import (
    DevicePolicy,
    choose_policy,
    cpu_generator,
    free_memory,
    peak_memory_bytes,
)
from shoelib.figures import image_grid, save_figure
from shoelib.images import prepare_box
from shoelib.io import FolderInUseError, file_sha256, read_json, shared_folder_lock, write_json
from shoelib.latent_cache import (
    CacheStats,
    cache_latents,
    cache_text,
    load_latent,
    load_mask,
    load_text,
    tokenize,
)
from shoelib.lora_io import (
    DIFFUSERS_WEIGHT_NAME,
    LORA_TARGET_MODULES,
    TEXT_ENCODER_LORA_TARGET_MODULES,
    add_text_encoder_lora,
    peft_lora_state_dict,
    save_diffusers_lora,
    save_kohya_lora,
)
from shoelib.paths import resolve
from shoelib.pipeline import resolution_problem

KOHYA_WEIGHT_NAME = "lora_kohya.safetensors"
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine",
                 "cosine_with_restarts", "polynomial")
# Settings that may change between a checkpoint and its resumption: they change what is
# logged, kept or how fast it runs, not the numbers a step computes.
# Folders are free too, so that a copied or moved run folder resumes; the train split is
# compared by its content instead (TRAIN_DATA_KEY).
RESUME_FREE_KEYS = frozenset({
    "train_dir", "output_dir", "cache_dir", "val_dir", "validation_every", "num_validation_prompts",
    "validation_inference_steps", "validation_guidance_scale", "checkpoint_every",
    "checkpoints_to_keep", "gradient_checkpointing", "device", "channels_last", "allow_tf32",
    "torch_compile",
})
TRAIN_DATA_KEY = "train_split_content"
# The precision a checkpoint was trained in, resolved by the device policy ("auto" resolves
# differently on another machine), compared on resume like the settings.
MIXED_PRECISION_KEY = "resolved_mixed_precision"
# mixed_precision -> the dtype the device policy is asked for (the frozen UNet's weights).
MIXED_PRECISION_DTYPES = {"auto": "auto", "no": "float32", "fp16": "float16", "bf16": "bfloat16"}
OPTIMIZERS = ("adamw", "adamw8bit", "prodigy", "adafactor")
EMA_FILE = "ema.pt"
TEXT_ENCODER_LORA_FILE = "text_encoder_lora.safetensors"  # in checkpoints, when it trains
CHECKPOINT_MANIFEST = "manifest.json"  # written last: the sizes and sha256 of every other file


# TrainConfig fields that notebook 05 fills from a parameter of another name: errors name both.
NOTEBOOK_PARAMETERS = {"seed": "train_seed", "validation_inference_steps": "inference_steps",
                       "validation_guidance_scale": "guidance_scale"}


class TrainConfigError(ValueError):
    """A training setting that cannot work (non-positive rate, bad resolution, ...)."""


class ResumeMismatchError(ValueError):
    """The checkpoint to resume was written with different settings."""


class CheckpointError(RuntimeError):
    """Checkpoints exist, but none of them is intact."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped before updating the weights."""


# --- configuration

@dataclass(frozen=True)
class TrainConfig:
    """Everything one LoRA training run depends on. Validated on construction.

    Folders are stored as absolute path strings. The config is saved as JSON in every
    checkpoint and compared on resume, folders excepted (RESUME_FREE_KEYS).
    """

    model: str                    # hub id or local diffusers folder
    train_dir: str | tuple[str, ...]  # processed/<category>/train (metadata.jsonl + PNGs); several: one LoRA over all
    output_dir: str               # LoRA files, checkpoints/, validation/, logs/
    cache_dir: str                # cached latents and caption states
    val_dir: str | tuple[str, ...] | None = None  # processed/<category>/val (or several); None: no validation loss
    resolution: int = 512         # px, multiple of 8
    max_train_steps: int = 3000   # optimizer steps
    lora_rank: int = 8
    lora_alpha: float = 16.0      # LoRA scale = alpha / rank
    learning_rate: float = 1e-4
    lr_scheduler: str = "cosine"
    lr_warmup_steps: int = 500
    train_batch_size: int = 2     # images per process per micro-batch
    gradient_accumulation_steps: int = 8
    max_grad_norm: float = 1.0
    snr_gamma: float = 0.0        # min-SNR weighting gamma (5.0 in the paper); 0 = off
    noise_offset: float = 0.0     # 0.05-0.1 helps very dark/bright images; 0 = off
    caption_dropout: float = 0.0  # share of captions replaced by "" (for CFG); 0 = off
    random_flip: bool = True      # mirror images at random (both latents are cached)
    gradient_checkpointing: bool = False
    mixed_precision: str = "auto"  # auto (the device policy's) | no | fp16 | bf16
    optimizer: str = "adamw"      # adamw | adamw8bit (CUDA + bitsandbytes) | prodigy | adafactor
    loraplus_lr_ratio: float = 1.0  # LoRA+: the B (up) matrices learn at ratio x rate; 1 = off
    use_dora: bool = False        # DoRA: LoRA on the direction, a trained magnitude per output
    ema_decay: float = 0.0        # EMA of the LoRA weights for validation and export; 0 = off
    channels_last: bool = False   # UNet in channels-last memory (faster convolutions on GPUs)
    allow_tf32: bool = False      # TF32 matmuls/convolutions on CUDA (Ampere or newer)
    torch_compile: bool = False   # torch.compile the UNet (slow first steps, then faster)
    train_text_encoder: bool = False  # a LoRA on the text encoder too (its states not cached)
    text_encoder_lr: float | None = None  # its learning rate; None = learning_rate
    background_loss_weight: float = 1.0  # loss weight of background latent pixels (02's masks); 1 = off
    aspect_buckets: bool = False  # each image at its aspect bucket of ~resolution² px, one bucket per batch
    category_balance: bool = False  # several train splits: each drawn about equally often (repeats)
    validation_every: int = 500   # steps; 0 = never
    num_validation_prompts: int = 4
    validation_inference_steps: int = 30
    validation_guidance_scale: float = 7.5
    checkpoint_every: int = 500   # steps; the last step is always checkpointed
    checkpoints_to_keep: int = 2
    device: str = "auto"          # auto | cuda | mps | cpu
    seed: int = 42

    def __post_init__(self) -> None:
        # Relative folders are relative to the project root, as for every parameter; `model`
        # may be a hub id and is resolved when loaded.
        object.__setattr__(self, "model", str(self.model))
        for name in ("train_dir", "output_dir", "cache_dir", "val_dir"):
            value = getattr(self, name)
            if name in ("train_dir", "val_dir") and isinstance(value, list | tuple):
                # The splits of several categories, read as one (shoelib.dataset.read_splits).
                _require(bool(value) and all(isinstance(v, str | Path) for v in value),
                         f"{name}={value!r} must be a folder path or a non-empty list of them")
                object.__setattr__(self, name, tuple(str(resolve(v)) for v in value))
            elif value is not None:
                _require(isinstance(value, str | Path), f"{name}={value!r} must be a folder path")
                object.__setattr__(self, name, str(resolve(value)))
        check_config(self)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def field_defaults(cls) -> dict:
        """{name: default} of the fields that have one."""
        return {f.name: f.default for f in fields(cls) if f.default is not MISSING}

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TrainConfigError(f"unknown training setting(s) {unknown}; known: {sorted(known)}")
        required = [f.name for f in fields(cls) if f.default is MISSING]
        absent = [name for name in required if name not in values]
        if absent:
            raise TrainConfigError(f"training setting(s) {absent} are required (with "
                                   f"{', '.join(required)})")
        return cls(**values)

    @classmethod
    def from_json(cls, path: Path) -> TrainConfig:
        """The config in a JSON file of its fields; errors name the file or the setting."""
        try:
            values = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as err:
            raise TrainConfigError(f"cannot read --config {path} ({err.strerror}); pass a JSON "
                                   "file of TrainConfig fields") from None
        except UnicodeDecodeError as err:
            raise TrainConfigError(f"--config {path} is not UTF-8 text (byte {err.start}); "
                                   "save it as UTF-8 JSON") from None
        except json.JSONDecodeError as err:
            raise TrainConfigError(f"--config {path} is not valid JSON: {err.msg} at line "
                                   f"{err.lineno}, column {err.colno}") from None
        if not isinstance(values, dict):
            raise TrainConfigError(f"--config {path} must hold a JSON object of TrainConfig "
                                   f"fields, not a {type(values).__name__}")
        return cls.from_dict(values)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise TrainConfigError(message)


def _alias(name: str) -> str:
    return f" (05's {NOTEBOOK_PARAMETERS[name]})" if name in NOTEBOOK_PARAMETERS else ""


def check_config(c: TrainConfig) -> None:
    """Raise TrainConfigError naming the value and the fix for any setting that cannot work."""
    def whole(x) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    _require(bool(c.model.strip()), "model='' is empty; pass a hub id or a diffusers folder")
    problem = resolution_problem(c.resolution)
    _require(problem is None, problem or "")
    for name, example in (("max_train_steps", 3000), ("lora_rank", 8), ("train_batch_size", 2),
                          ("gradient_accumulation_steps", 8), ("validation_inference_steps", 30),
                          ("checkpoints_to_keep", 2)):
        value = getattr(c, name)
        _require(whole(value) and value > 0, f"{name}={value!r}{_alias(name)} must be a whole "
                                             f"number > 0; use e.g. {example}")
    for name, example in (("lora_alpha", 16), ("learning_rate", 1e-4), ("max_grad_norm", 1.0)):
        value = getattr(c, name)
        text = " (it is text)" if isinstance(value, str) else ""
        _require(isinstance(value, int | float) and not isinstance(value, bool) and value > 0,
                 f"{name}={value!r} must be a number > 0{text}; use e.g. {example}")
    for name in ("lr_warmup_steps", "validation_every", "checkpoint_every",
                 "num_validation_prompts"):
        value = getattr(c, name)
        _require(whole(value) and value >= 0, f"{name}={value!r} must be a whole number >= 0")
    for name in ("snr_gamma", "noise_offset", "validation_guidance_scale"):
        value = getattr(c, name)
        _require(isinstance(value, int | float) and not isinstance(value, bool) and value >= 0,
                 f"{name}={value!r}{_alias(name)} must be a number >= 0 (0 turns it off)")
    _require(whole(c.seed) and c.seed >= 0,
             f"seed={c.seed!r}{_alias('seed')} must be a whole number >= 0; use e.g. 42")
    for name in ("random_flip", "gradient_checkpointing", "use_dora", "channels_last",
                 "allow_tf32", "torch_compile", "train_text_encoder", "aspect_buckets",
                 "category_balance"):
        _require(isinstance(getattr(c, name), bool),
                 f"{name}={getattr(c, name)!r} must be true or false")
    _require(isinstance(c.caption_dropout, int | float) and 0 <= c.caption_dropout < 1,
             f"caption_dropout={c.caption_dropout!r} must be in [0, 1); use 0.1 or 0 (off)")
    _require(c.mixed_precision in MIXED_PRECISION_DTYPES,
             f"mixed_precision={c.mixed_precision!r} is unknown; use one of "
             f"{', '.join(MIXED_PRECISION_DTYPES)} (auto: the device policy's)")
    _require(c.optimizer in OPTIMIZERS,
             f"optimizer={c.optimizer!r} is unknown; use one of {', '.join(OPTIMIZERS)}")
    _require(isinstance(c.loraplus_lr_ratio, int | float) and not isinstance(
        c.loraplus_lr_ratio, bool) and c.loraplus_lr_ratio >= 1,
             f"loraplus_lr_ratio={c.loraplus_lr_ratio!r} must be a number >= 1 (1 turns LoRA+ "
             "off; the LoRA+ paper uses 16)")
    _require(isinstance(c.background_loss_weight, int | float)
             and not isinstance(c.background_loss_weight, bool)
             and 0 <= c.background_loss_weight <= 1,
             f"background_loss_weight={c.background_loss_weight!r} must be a number in [0, 1] "
             "(1 turns it off, 0 trains on the product alone); use e.g. 0.1")
    _require(isinstance(c.ema_decay, int | float) and not isinstance(c.ema_decay, bool)
             and (c.ema_decay == 0 or 0.5 <= c.ema_decay < 1),
             f"ema_decay={c.ema_decay!r} must be 0 (off) or in [0.5, 1); use e.g. 0.999")
    _require(c.text_encoder_lr is None or (
        isinstance(c.text_encoder_lr, int | float) and not isinstance(c.text_encoder_lr, bool)
        and c.text_encoder_lr > 0),
             f"text_encoder_lr={c.text_encoder_lr!r} must be a number > 0, or None for "
             "learning_rate; use e.g. 5e-5")
    _require(c.optimizer != "prodigy" or c.text_encoder_lr in (None, c.learning_rate),
             f"optimizer='prodigy' with text_encoder_lr={c.text_encoder_lr}: Prodigy takes one "
             "rate for all weights; set text_encoder_lr=None or use optimizer='adamw'")
    _require(c.optimizer != "prodigy" or c.loraplus_lr_ratio == 1,
             f"optimizer='prodigy' with loraplus_lr_ratio={c.loraplus_lr_ratio}: Prodigy takes "
             "one rate for all weights; set loraplus_lr_ratio=1 or use optimizer='adamw'")
    if c.optimizer == "prodigy" and c.learning_rate < 0.1:
        # Prodigy estimates the step size itself; learning_rate only scales its estimate.
        warnings.warn(f"optimizer='prodigy' with learning_rate={c.learning_rate}: Prodigy's "
                      "rate is a multiplier on the step size it estimates; use "
                      "learning_rate=1.0", UserWarning, stacklevel=3)
    _require(c.lr_scheduler in LR_SCHEDULERS,
             f"lr_scheduler={c.lr_scheduler!r} is unknown; use one of {', '.join(LR_SCHEDULERS)}")
    _require(c.lr_warmup_steps < c.max_train_steps or c.lr_warmup_steps == 0,
             f"lr_warmup_steps={c.lr_warmup_steps} >= max_train_steps={c.max_train_steps}: the "
             f"rate would never leave warm-up; use about {max(1, c.max_train_steps // 6)}")


def check_model(model: str) -> str:
    """The location diffusers loads `model` from; training needs a hub id or a diffusers folder.

    Raises:
        ModelNotFoundError: nothing at that path (see shoelib.pipeline).
        TrainConfigError: a single-file checkpoint.
    """
    from shoelib.pipeline import SINGLE_FILE_SUFFIXES, describe_model_source

    if Path(str(model)).suffix.lower() in SINGLE_FILE_SUFFIXES:
        raise TrainConfigError(
            f"model={model!r} is a single-file checkpoint; training loads the UNet, VAE and text "
            "encoder separately from a diffusers folder. Convert it once: "
            "`load_pipeline(file, policy, local_config=...).save_pretrained('models/my-sd15')` "
            "(shoelib.pipeline) and pass model='models/my-sd15'")
    return describe_model_source(model).location


def load_component(model: str, name: str, dtype: torch.dtype | None = None):
    """One component of a diffusers-layout model, without loading the rest.

    Training never needs the whole pipeline at once: the VAE and text encoder only while
    caching (and the VAE again to draw validation images), the UNet only afterwards.

    Args:
        model: hub id or local diffusers folder.
        name: "unet", "vae", "text_encoder", "tokenizer" or "scheduler" (a DDPMScheduler
            built from the model's scheduler config, as training uses).
        dtype: weight dtype for models; ignored for the tokenizer and scheduler.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    classes = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel,
               "tokenizer": CLIPTokenizer, "scheduler": DDPMScheduler}
    location = check_model(model)
    kwargs = {"dtype": dtype} if dtype is not None and name in ("unet", "vae", "text_encoder") else {}
    return classes[name].from_pretrained(location, subfolder=name, **kwargs)


def load_inference_scheduler(model: str):
    """The sampler the model ships with (PNDM for SD 1.5), for validation images."""
    import diffusers

    config = diffusers.DDPMScheduler.load_config(check_model(model), subfolder="scheduler")
    return getattr(diffusers, config["_class_name"]).from_config(config)


# --- cached inputs

@dataclass(frozen=True)
class CachedSplit:
    """One split's images and captions as cache keys (see shoelib.latent_cache).

    With a trained text encoder, captions are token ids instead of cached states
    (`token_ids`, (n, 77) int64), which the encoder turns into states at every step.

    masked: its latents were cached with their foreground masks.
    sizes: each image's (width, height) as encoded (its aspect bucket); None: all at the
        resolution x resolution square.
    """

    cache_dir: Path
    latent_keys: tuple[dict[bool, str], ...]
    text_keys: tuple[str, ...]
    captions: tuple[str, ...]
    token_ids: torch.Tensor | None = None
    masked: bool = False
    sizes: tuple[tuple[int, int], ...] | None = None

    def __len__(self) -> int:
        return len(self.captions)

    def groups(self) -> list[list[int]]:
        """The sample indices of each size (bucket), buckets in sorted order; one group of
        all samples without buckets. Batches are drawn within a group: latents of different
        sizes cannot be stacked."""
        if self.sizes is None:
            return [list(range(len(self)))]
        return [[i for i, s in enumerate(self.sizes) if s == size] for size in sorted(set(self.sizes))]

    def most_common_size(self) -> tuple[int, int] | None:
        """The bucket with the most images (ties: the squarer, then the wider), or None."""
        if self.sizes is None:
            return None
        counts = {size: self.sizes.count(size) for size in set(self.sizes)}
        return max(counts, key=lambda s: (counts[s], -max(s) / min(s), s[0]))

    def latent(self, index: int, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return load_latent(self.cache_dir, self.latent_keys[index][flip])

    def mask(self, index: int, flip: bool) -> torch.Tensor | None:
        return load_mask(self.cache_dir, self.latent_keys[index][flip])

    def text(self, index: int) -> torch.Tensor:
        """The caption's cached states, or its token ids when the text encoder trains."""
        if self.token_ids is not None:
            return self.token_ids[index]
        return load_text(self.cache_dir, self.text_keys[index])


@dataclass(frozen=True)
class CachedInputs:
    train: CachedSplit
    val: CachedSplit | None
    empty_text: torch.Tensor  # the "" caption (states or token ids): dropout, CFG negative
    stats: dict[str, CacheStats]


def cache_inputs(config: TrainConfig, splits: dict, device: torch.device,
                 policy: DevicePolicy) -> CachedInputs:
    """Encode every image and caption of the splits once; load and free the VAE and text encoder.

    Args:
        config: the run's settings (model, resolution, random_flip, cache_dir).
        splits: {"train": DataFrame, "val": DataFrame or None} from `read_split`.
        device: where to run the encoders.
        policy: the device policy; the encoders run in its `encoder_dtype`.
    """
    cache_dir = Path(config.cache_dir)
    vae = load_component(config.model, "vae", policy.encoder_dtype).to(device).eval()
    tokenizer = load_component(config.model, "tokenizer")
    text_encoder = None
    if config.train_text_encoder:
        print("train_text_encoder: caption states are not cached; the text encoder, trained "
              "with its LoRA, encodes the captions at every step")
    else:
        text_encoder = load_component(config.model, "text_encoder",
                                      policy.encoder_dtype).to(device).eval()
    flips = (False, True) if config.random_flip else (False,)
    cached, stats = {}, {}
    for name, frame in splits.items():
        if frame is None:
            cached[name] = None
            continue
        # Validation always uses the unflipped image: its loss must be comparable across steps.
        masked = "mask_path" in frame.columns
        sizes = bucket_sizes_of(frame, config) if config.aspect_buckets else None
        latent_keys, stats[f"{name}_latents"] = cache_latents(
            [Path(p) for p in frame["image_path"]], config.resolution,
            flips if name == "train" else (False,), vae, cache_dir,
            mask_paths=[Path(p) for p in frame["mask_path"]] if masked else None, sizes=sizes)
        if text_encoder is None:
            cached[name] = CachedSplit(cache_dir, tuple(latent_keys), (), tuple(frame["text"]),
                                       token_ids=tokenize(tokenizer, list(frame["text"])),
                                       masked=masked, sizes=sizes)
            continue
        text_keys, stats[f"{name}_text"] = cache_text(list(frame["text"]), tokenizer,
                                                      text_encoder, cache_dir)
        cached[name] = CachedSplit(cache_dir, tuple(latent_keys), tuple(text_keys),
                                   tuple(frame["text"]), masked=masked, sizes=sizes)
    if text_encoder is None:
        empty_text = tokenize(tokenizer, [""])[0]
    else:
        (empty_key,), _ = cache_text([""], tokenizer, text_encoder, cache_dir)
        empty_text = load_text(cache_dir, empty_key)
    del vae, text_encoder
    free_memory(device)
    return CachedInputs(cached["train"], cached["val"], empty_text, stats)


def bucket_sizes_of(frame, config: TrainConfig) -> tuple[tuple[int, int], ...]:
    """Each image's training size: the aspect bucket of about resolution² pixels nearest its
    own shape (`shoelib.images.prepare_box`; 02's 448x576 becomes 56x72 at resolution 64),
    from the image file's header."""
    from PIL import Image

    sizes = []
    for path in frame["image_path"]:
        with Image.open(path) as image:
            sizes.append(prepare_box(image.width, image.height, config.resolution, True))
    return tuple(sizes)


# --- the diffusion objective (pure functions; tests compare them with diffusers')

@dataclass(frozen=True)
class Batch:
    latents: torch.Tensor   # (n, 4, h, w), scaled by the VAE factor
    text: torch.Tensor      # (n, 77, hidden)
    noise: torch.Tensor     # like latents
    timesteps: torch.Tensor  # (n,) int64
    mask: torch.Tensor | None = None  # (n, 1, h, w) foreground share per latent pixel


def snr(noise_scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t) per timestep (float32)."""
    alpha_bar = noise_scheduler.alphas_cumprod.to(torch.float64)[timesteps.cpu()]
    return (alpha_bar / (1 - alpha_bar)).float()


def min_snr_weights(noise_scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample loss weights of min-SNR-gamma (Hang et al. 2023, eq. 9 and its v form).

    epsilon prediction: min(SNR, gamma) / SNR; v prediction: min(SNR, gamma) / (SNR + 1).
    """
    ratio = snr(noise_scheduler, timesteps)
    clipped = ratio.clamp(max=gamma)
    if noise_scheduler.config.prediction_type == "v_prediction":
        return clipped / (ratio + 1)
    return clipped / ratio


def noise_target(noise_scheduler, batch: Batch) -> torch.Tensor:
    """What the UNet should predict: the noise (epsilon) or the velocity (v_prediction)."""
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return batch.noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(batch.latents, batch.noise, batch.timesteps)
    raise TrainConfigError(f"the model's scheduler has prediction_type={kind!r}; training "
                           "supports 'epsilon' and 'v_prediction'")


def squared_error(unet, batch: Batch, noise_scheduler, policy: DevicePolicy,
                  device: torch.device, text_encoder=None) -> torch.Tensor:
    """The UNet's squared error per latent element on a noised batch, (n, c, h, w), in
    float32 whatever the UNet's precision. With a (trained) `text_encoder`, batch.text holds
    token ids, encoded here."""
    noisy = noise_scheduler.add_noise(batch.latents, batch.noise, batch.timesteps)
    prediction = unet(noisy.to(device, policy.dtype), batch.timesteps.to(device),
                      encoder_hidden_states=text_states(batch.text, text_encoder, device,
                                                        policy.dtype),
                      return_dict=False)[0]
    target = noise_target(noise_scheduler, batch).to(device)
    return F.mse_loss(prediction.float(), target.float(), reduction="none")


def masked_mean(error: torch.Tensor, mask: torch.Tensor | None,
                background_loss_weight: float) -> torch.Tensor:
    """Per-sample mean of `error` (n, c, h, w), each latent pixel weighted by
    fg + background_loss_weight * (1 - fg), fg = its foreground share (`mask`, (n, 1, h, w)).

    The weighted sum is divided by the sample's weight sum (OneTrainer's "normalize masked
    area loss"), not by the pixel count as kohya's `apply_masked_loss` then `mean` do: so the
    loss stays a mean squared error on the same scale whatever the weight, a small product
    gets as much gradient as a large one, and the learning rate means the same with and
    without masks. With weight 1 (or no mask) it is the plain mean. A sample without any
    foreground at weight 0 contributes 0 instead of 0/0.
    """
    dims = tuple(range(1, error.ndim))
    if background_loss_weight == 1:
        return error.mean(dim=dims)
    if mask is None:
        raise TrainConfigError(f"background_loss_weight={background_loss_weight} needs the "
                               "split's foreground masks; rerun 02_prepare_dataset")
    fg = mask.to(error.device, error.dtype)
    weight = (fg + background_loss_weight * (1 - fg)).expand_as(error)
    return (error * weight).sum(dim=dims) / weight.sum(dim=dims).clamp_min(1e-12)


def diffusion_loss(unet, batch: Batch, noise_scheduler, snr_gamma: float,
                   policy: DevicePolicy, device: torch.device, text_encoder=None,
                   background_loss_weight: float = 1.0) -> torch.Tensor:
    """Mean squared error of the UNet's prediction on a noised batch, weighted towards the
    product by `masked_mean` when background_loss_weight < 1, then min-SNR weighted per
    sample if `snr_gamma` > 0. Computed in float32 whatever the UNet's precision. With a
    (trained) `text_encoder`, batch.text holds token ids, encoded here."""
    per_sample = masked_mean(squared_error(unet, batch, noise_scheduler, policy, device,
                                           text_encoder),
                             batch.mask, background_loss_weight)
    if snr_gamma:
        per_sample = per_sample * min_snr_weights(noise_scheduler, batch.timesteps,
                                                  snr_gamma).to(device)
    return per_sample.mean()


def text_states(text: torch.Tensor, text_encoder, device: torch.device,
                dtype: torch.dtype) -> torch.Tensor:
    """Caption states for the UNet: `text` itself (cached states), or the text encoder's last
    hidden states of `text` (token ids) when the encoder trains."""
    if text_encoder is None:
        return text.to(device, dtype)
    return text_encoder(text.to(device), return_dict=False)[0].to(dtype)


def sample_batch(split: CachedSplit, indices: list[int], generator: torch.Generator,
                 config: TrainConfig, num_timesteps: int, empty_text: torch.Tensor) -> Batch:
    """Draw latents, flips, caption dropout, noise and timesteps for some samples.

    Everything random comes from `generator` (CPU), so a run is reproducible on any device
    and a resumed run continues the same random stream.
    """
    latents, texts, masks = [], [], []
    for i in indices:
        flip = config.random_flip and bool(torch.rand((), generator=generator) < 0.5)
        mean, std = split.latent(i, flip)
        latents.append(mean + std * torch.randn(mean.shape, generator=generator))
        if split.masked:  # the mask of the same (mirrored or not) latent
            masks.append(split.mask(i, flip))
        dropped = config.caption_dropout and bool(
            torch.rand((), generator=generator) < config.caption_dropout)
        texts.append(empty_text if dropped else split.text(i))
    stacked = torch.stack(latents)
    noise = torch.randn(stacked.shape, generator=generator)
    if config.noise_offset:
        # Offset noise (Guttenberg 2023): a per-channel constant lets the model shift the
        # mean brightness, which zero-mean noise at t=T never teaches it.
        noise = noise + config.noise_offset * torch.randn(
            (stacked.shape[0], stacked.shape[1], 1, 1), generator=generator)
    timesteps = torch.randint(0, num_timesteps, (len(indices),), generator=generator)
    return Batch(stacked, torch.stack(texts), noise, timesteps,
                 torch.stack(masks) if masks else None)


# --- data order and run state

class DataOrder:
    """An endless stream of dataset indices, reshuffled every epoch by its own generator.

    With `groups` (the indices of each aspect bucket, `CachedSplit.groups`) every `batch`
    consecutive indices come from one group: each epoch shuffles every group, fills its last
    batch with the group's first shuffled indices again (a batch always has `batch` samples),
    and shuffles the batches of all groups together. `take(batch)` is then one batch.

    With `repeats` (per index; `category_balance`), an epoch holds index i repeats[i] times.
    """

    def __init__(self, size: int, seed: int, groups: list[list[int]] | None = None,
                 batch: int = 1, repeats: Sequence[int] | None = None) -> None:
        self.size = size
        self.groups = groups if groups is not None and len(groups) > 1 else None
        self.batch = batch
        # All ones: the pool is range(size), and the stream is the one without repeats.
        self.repeats = list(repeats) if repeats is not None else [1] * size
        self.pool = [i for i in range(size) for _ in range(self.repeats[i])]
        self.generator = cpu_generator(seed)
        self.permutation: list[int] = []
        self.position = 0
        self.epoch = 0

    def _epoch(self) -> list[int]:
        if self.groups is None:
            return [self.pool[j] for j in torch.randperm(len(self.pool), generator=self.generator)]
        batches = []
        for members in self.groups:
            group = [i for i in members for _ in range(self.repeats[i])]
            shuffled = [group[i] for i in torch.randperm(len(group), generator=self.generator)]
            filled = [shuffled[i % len(shuffled)]
                      for i in range(-(-len(shuffled) // self.batch) * self.batch)]
            batches += [filled[i:i + self.batch] for i in range(0, len(filled), self.batch)]
        order = torch.randperm(len(batches), generator=self.generator).tolist()
        return [index for b in order for index in batches[b]]

    def take(self, n: int) -> list[int]:
        if self.groups is not None and n != self.batch:
            raise ValueError(f"a bucketed data order takes batches of {self.batch}, not {n}")
        out: list[int] = []
        while len(out) < n:
            if self.position == len(self.permutation):
                self.permutation = self._epoch()
                self.position = 0
                self.epoch += 1
            k = min(n - len(out), len(self.permutation) - self.position)
            out += self.permutation[self.position:self.position + k]
            self.position += k
        return out

    def state_dict(self) -> dict:
        return {"permutation": self.permutation, "position": self.position, "epoch": self.epoch,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.permutation = list(state["permutation"])
        self.position, self.epoch = int(state["position"]), int(state["epoch"])
        self.generator.set_state(state["generator"])


@dataclass
class History:
    """What the run measured; saved in every checkpoint so curves survive a resume."""

    train_loss: list[list[float]] = field(default_factory=list)  # [step, loss]
    val_loss: list[list[float]] = field(default_factory=list)    # [step, loss]
    # [step, loss on the product alone], when the val split has masks
    val_loss_foreground: list[list[float]] = field(default_factory=list)
    grids: list[list] = field(default_factory=list)              # [step, path in output_dir]
    step_seconds: list[float] = field(default_factory=list)


@dataclass
class LoopState:
    """Everything a checkpoint restores besides the LoRA, optimizer and LR schedule."""

    step: int
    order: DataOrder
    generator: torch.Generator  # this process's stream: flips, dropout, latents, noise, t
    history: History
    ema: object | None = None   # diffusers' EMAModel of the LoRA weights (ema_decay > 0)


def rng_state(generator: torch.Generator) -> dict:
    """Every random state of this process, in types `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
            "torch": torch.get_rng_state(), "sampling": generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng_state(state: dict, generator: torch.Generator) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["sampling"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- checkpoints

_CHECKPOINT = re.compile(r"^step_(\d+)$")


def checkpoints_dir(config: TrainConfig) -> Path:
    return Path(config.output_dir) / "checkpoints"


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint folders, oldest first (staging folders start with '.' and are ignored);
    `verify_checkpoint` says whether one is intact."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _CHECKPOINT.match(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(_CHECKPOINT.match(p.name).group(1)))


def verify_checkpoint(folder: Path) -> str | None:
    """What is wrong with a checkpoint folder (None: intact).

    `save_checkpoint` writes manifest.json last, with the size and sha256 of every other
    file, so a truncated, missing or altered file is caught here instead of failing inside
    safetensors, torch.load or json. A checkpoint without a manifest was written before
    checkpoints had one and is taken as it is.
    """
    manifest = folder / CHECKPOINT_MANIFEST
    if not manifest.is_file():
        return None if (folder / "state.json").is_file() else "state.json is missing"
    try:
        files = read_json(manifest)["files"]
    except (ValueError, KeyError, TypeError) as err:
        return f"{CHECKPOINT_MANIFEST} is unreadable ({err})"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{name} has {path.stat().st_size:,} bytes, not {expected['bytes']:,}"
        if file_sha256(path) != expected["sha256"]:
            return f"{name} does not match its sha256"
    return None


def resume_checkpoint(folder: Path) -> Path | None:
    """The newest intact checkpoint in `folder` (None when there is none at all).

    A damaged newer checkpoint is skipped with a warning naming it and what is wrong; it is
    replaced when training reaches its step again.

    Raises:
        CheckpointError: there are checkpoints, but none is intact.
    """
    found = list_checkpoints(folder)
    broken = []
    for checkpoint in reversed(found):
        problem = verify_checkpoint(checkpoint)
        if problem is None:
            if broken:
                warnings.warn(f"checkpoint {'; '.join(broken)}: resuming from the older "
                              f"{checkpoint} instead", UserWarning, stacklevel=2)
            return checkpoint
        broken.append(f"{checkpoint} is damaged ({problem})")
    if broken:
        raise CheckpointError(f"no intact checkpoint to resume: {'; '.join(broken)}. Delete "
                              f"{folder} to train from the start")
    return None


def train_data_fingerprint(frame) -> str:
    """A sha256 of the train split as training sees it: file names, captions and image sizes
    in file order. Resuming compares this, not the folder's path, so a moved run resumes."""
    rows = [[Path(p).name, text, Path(p).stat().st_size]
            for p, text in zip(frame["image_path"], frame["text"], strict=True)]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def check_resume(checkpoint: Path, config: TrainConfig, num_processes: int,
                 train_data: str, mixed_precision: str) -> None:
    """Raise ResumeMismatchError naming every setting that differs from the checkpoint's.

    `train_data` is `train_data_fingerprint` of the train split now. A checkpoint written
    before checkpoints recorded it is compared by train_dir instead. `mixed_precision` is
    the policy's resolved precision: a bf16 checkpoint does not go on in fp32 unannounced.
    Settings added after a checkpoint was written compare as their defaults.
    """
    saved = read_json(checkpoint / "state.json")
    defaults = TrainConfig.field_defaults()
    now = {**config.to_dict(), "num_processes": num_processes, TRAIN_DATA_KEY: train_data,
           MIXED_PRECISION_KEY: mixed_precision}
    before = {**defaults, **saved["config"], "num_processes": saved["num_processes"],
              TRAIN_DATA_KEY: saved.get(TRAIN_DATA_KEY, train_data),
              MIXED_PRECISION_KEY: saved.get(MIXED_PRECISION_KEY, "no")}
    free = RESUME_FREE_KEYS - ({"train_dir"} if TRAIN_DATA_KEY not in saved else set())
    differing = sorted(k for k in now.keys() | before.keys()
                       if k not in free and now.get(k) != before.get(k))
    if differing:
        changes = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in differing)
        raise ResumeMismatchError(
            f"{checkpoint} was written with different settings ({changes}); resuming would mix "
            f"two runs. Use the checkpoint's values to resume, or start over by deleting "
            f"{checkpoint.parent} (or choosing another output folder)")


def save_checkpoint(config: TrainConfig, accelerator, unet, optimizer, lr_scheduler,
                    state: LoopState, train_data: str, text_encoder=None) -> Path:
    """Write checkpoints/step_NNNNNN atomically (staging folder, then rename); keep the last K.

    Every process writes its own random states; the main process writes the rest and, last,
    the manifest that `verify_checkpoint` checks them against.
    """
    root = checkpoints_dir(config)
    final = root / f"step_{state.step:06d}"
    staging = root / f".step_{state.step:06d}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(state.generator), staging / f"rng_{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        from safetensors.torch import save_file

        save_file(peft_lora_state_dict(accelerator.unwrap_model(unet)),
                  str(staging / "lora.safetensors"))
        if text_encoder is not None:
            save_file(peft_lora_state_dict(accelerator.unwrap_model(text_encoder)),
                      str(staging / TEXT_ENCODER_LORA_FILE))
        scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else {}
        torch.save({"optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(),
                    "data_order": state.order.state_dict(), "scaler": scaler},
                   staging / "training_state.pt")
        if state.ema is not None:
            torch.save(state.ema.state_dict(), staging / EMA_FILE)
        write_json(staging / "state.json", {
            "step": state.step, "config": config.to_dict(), TRAIN_DATA_KEY: train_data,
            MIXED_PRECISION_KEY: accelerator.mixed_precision,
            "num_processes": accelerator.num_processes, "history": asdict(state.history)})
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(staging / CHECKPOINT_MANIFEST, {"files": {
            p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(staging.iterdir())}})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        for old in list_checkpoints(root)[:-config.checkpoints_to_keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(folder: Path, accelerator, unet, optimizer, lr_scheduler,
                    state: LoopState, text_encoder=None) -> None:
    """Restore a checkpoint written by `save_checkpoint` into the live objects."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(accelerator.unwrap_model(unet),
                              load_file(str(folder / "lora.safetensors")), adapter_name="default")
    if text_encoder is not None:
        set_peft_model_state_dict(accelerator.unwrap_model(text_encoder),
                                  load_file(str(folder / TEXT_ENCODER_LORA_FILE)),
                                  adapter_name="default")
    saved = torch.load(folder / "training_state.pt", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    lr_scheduler.load_state_dict(saved["lr_scheduler"])
    if saved["scaler"] and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(saved["scaler"])
    state.order.load_state_dict(saved["data_order"])
    if state.ema is not None:
        state.ema.load_state_dict(torch.load(folder / EMA_FILE, weights_only=True))
    restore_rng_state(torch.load(folder / f"rng_{accelerator.process_index}.pt",
                                 weights_only=True), state.generator)
    meta = read_json(folder / "state.json")
    state.step = int(meta["step"])
    state.history = History(**meta["history"])


# --- validation

def validation_loss(unet, split: CachedSplit, noise_scheduler, config: TrainConfig,
                    policy: DevicePolicy, device: torch.device,
                    text_encoder=None) -> tuple[float, float | None]:
    """Plain MSE on the validation split with the same latents, noise and timesteps every
    time (drawn from a generator seeded with the run's seed), so values are comparable
    across steps; and, when the split has masks, the same MSE on the product alone
    (`masked_mean` at background weight 0), whatever background_loss_weight trains with, so
    that runs with different weights compare on the pixels that matter.

    Returns:
        (loss, foreground loss or None without masks).
    """
    plain = replace(config, random_flip=False, caption_dropout=0.0, noise_offset=0.0)
    generator = cpu_generator(config.seed)
    total, foreground, count = 0.0, 0.0, 0
    batches = [group[start:start + config.train_batch_size] for group in split.groups()
               for start in range(0, len(group), config.train_batch_size)]
    for indices in batches:
        batch = sample_batch(split, indices, generator, plain,
                             noise_scheduler.config.num_train_timesteps, empty_text=None)
        with torch.no_grad():
            error = squared_error(unet, batch, noise_scheduler, policy, device, text_encoder)
        total += masked_mean(error, None, 1.0).sum().item()
        if batch.mask is not None:
            foreground += masked_mean(error, batch.mask, 0.0).sum().item()
        count += len(indices)
    return total / count, (foreground / count if split.masked else None)


VALIDATION_BATCH = 8  # validation prompts per pipeline call: a batch of 8 costs a fraction of 8 calls


def validation_images(unet, prompt_embeds: list[torch.Tensor], empty_text: torch.Tensor,
                      config: TrainConfig, device: torch.device,
                      size: tuple[int, int] | None = None, batch_size: int = 1) -> np.ndarray:
    """Images of the validation prompts, seed `config.seed + i` for prompt i, at `size`
    (width, height; with aspect buckets the train split's most common bucket, the shape the
    LoRA saw most) or the resolution x resolution square, `batch_size` prompts per pipeline
    call (each image from its own generator, so the same image alone or batched).

    The VAE is loaded for this and freed afterwards; prompts come as cached text states, so
    no text encoder is needed. A fresh StableDiffusionPipeline with the saved LoRA and the
    same prompts and seeds draws the same images (tests check this).

    Returns:
        float array (n, height, width, 3) in [0, 1].
    """
    from diffusers import StableDiffusionPipeline

    width, height = size or (config.resolution, config.resolution)
    vae = load_component(config.model, "vae", unet.dtype).to(device)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=None, tokenizer=None, unet=unet,
        scheduler=load_inference_scheduler(config.model), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    images = []
    for start in range(0, len(prompt_embeds), batch_size):
        embeds = torch.stack(prompt_embeds[start:start + batch_size]).to(device, unet.dtype)
        out = pipe(prompt_embeds=embeds,
                   negative_prompt_embeds=empty_text[None].expand_as(embeds).to(device, unet.dtype),
                   height=height, width=width,
                   num_inference_steps=config.validation_inference_steps,
                   guidance_scale=config.validation_guidance_scale,
                   generator=[cpu_generator(config.seed + i)
                              for i in range(start, start + len(embeds))], output_type="np")
        images.extend(out.images)
    del pipe, vae
    free_memory(device)
    return np.stack(images)


# --- the result

@dataclass(frozen=True)
class TrainResult:
    """What a run produced. Losses are [step, value] pairs over the whole run (resumes included)."""

    steps: int
    train_loss: list
    val_loss: list
    val_loss_foreground: list  # [step, validation loss on the product alone]; [] without masks
    validation_grids: list
    validation_prompts: tuple[str, ...]
    lora_diffusers: Path
    lora_kohya: Path
    trainable_params: int
    num_train_images: int
    seconds_per_step: float | None  # median step time over the run (resumes included)
    step_seconds: tuple[float, ...]  # wall time of every optimizer step, in order
    peak_memory_bytes: int
    resumed_from: int | None
    cache_stats: dict
    attention: tuple[str, ...] = ()  # attention processors the UNet ran (see attention_processors)
    last_images: np.ndarray | None = None  # the last validation images, if made in this call
    buckets: dict = field(default_factory=dict)  # "WxH" -> train images (aspect buckets only)


def kohya_metadata(config: TrainConfig, steps: int, num_images: int,
                   mixed_precision: str,
                   sizes: tuple[tuple[int, int], ...] | None = None,
                   dataset_dirs: dict | None = None) -> dict[str, str]:
    """Training facts under kohya's `ss_*` names, which A1111/ComfyUI show for a LoRA.

    `mixed_precision` is the resolved one ("no", "fp16", "bf16"). DoRA and LoRA+ go in
    `ss_network_args`, where kohya records network options. With aspect buckets, `sizes`
    (each train image's bucket) fills kohya's `ss_bucket_info`: every bucket's resolution
    and image count. `dataset_dirs` ({folder: {"n_repeats", "img_count"}}) is kohya's
    `ss_dataset_dirs`: each train split with the repeats `category_balance` gave it.
    """
    buckets = {}
    if config.aspect_buckets and sizes:
        buckets = {"ss_bucket_info": json.dumps({"buckets": {
            str(i): {"resolution": list(size), "count": sizes.count(size)}
            for i, size in enumerate(sorted(set(sizes)))}})}
    network_args = {}
    if config.use_dora:
        network_args["use_dora"] = True
    if config.loraplus_lr_ratio != 1:
        network_args["loraplus_lr_ratio"] = config.loraplus_lr_ratio
    return {
        "ss_network_module": "networks.lora", "ss_network_dim": config.lora_rank,
        "ss_network_alpha": config.lora_alpha, "ss_sd_model_name": config.model,
        "ss_base_model_version": "sd_v1", "ss_v2": False, "ss_steps": steps,
        "ss_max_train_steps": config.max_train_steps,
        "ss_resolution": f"({config.resolution}, {config.resolution})",
        "ss_num_train_images": num_images, "ss_seed": config.seed,
        "ss_learning_rate": config.learning_rate, "ss_lr_scheduler": config.lr_scheduler,
        "ss_lr_warmup_steps": config.lr_warmup_steps,
        "ss_batch_size_per_device": config.train_batch_size,
        "ss_gradient_accumulation_steps": config.gradient_accumulation_steps,
        "ss_min_snr_gamma": config.snr_gamma, "ss_noise_offset": config.noise_offset,
        "ss_caption_dropout_rate": config.caption_dropout, "ss_flip_aug": config.random_flip,
        "ss_target_modules": ",".join(LORA_TARGET_MODULES),
        "ss_mixed_precision": mixed_precision, "ss_optimizer": config.optimizer,
        "ss_network_train_unet_only": not config.train_text_encoder,
        "ss_unet_lr": config.learning_rate,
        "ss_text_encoder_lr": (config.text_encoder_lr or config.learning_rate
                               if config.train_text_encoder else 0.0),
        "ss_ema_decay": config.ema_decay, "ss_channels_last": config.channels_last,
        "ss_allow_tf32": config.allow_tf32, "ss_torch_compile": config.torch_compile,
        "ss_background_loss_weight": config.background_loss_weight,
        "ss_enable_bucket": config.aspect_buckets, **buckets,
        "ss_category_balance": config.category_balance,
        **({"ss_dataset_dirs": json.dumps(dataset_dirs)} if dataset_dirs else {}),
        **({"ss_network_args": json.dumps(network_args)} if network_args else {}),
        "modelspec.architecture": "stable-diffusion-v1/lora", "modelspec.sai_model_spec": "1.0.0",
    }


# --- the loop

def train(config: TrainConfig, policy: DevicePolicy | None = None,
          progress: bool = True) -> TrainResult:
    """Train the LoRA (resuming from the latest valid checkpoint), export it, return the record.

    The output folder is locked for the run: a second run into it fails with the holder's
    pid (FolderInUseError) instead of mixing its checkpoints with this one's.

    Args:
        config: the run's settings.
        policy: device and precision; default `choose_policy(config.device)`.
        progress: show a tqdm progress bar.

    Raises:
        TrainConfigError, MissingInputError, DatasetError: bad settings or inputs (before
            any model is loaded).
        ResumeMismatchError: the checkpoint in output_dir has other settings.
        NonFiniteLossError: the loss became NaN/inf (the step is named; the last good
            checkpoint is kept).
        CheckpointError: checkpoints exist but none is intact.
        FolderInUseError: another run holds output_dir.
    """
    from accelerate import PartialState

    policy = resolve_policy(config, policy)
    with shared_folder_lock(config.output_dir, PartialState(cpu=policy.device == "cpu")):
        return _train(config, policy, progress)


def resolve_policy(config: TrainConfig, policy: DevicePolicy | None) -> DevicePolicy:
    """The device policy of the run: `policy`, or one chosen for config.device and
    config.mixed_precision; a policy that contradicts an explicit mixed_precision is refused.

    Raises:
        TrainConfigError: the policy trains in another precision, or the optimizer cannot
            run on its device.
    """
    if policy is None:
        policy = choose_policy(config.device, MIXED_PRECISION_DTYPES[config.mixed_precision])
    elif config.mixed_precision not in ("auto", policy.mixed_precision):
        raise TrainConfigError(
            f"mixed_precision={config.mixed_precision!r} but the device policy trains in "
            f"{policy.mixed_precision!r} ({policy.dtype_name} weights); choose the policy with "
            f"dtype={MIXED_PRECISION_DTYPES[config.mixed_precision]!r} or set "
            "mixed_precision='auto'")
    if config.optimizer == "adamw8bit":
        if policy.device != "cuda":
            raise TrainConfigError(f"optimizer='adamw8bit' runs on CUDA only (bitsandbytes); "
                                   f"this run is on {policy.device}: use optimizer='adamw'")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise TrainConfigError("optimizer='adamw8bit' needs bitsandbytes: `pip install -e "
                                   "'.[cuda]'`, or use optimizer='adamw'") from None
    return policy


def _train(config: TrainConfig, policy: DevicePolicy, progress: bool) -> TrainResult:
    """The run itself; `train` holds the output folder's lock around it."""
    from tqdm.auto import tqdm

    # 1. Check inputs before loading any model: settings, data, model location, resume.
    splits = check_inputs(config)
    accelerator = make_accelerator(config, policy)
    train_data = train_data_fingerprint(splits["train"])
    previous = resume_checkpoint(checkpoints_dir(config))
    if previous:
        check_resume(previous, config, accelerator.num_processes, train_data,
                     policy.mixed_precision)
    # 2. Cache latents and caption states (main process first; others then find them
    #    cached), then free the VAE and text encoder.
    with accelerator.main_process_first():
        inputs = cache_inputs(config, splits, accelerator.device, policy)
    prompts = validation_prompts(config, inputs)
    # 3. The frozen UNet with its trainable LoRA, the optimizer and the LR schedule.
    unet, text_encoder, noise_scheduler, optimizer, lr_scheduler = trainable_models(
        config, policy, accelerator)
    lora_params = [p for model in (unet, text_encoder) if model is not None
                   for p in model.parameters() if p.requires_grad]
    # 4. Run state; resume from the latest checkpoint if there is one.
    # With aspect buckets, each global micro-batch (every process's share) is one bucket's.
    order = DataOrder(len(inputs.train), config.seed, inputs.train.groups(),
                      config.train_batch_size * accelerator.num_processes,
                      repeats=splits["train"]["repeats"].tolist())
    state = LoopState(step=0, order=order,
                      generator=cpu_generator(config.seed + 1 + accelerator.process_index),
                      history=History(), ema=lora_ema(config, lora_params))
    resumed_from = None
    if previous:
        load_checkpoint(previous, accelerator, unet, optimizer, lr_scheduler, state,
                        text_encoder)
        resumed_from = state.step
    accelerator.init_trackers("lora", config={k: v if isinstance(v, int | float | str | bool)
                                              else str(v) for k, v in config.to_dict().items()})

    # 5. The loop: one iteration = one optimizer step, then validation and checkpoints as
    #    scheduled (the last step always gets both).
    last_images = None
    bar = tqdm(total=config.max_train_steps, initial=state.step, desc="LoRA steps",
               disable=not (progress and accelerator.is_main_process))
    try:
        if state.step == 0 and config.validation_every:  # the base model, for comparison
            last_images = run_validation(config, accelerator, unet, inputs, noise_scheduler,
                                         policy, state, prompts, text_encoder)
        train_mode(unet, text_encoder)
        while state.step < config.max_train_steps:
            started = time.perf_counter()
            step_loss = accumulate_gradients(config, accelerator, unet, inputs, noise_scheduler,
                                             policy, state, text_encoder)
            accelerator.clip_grad_norm_(lora_params, config.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if state.ema is not None:
                state.ema.step(lora_params)
            state.step += 1
            state.history.step_seconds.append(time.perf_counter() - started)
            state.history.train_loss.append([state.step, step_loss])
            accelerator.log({"loss/train": step_loss, "lr": lr_scheduler.get_last_lr()[0]},
                            step=state.step)
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}")
            done = state.step == config.max_train_steps
            if config.validation_every and (state.step % config.validation_every == 0 or done):
                with ema_weights(state.ema, lora_params):
                    last_images = run_validation(config, accelerator, unet, inputs,
                                                 noise_scheduler, policy, state, prompts,
                                                 text_encoder)
                train_mode(unet, text_encoder)
            if done or (config.checkpoint_every and state.step % config.checkpoint_every == 0):
                save_checkpoint(config, accelerator, unet, optimizer, lr_scheduler, state,
                                train_data, text_encoder)
        bar.close()
        # 6. Export the LoRA in diffusers and kohya formats.
        with ema_weights(state.ema, lora_params):
            lora_diffusers, lora_kohya = export_lora(config, accelerator, unet, state.step,
                                                     len(inputs.train), text_encoder,
                                                     inputs.train.sizes, dataset_dirs(splits["train"]))
    finally:
        bar.close()
        accelerator.end_training()

    seconds = state.history.step_seconds
    return TrainResult(
        steps=state.step, train_loss=state.history.train_loss, val_loss=state.history.val_loss,
        val_loss_foreground=state.history.val_loss_foreground,
        validation_grids=[[step, str(Path(config.output_dir) / grid)]
                          for step, grid in state.history.grids],
        validation_prompts=tuple(prompts),
        lora_diffusers=lora_diffusers, lora_kohya=lora_kohya,
        trainable_params=sum(p.numel() for p in lora_params),
        num_train_images=len(inputs.train),
        seconds_per_step=statistics.median(seconds) if seconds else None,
        step_seconds=tuple(seconds),
        peak_memory_bytes=peak_memory_bytes(policy.device), resumed_from=resumed_from,
        cache_stats={k: asdict(v) for k, v in inputs.stats.items()},
        attention=attention_processors(accelerator.unwrap_model(unet)), last_images=last_images,
        buckets=bucket_counts(inputs.train))


def bucket_counts(split: CachedSplit) -> dict[str, int]:
    """"WxH" -> how many images of the split train at that bucket, most first ({} without
    aspect buckets)."""
    if split.sizes is None:
        return {}
    counts = {f"{w}x{h}": split.sizes.count((w, h)) for w, h in sorted(set(split.sizes))}
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def lora_ema(config: TrainConfig, lora_params: list):
    """diffusers' EMAModel of the LoRA weights when ema_decay > 0, else None.

    Its decay ramps up as min(ema_decay, (1 + t) / (10 + t)) at step t, so the average is not
    dominated by the random initial weights in a short run.
    """
    if not config.ema_decay:
        return None
    from diffusers.training_utils import EMAModel

    return EMAModel(lora_params, decay=config.ema_decay)


@contextmanager
def ema_weights(ema, lora_params: list) -> Iterator[None]:
    """Inside the block the LoRA holds the EMA weights (nothing changes without an EMA)."""
    if ema is None:
        yield
        return
    ema.store(lora_params)
    ema.copy_to(lora_params)
    try:
        yield
    finally:
        ema.restore(lora_params)


def train_mode(*models) -> None:
    """Put the trained models (None: not trained) back in training mode after validation."""
    for model in models:
        if model is not None:
            model.train()


def check_inputs(config: TrainConfig) -> dict:
    """The train and val splits, read and checked, after checking the model location.

    Returns:
        {"train": DataFrame, "val": DataFrame or None} for `cache_inputs`.
    """
    import pandas as pd

    from shoelib.dataset import read_split, read_splits

    def folders(value) -> list:
        return list(value) if isinstance(value, tuple) else [value]

    train = [read_split(d) for d in folders(config.train_dir)]
    repeats = (split_repeats([len(f) for f in train]) if config.category_balance
               else [1] * len(train))
    splits = {"train": pd.concat([f.assign(repeats=r) for f, r in zip(train, repeats, strict=True)],
                                 ignore_index=True),
              "val": read_splits(folders(config.val_dir)) if config.val_dir else None}
    _require(config.background_loss_weight == 1 or "mask_path" in splits["train"].columns,
             f"background_loss_weight={config.background_loss_weight} needs foreground masks, "
             f"but {' / '.join(str(Path(d) / 'metadata.jsonl') for d in folders(config.train_dir))} "
             "lists none (no mask_file_name); "
             "rerun 02_prepare_dataset to write them, or set background_loss_weight=1")
    check_model(config.model)
    return splits


def dataset_dirs(train) -> dict[str, dict[str, int]]:
    """{category/split folder: {"n_repeats", "img_count"}} of the train frame (`check_inputs`)."""
    folders = train["image_path"].map(lambda p: "/".join(Path(p).parts[-3:-1]))
    return {folder: {"n_repeats": int(group["repeats"].iloc[0]), "img_count": len(group)}
            for folder, group in train.groupby(folders, sort=False)}


def split_repeats(sizes: Sequence[int]) -> list[int]:
    """How often each train split's images are drawn per epoch under `category_balance`:
    round(largest split / its size), at least 1, as kohya's `num_repeats` per dataset folder.
    A category of 42 photos beside one of 277 is drawn 7 times per epoch instead of once."""
    largest = max(sizes)
    return [max(1, round(largest / n)) for n in sizes]


def make_accelerator(config: TrainConfig, policy: DevicePolicy):
    """The run's Accelerator: the policy's mixed precision, TensorBoard logs in output_dir."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if (AcceleratorState._shared_state
            and AcceleratorState._shared_state.get("_mixed_precision") != policy.mixed_precision):
        # accelerate keeps one process-wide state and refuses a second Accelerator in another
        # precision ("restart your runtime"); a notebook rerun in another dtype is legitimate.
        # The process group (PartialState) is kept.
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=policy.mixed_precision, cpu=policy.device == "cpu",
                       log_with="tensorboard",
                       project_dir=str(Path(config.output_dir) / "logs"))


def validation_prompts(config: TrainConfig, inputs: CachedInputs) -> tuple[str, ...]:
    """The first `num_validation_prompts` captions of the val split (train if there is none)."""
    source = inputs.val if inputs.val is not None else inputs.train
    return source.captions[:min(config.num_validation_prompts, len(source))]


def trainable_models(config: TrainConfig, policy: DevicePolicy, accelerator):
    """The UNet, frozen in the policy's dtype, with a trainable LoRA on its attention
    projections (and the text encoder with one on its attention projections when
    train_text_encoder), plus the noise scheduler, the optimizer and the LR schedule.

    The seed is set here, so every process builds the same initial LoRA. The LR schedule is
    stepped by hand once per optimizer step (accelerate would step it once per process).

    Returns:
        (unet, text encoder or None, both prepared by accelerate, noise scheduler,
        optimizer, LR scheduler).
    """
    from accelerate.utils import set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    set_seed(config.seed)
    unet = load_component(config.model, "unet", policy.dtype).to(accelerator.device)
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha,
                                init_lora_weights="gaussian", use_dora=config.use_dora,
                                target_modules=list(LORA_TARGET_MODULES)))
    # LoRA weights in float32 even when the UNet is half: the optimizer update of a
    # half-precision weight underflows, and GradScaler refuses to unscale fp16 gradients.
    cast_training_params(unet, dtype=torch.float32)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if config.channels_last:
        unet.to(memory_format=torch.channels_last)
    if config.allow_tf32 and policy.device == "cuda":
        allow_tf32()
    text_encoder = None
    if config.train_text_encoder:
        text_encoder = load_component(config.model, "text_encoder",
                                      policy.dtype).to(accelerator.device)
        text_encoder.requires_grad_(False)
        add_text_encoder_lora(text_encoder, LoraConfig(
            r=config.lora_rank, lora_alpha=config.lora_alpha, init_lora_weights="gaussian",
            use_dora=config.use_dora, target_modules=list(TEXT_ENCODER_LORA_TARGET_MODULES)))
        cast_training_params(text_encoder, dtype=torch.float32)
        if config.gradient_checkpointing:
            text_encoder.gradient_checkpointing_enable()
    noise_scheduler = load_component(config.model, "scheduler")
    optimizer = make_optimizer(config, unet, text_encoder)
    lr_scheduler = get_scheduler(config.lr_scheduler, optimizer,
                                 num_warmup_steps=config.lr_warmup_steps,
                                 num_training_steps=config.max_train_steps)
    if text_encoder is None:
        unet, optimizer = accelerator.prepare(unet, optimizer)
    else:
        unet, text_encoder, optimizer = accelerator.prepare(unet, text_encoder, optimizer)
    if config.torch_compile:
        # In place (Module.compile: no wrapper, so state-dict keys and unwrap_model are as
        # without it), after accelerate's DDP wrapping, as PyTorch advises.
        unet.compile()
    return unet, text_encoder, noise_scheduler, optimizer, lr_scheduler


def allow_tf32() -> None:
    """TF32 for float32 matmuls on CUDA: several times faster on Ampere and newer GPUs, with
    float32's range but 10 mantissa bits instead of 23. (cuDNN convolutions use TF32 by
    PyTorch's default already.)"""
    torch.set_float32_matmul_precision("high")


def attention_processors(unet) -> tuple[str, ...]:
    """The attention implementations the UNet runs (AttnProcessor2_0: PyTorch's SDPA)."""
    return tuple(sorted({type(p).__name__ for p in unet.attn_processors.values()}))


def make_optimizer(config: TrainConfig, unet, text_encoder=None) -> torch.optim.Optimizer:
    """config.optimizer over the trainable (LoRA) weights of the UNet and the text encoder.

    The text encoder's LoRA is its own group at text_encoder_lr. With LoRA+
    (loraplus_lr_ratio > 1; Hayou et al. 2024) each model's B (up) matrices are another
    group at ratio x its rate; the LR schedule scales every group alike. With neither there
    is one group in the modules' order, as checkpoints written before them expect.
    Adafactor runs with the given rate (no relative step, no parameter scaling), as kohya's
    recommended settings do, so that the LR schedule means the same for every optimizer.
    """
    models = [(unet, config.learning_rate)]
    if text_encoder is not None:
        models.append((text_encoder, config.text_encoder_lr or config.learning_rate))
    groups = []
    for model, lr in models:
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if config.loraplus_lr_ratio == 1:
            groups.append({"params": [p for _, p in named], "lr": lr})
        else:
            groups += [{"params": [p for n, p in named if ".lora_B." not in n], "lr": lr},
                       {"params": [p for n, p in named if ".lora_B." in n],
                        "lr": lr * config.loraplus_lr_ratio}]
    if config.optimizer == "adamw8bit":
        from bitsandbytes.optim import AdamW8bit

        return AdamW8bit(groups, lr=config.learning_rate)
    if config.optimizer == "prodigy":
        from prodigyopt import Prodigy

        return Prodigy(groups, lr=config.learning_rate)
    if config.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=config.learning_rate, relative_step=False,
                         scale_parameter=False, warmup_init=False)
    return torch.optim.AdamW(groups, lr=config.learning_rate)


def accumulate_gradients(config: TrainConfig, accelerator, unet, inputs: CachedInputs,
                         noise_scheduler, policy: DevicePolicy, state: LoopState,
                         text_encoder=None) -> float:
    """Forward and backward over `gradient_accumulation_steps` micro-batches of
    `train_batch_size` images on each process; returns the step's loss (mean over processes).

    Raises:
        NonFiniteLossError: the loss is NaN/inf (before any weight is updated).
    """
    rank, world = accelerator.process_index, accelerator.num_processes
    micro = config.train_batch_size
    losses = []
    for k in range(config.gradient_accumulation_steps):
        # Every process draws the same global micro-batch order and takes its share.
        indices = state.order.take(micro * world)[rank * micro:(rank + 1) * micro]
        batch = sample_batch(inputs.train, indices, state.generator, config,
                             noise_scheduler.config.num_train_timesteps, inputs.empty_text)
        # Gradients are all-reduced across processes only on the last micro-batch.
        last = k == config.gradient_accumulation_steps - 1
        with ExitStack() as no_sync:
            for model in (unet, text_encoder):
                if model is not None and not last:
                    no_sync.enter_context(accelerator.no_sync(model))
            with accelerator.autocast():
                loss = diffusion_loss(unet, batch, noise_scheduler, config.snr_gamma,
                                      policy, accelerator.device, text_encoder,
                                      config.background_loss_weight)
            accelerator.backward(loss / config.gradient_accumulation_steps)
        losses.append(loss.detach())
    step_loss = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
    if not np.isfinite(step_loss):
        kept = list_checkpoints(checkpoints_dir(config))
        raise NonFiniteLossError(
            f"loss is {step_loss} at step {state.step + 1}; training stopped before "
            f"updating the weights. Last good checkpoint: "
            f"{kept[-1] if kept else 'none'}. Lower learning_rate "
            f"(now {config.learning_rate}) or train in float32 (dtype policy "
            f"{policy.dtype_name}); a rerun resumes from that checkpoint")
    return step_loss


def export_lora(config: TrainConfig, accelerator, unet, steps: int,
                num_images: int, text_encoder=None,
                sizes: tuple[tuple[int, int], ...] | None = None,
                dataset_dirs: dict | None = None) -> tuple[Path, Path]:
    """Write the trained LoRA in diffusers and kohya formats (main process), then wait.

    Returns:
        (diffusers file, kohya file) in output_dir.
    """
    lora_diffusers = Path(config.output_dir) / DIFFUSERS_WEIGHT_NAME
    lora_kohya = Path(config.output_dir) / KOHYA_WEIGHT_NAME
    if accelerator.is_main_process:
        final_unet = accelerator.unwrap_model(unet)
        final_encoder = accelerator.unwrap_model(text_encoder) if text_encoder is not None else None
        save_diffusers_lora(final_unet, lora_diffusers, final_encoder)
        save_kohya_lora(final_unet, config.lora_alpha, lora_kohya,
                        kohya_metadata(config, steps, num_images, accelerator.mixed_precision,
                                       sizes, dataset_dirs),
                        final_encoder)
    accelerator.wait_for_everyone()
    return lora_diffusers, lora_kohya


def run_validation(config: TrainConfig, accelerator, unet, inputs: CachedInputs,
                   noise_scheduler, policy: DevicePolicy, state: LoopState,
                   prompts: tuple[str, ...], text_encoder=None) -> np.ndarray | None:
    """Validation loss and images on the main process, recorded in `state.history`.

    With a trained `text_encoder`, captions are encoded by it (with its LoRA) here.

    Returns:
        The images (n, h, w, 3) on the main process, None elsewhere or without prompts.
    """
    images = None
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(unet)
        model.eval()
        encoder = accelerator.unwrap_model(text_encoder) if text_encoder is not None else None
        if encoder is not None:
            encoder.eval()
        with accelerator.autocast():
            if inputs.val is not None:
                loss, foreground = validation_loss(model, inputs.val, noise_scheduler, config,
                                                   policy, accelerator.device, encoder)
                state.history.val_loss.append([state.step, loss])
                accelerator.log({"loss/val": loss}, step=state.step)
                if foreground is not None:
                    state.history.val_loss_foreground.append([state.step, foreground])
                    accelerator.log({"loss/val_foreground": foreground}, step=state.step)
            if prompts:
                source = inputs.val if inputs.val is not None else inputs.train
                with torch.no_grad():
                    embeds = [text_states(source.text(i)[None], encoder, accelerator.device,
                                          torch.float32)[0] for i in range(len(prompts))]
                    empty = text_states(inputs.empty_text[None], encoder, accelerator.device,
                                        torch.float32)[0]
                images = validation_images(model, embeds, empty, config, accelerator.device,
                                           inputs.train.most_common_size(),
                                           batch_size=policy.batch_size(VALIDATION_BATCH))
        if images is not None:
            grid = save_validation_grid(images, Path(config.output_dir) / "validation"
                                        / f"step_{state.step:06d}.png")
            state.history.grids.append([state.step, str(grid.relative_to(config.output_dir))])
            accelerator.get_tracker("tensorboard").log_images(
                {"validation": images}, step=state.step, dataformats="NHWC")
    accelerator.wait_for_everyone()
    return images


def save_validation_grid(images: np.ndarray, path: Path) -> Path:
    """One row of the validation images (n, h, w, 3) in [0, 1], each shown at its own size."""
    import matplotlib.pyplot as plt

    _, h, w, _ = images.shape
    fig = image_grid(np.clip(images, 0, 1), ncols=len(images), tile_inches=(w / 100, h / 100))
    save_figure(fig, path, dpi=100)
    plt.close(fig)  # not shown again at the end of a notebook cell
    return path


def main(argv: list[str] | None = None) -> int:
    """`python -m shoelib.train --config run.json` (or under `accelerate launch`)."""
    parser = argparse.ArgumentParser(prog="python -m shoelib.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path,
                        help="JSON file with TrainConfig fields (see shoelib/train.py)")
    args = parser.parse_args(argv)
    try:
        result = train(TrainConfig.from_json(args.config))
    except (ValueError, FileNotFoundError, FolderInUseError, CheckpointError) as err:
        # settings, inputs, a folder another run holds, no intact checkpoint: one line
        print(f"error: {err}", file=sys.stderr)
        return 1
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(json.dumps({"steps": result.steps, "lora_diffusers": str(result.lora_diffusers),
                          "lora_kohya": str(result.lora_kohya)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
