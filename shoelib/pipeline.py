"""Load Stable Diffusion 1.5 from a hub id, a local folder or a single checkpoint file, and
generate images that are checked for the failures half precision causes (NaN, black, flat).

    policy = choose_policy("auto")
    pipe = load_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5", policy)
    result = generate_checked(pipe, "A professional product photo of black casual shoes",
                              seed=42, steps=30, resolution=512, policy=policy)
    result.verdict.ok, result.image, result.seconds, result.fp32_retry
"""

from __future__ import annotations

import html
import math
import re
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from shoelib import checks
from shoelib.captions import DEFAULT_TEMPLATE, check_template, fill
from shoelib.device import (
    DevicePolicy,
    fallback_dtype,
    initial_latents,
    step_noise_generator,
    synchronize,
)
from shoelib.paths import resolve

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
DEFAULT_HUB_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
# "owner/name" with exactly one slash: the shape of a Hugging Face repo id.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# What 04's test images ask for, written as the catalogue writes it; the prompts are the
# caption template filled with these (no brand: it is not part of what a test image shows).
TEST_SUBJECTS = (
    {"colour": "Black", "season": "Summer", "gender": "Men", "view": "side view"},
    {"colour": "Brown", "season": "Winter", "gender": "Men", "view": "three-quarter view"},
    {"colour": "White", "season": "Summer", "gender": "Women", "view": "top view"},
    {"colour": "Grey", "season": "Fall", "gender": "Unisex", "view": "pair"},
    {"colour": "Blue", "season": "Spring", "gender": "Men", "view": "side view"},
    {"colour": "Red", "season": "Summer", "gender": "Women", "view": "three-quarter view"},
)

# Image checks (pixels in [0, 1]). A black product shoot still has a white background, so
# an image whose 99th percentile is below 10/255 is a failure, not a dark photo.
BLACK_LEVEL = 10 / 255
BLACK_QUANTILE = 0.99
# Below ~2.5/255 of standard deviation an image is a flat colour with no object in it.
MIN_PIXEL_STD = 0.01


class ModelNotFoundError(FileNotFoundError):
    """The model parameter names nothing loadable (missing path, bad folder, hub unreachable)."""


class GenerationSettingsError(ValueError):
    """An invalid resolution, step count or guidance scale."""


# --- where the model comes from

@dataclass(frozen=True)
class ModelSource:
    """A parsed `model` parameter.

    Attributes:
        kind: "hub" (repo id), "folder" (diffusers layout) or "single_file" (.safetensors/.ckpt).
        location: the repo id, or the resolved absolute path.
        config: for single files, the local diffusers folder holding the component configs.
    """

    kind: str
    location: str
    config: Path | None = None


def describe_model_source(model: str | Path,
                          local_config: str | Path | None = None) -> ModelSource:
    """Tell a hub id from a folder from a single file, and check it exists. No heavy work.

    Relative paths are resolved against the project root. Something that exists on disk is
    a path; something shaped "owner/name" that does not is a hub id.

    Args:
        model: hub id, local diffusers folder, or .safetensors/.ckpt file.
        local_config: diffusers folder with the configs a single file needs (ignored otherwise).

    Raises:
        ModelNotFoundError: the path does not exist, a folder has no model_index.json, or a
            single file has no `local_config`.
    """
    text = str(model).strip()
    path = resolve(text).resolve()
    is_single = path.suffix.lower() in SINGLE_FILE_SUFFIXES
    if not path.exists() and not is_single and _HUB_ID.match(text):
        return ModelSource("hub", text)
    if not path.exists():
        raise ModelNotFoundError(
            f"model={text!r}: {path} does not exist; pass an existing diffusers folder, a "
            f".safetensors/.ckpt file, or a hub id such as {DEFAULT_HUB_ID!r}")
    if is_single:
        return ModelSource("single_file", str(path), _config_folder(text, local_config))
    if path.is_dir():
        _require_model_index(path, f"model={text!r}")
        return ModelSource("folder", str(path))
    raise ModelNotFoundError(
        f"model={text!r} is a file but not {' or '.join(SINGLE_FILE_SUFFIXES)}; pass a "
        "single-file checkpoint, a diffusers folder or a hub id")


def _config_folder(model: str, local_config: str | Path | None) -> Path:
    if local_config is None:
        raise ModelNotFoundError(
            f"model={model!r} is a single-file checkpoint, which holds weights but not the "
            "component configs (scheduler, tokenizer, layer sizes); without them diffusers "
            "would download them from the hub. Pass local_config=<a local diffusers folder of "
            "the same architecture>, e.g. its configs only (a few kB): `hf download "
            f"{DEFAULT_HUB_ID} --include '*.json' --include '*.txt' --local-dir models/sd15-config`")
    folder = resolve(local_config).resolve()
    _require_model_index(folder, f"local_config={str(local_config)!r}")
    return folder


def _require_model_index(folder: Path, what: str) -> None:
    if not folder.is_dir():
        raise ModelNotFoundError(f"{what}: {folder} is not a folder; pass a diffusers folder")
    if not (folder / "model_index.json").exists():
        raise ModelNotFoundError(
            f"{what}: {folder} has no model_index.json, so it is not a diffusers pipeline "
            "folder; pass the folder that `save_pretrained` or `hf download` produced")


# --- loading

def load_pipeline(model: str | Path, policy: DevicePolicy, *, safety_checker: bool = False,
                  local_config: str | Path | None = None):
    """Load a Stable Diffusion pipeline onto `policy.device` in `policy.dtype`.

    The safety checker is off by default: it replaces images it flags with black ones, which
    the black-image check of `generate_checked` cannot tell from a precision failure, and
    this project only renders product photos of shoes. With `safety_checker=True` it is
    loaded where the model has one and its flags are recorded per image.

    Args:
        model: hub id (e.g. "stable-diffusion-v1-5/stable-diffusion-v1-5"), a local diffusers
            folder (with model_index.json), or a single .safetensors/.ckpt file.
        policy: device, dtype and attention slicing, from `shoelib.device.choose_policy`.
        safety_checker: keep the model's NSFW safety checker.
        local_config: for a single file, a local diffusers folder with the component configs
            (so no network is needed); ignored for hub ids and folders.

    Returns:
        A `StableDiffusionPipeline` on the policy's device.

    Raises:
        ModelNotFoundError: bad path or folder, single file without `local_config`, or a hub
            id that is neither cached nor downloadable (no network / HF_HUB_OFFLINE=1).
    """
    # 1. Check inputs before importing or reading any weights.
    source = describe_model_source(model, local_config)
    # 2. Load.
    from diffusers import StableDiffusionPipeline

    components = {} if safety_checker else {"safety_checker": None,
                                            "requires_safety_checker": False}
    if source.kind == "single_file":
        pipe = StableDiffusionPipeline.from_single_file(
            source.location, config=str(source.config), dtype=policy.dtype,
            local_files_only=True, **components)
    elif source.kind == "folder":
        pipe = StableDiffusionPipeline.from_pretrained(source.location, dtype=policy.dtype,
                                                       **components)
    else:
        pipe = _from_hub(source.location, policy.dtype, components)
    if safety_checker and pipe.safety_checker is None:
        warnings.warn(f"model={str(model)!r} has no safety checker; images are not screened",
                      UserWarning, stacklevel=2)
    # 3. Place it per policy.
    pipe = pipe.to(policy.device)
    if policy.attention_slicing:
        pipe.enable_attention_slicing()
    return pipe


def _from_hub(repo_id: str, dtype: torch.dtype, components: dict):
    from diffusers import StableDiffusionPipeline

    try:
        return StableDiffusionPipeline.from_pretrained(repo_id, dtype=dtype, **components)
    except OSError as err:  # diffusers turns offline / no-cache / unreachable into OSError
        cause = err.__cause__ or err.__context__
        why = f"{type(cause).__name__}: {cause}" if cause else str(err)
        raise ModelNotFoundError(
            f"model={repo_id!r} could not be loaded: it is not in the local Hugging Face cache "
            f"and the Hub could not be used ({why.splitlines()[0]}). Download it once where "
            f"there is network with `hf download {repo_id}` (older clients: "
            f"`huggingface-cli download {repo_id}`; or run this once online, which fetches only "
            "the files the pipeline needs), or pass a local diffusers folder or a .safetensors "
            f"file as model (there is no local folder {resolve(repo_id)})") from err


# --- generation settings

def resolution_problem(resolution: object, name: str = "resolution") -> str | None:
    """What is wrong with an image side for SD (training and generation alike), or None.

    The rule: a whole number of pixels, a positive multiple of 8 (the VAE downsamples 8x). The
    hint is the nearest such side (halfway values go up), so 100 suggests 104 everywhere.
    `name` is the parameter the side came from (resolution, width, height).
    """
    if isinstance(resolution, int) and not isinstance(resolution, bool) \
            and resolution >= 8 and resolution % 8 == 0:
        return None
    if isinstance(resolution, int | float) and not isinstance(resolution, bool) \
            and math.isfinite(resolution):
        fix = max(8, 8 * math.floor(resolution / 8 + 0.5))
    else:
        fix = 512  # not a number at all: SD 1.5's own side
    return f"{name}={resolution!r} is not a positive multiple of 8; use {fix}"


def check_generation_settings(resolution: int, steps: int, guidance_scale: float = 7.5,
                              steps_param: str = "inference_steps") -> None:
    """Raise GenerationSettingsError for values the pipeline would reject or mishandle.

    Args:
        resolution: image side in pixels; a multiple of 8 (the VAE downsamples 8x).
        steps: denoising steps, >= 1.
        guidance_scale: classifier-free guidance weight, >= 0 (<= 1 disables guidance).
        steps_param: the parameter `steps` came from (04: inference_steps, 06: generation_steps).
    """
    if problem := resolution_problem(resolution):
        raise GenerationSettingsError(problem)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise GenerationSettingsError(f"{steps_param}={steps!r} must be a whole number >= 1; "
                                      "use e.g. 30 (real model) or 4 (tiny demo model)")
    checks.number(guidance_scale, "guidance_scale", 0, example=7.5, error=GenerationSettingsError)


# --- checking an image

@dataclass(frozen=True)
class Verdict:
    """Is a generated image usable? `problem` is a short code, `reason` a sentence.

    problem: "ok", "nonfinite_latents", "nonfinite_pixels", "black", "constant" or
    "safety_checker" (blacked out on purpose: not a precision failure, never retried).
    Pixel statistics are over finite pixels in [0, 1]; latent statistics are None when no
    latents were given.
    """

    ok: bool
    problem: str
    reason: str
    pixel_mean: float
    pixel_std: float
    pixel_min: float
    pixel_max: float
    nonfinite_pixels: int
    latent_mean: float | None = None
    latent_std: float | None = None
    nonfinite_latents: int = 0

    def as_dict(self) -> dict:
        """JSON-ready: NaN statistics (e.g. of all-NaN latents) become None."""
        return {k: None if isinstance(v, float) and not np.isfinite(v) else v
                for k, v in self.__dict__.items()}


def image_to_array(image: np.ndarray | Image.Image | torch.Tensor) -> np.ndarray:
    """Pixels as float64 in [0, 1], height x width x channels.

    uint8 arrays and PIL images are divided by 255; float arrays are taken as already in
    [0, 1] (diffusers' `output_type="np"`); a CHW tensor is permuted.
    """
    if isinstance(image, Image.Image):
        image = np.asarray(image)
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu()
        image = (image.permute(1, 2, 0) if image.ndim == 3 and image.shape[0] in (1, 3, 4)
                 else image).numpy()
    array = np.asarray(image)
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    return array.astype(np.float64)


def check_image(latents: torch.Tensor | None, image: np.ndarray | Image.Image | torch.Tensor,
                *, black_level: float = BLACK_LEVEL,
                min_std: float = MIN_PIXEL_STD) -> Verdict:
    """Check the final latents and the decoded pixels of one image.

    Args:
        latents: the denoised latents (before VAE decoding), or None if not available.
        image: the decoded image (see `image_to_array` for accepted forms).
        black_level: an image whose 99th-percentile pixel is at or below this is black.
        min_std: an image whose pixel standard deviation is below this is a flat colour.

    Returns:
        The verdict: the first failing check in the order non-finite latents, non-finite
        pixels, black, constant; otherwise ok.
    """
    pixels = image_to_array(image)
    if pixels.size == 0:
        raise ValueError(f"image has no pixels (shape {pixels.shape})")
    finite = np.isfinite(pixels)
    values = pixels[finite]
    stats = {
        "pixel_mean": float(values.mean()) if values.size else float("nan"),
        "pixel_std": float(values.std()) if values.size else float("nan"),
        "pixel_min": float(values.min()) if values.size else float("nan"),
        "pixel_max": float(values.max()) if values.size else float("nan"),
        "nonfinite_pixels": int((~finite).sum()),
    }
    if latents is not None:
        lat = latents.detach().float().cpu()
        lat_finite = torch.isfinite(lat)
        kept = lat[lat_finite]
        stats["nonfinite_latents"] = int((~lat_finite).sum())
        stats["latent_mean"] = float(kept.mean()) if kept.numel() else float("nan")
        stats["latent_std"] = float(kept.std()) if kept.numel() > 1 else float("nan")
    if stats.get("nonfinite_latents", 0):
        return Verdict(False, "nonfinite_latents",
                       f"{stats['nonfinite_latents']} NaN/inf values in the latents "
                       "(typical of float16 overflow)", **stats)
    if stats["nonfinite_pixels"]:
        return Verdict(False, "nonfinite_pixels",
                       f"{stats['nonfinite_pixels']} NaN/inf pixels after VAE decoding", **stats)
    if np.quantile(values, BLACK_QUANTILE) <= black_level:
        return Verdict(False, "black",
                       f"all black: 99% of pixels <= {black_level * 255:.0f}/255", **stats)
    if stats["pixel_std"] < min_std:
        return Verdict(False, "constant",
                       f"near-constant image: pixel std {stats['pixel_std']:.4f} < {min_std}",
                       **stats)
    return Verdict(True, "ok", "finite, not black, not flat", **stats)


# --- guarded generation

@dataclass(frozen=True)
class GeneratedImage:
    """One checked image.

    Attributes:
        prompt, seed: what was asked.
        image: the image (NaN pixels shown as black).
        verdict: the check of the returned image.
        seconds: wall time of the returned attempt (denoising + decoding).
        dtype: dtype the returned image was made in.
        fp32_retry: True if a half-precision attempt failed and this is the float32 retry.
        first_verdict: the failed half-precision verdict when fp32_retry, else None.
        first_nonfinite_step: denoising step at which NaN/inf first appeared (in the failed
            half-precision attempt when fp32_retry), else None.
        nsfw: the safety checker's flag, None when no checker is loaded.
    """

    prompt: str
    seed: int
    image: Image.Image
    verdict: Verdict
    seconds: float
    dtype: str
    fp32_retry: bool = False
    first_verdict: Verdict | None = None
    first_nonfinite_step: int | None = None
    nsfw: bool | None = None

    @property
    def label(self) -> str:
        """Two lines for a grid title: seed, verdict (and retry), seconds and dtype."""
        retry = " (fp32 retry)" if self.fp32_retry else ""
        return (f"seed {self.seed}: {self.verdict.problem}{retry}\n"
                f"{self.seconds:.2f} s, {self.dtype}")

    def record(self) -> dict:
        """JSON-friendly record without the image."""
        return {
            "prompt": self.prompt, "seed": self.seed, "seconds": self.seconds,
            "dtype": self.dtype, "fp32_retry": self.fp32_retry, "nsfw": self.nsfw,
            "first_nonfinite_step": self.first_nonfinite_step,
            "verdict": self.verdict.as_dict(),
            "first_verdict": self.first_verdict.as_dict() if self.first_verdict else None,
        }


class _NonFiniteWatch:
    """`callback_on_step_end` that remembers, per image of the batch, the first step whose
    latents hold NaN/inf."""

    def __init__(self, n: int) -> None:
        self.first_step: list[int | None] = [None] * n

    def __call__(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        bad = ~torch.isfinite(callback_kwargs["latents"]).flatten(1).all(dim=1)
        for i in torch.nonzero(bad).flatten().tolist():
            if self.first_step[i] is None:
                self.first_step[i] = step
        return callback_kwargs


def pipeline_dtype(pipe) -> torch.dtype:
    """The dtype the UNet runs in (the pipeline's working precision)."""
    return pipe.unet.dtype


def decode_latents(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> image tensor in [-1, 1] (NCHW), as the pipeline would decode them."""
    scaled = latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor
    with torch.no_grad():
        return pipe.vae.decode(scaled, return_dict=False)[0]


def _render(pipe, prompts: Sequence[str], seeds: Sequence[int], *, steps: int, width: int,
            height: int, guidance_scale: float, negative_prompt: str | None,
            device: str) -> list[GeneratedImage]:
    """One pipeline call for all prompts, each image from its own CPU-seeded noise, each
    checked. `seconds` is the call's wall time shared equally among its images."""
    dtype = pipeline_dtype(pipe)
    shape = (1, pipe.unet.config.in_channels, height // pipe.vae_scale_factor,
             width // pipe.vae_scale_factor)
    start_latents = torch.cat([initial_latents(s, shape, device, dtype) for s in seeds])
    negative = [negative_prompt] * len(prompts) if negative_prompt else None
    note = truncation_note(pipe.tokenizer, [*prompts, *([negative_prompt] if negative_prompt else [])])
    if note:
        print(note, flush=True)
    watch = _NonFiniteWatch(len(prompts))
    synchronize(device)
    t0 = time.perf_counter()
    # Latent output, decoded here: the guard needs the latents each image came from.
    latents = pipe(list(prompts), negative_prompt=negative, height=height, width=width,
                   num_inference_steps=steps, guidance_scale=guidance_scale,
                   latents=start_latents, generator=[step_noise_generator(s) for s in seeds],
                   output_type="latent", callback_on_step_end=watch).images
    decoded = decode_latents(pipe, latents)
    nsfw, denormalize = [None] * len(prompts), None
    if pipe.safety_checker is not None:
        decoded, flags = pipe.run_safety_checker(decoded, device, dtype)
        nsfw = [bool(f) for f in flags]
        denormalize = [not f for f in nsfw]  # a flagged image is zeros: keep it black
    pixels = pipe.image_processor.postprocess(decoded, output_type="np",
                                              do_denormalize=denormalize)
    synchronize(device)
    seconds = (time.perf_counter() - t0) / len(prompts)
    results = []
    for i, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
        verdict = check_image(latents[i:i + 1], pixels[i])
        if nsfw[i] and not verdict.ok:
            verdict = replace(verdict, problem="safety_checker",
                              reason="blacked out by the safety checker (NSFW flag)")
        image = pipe.image_processor.numpy_to_pil(np.nan_to_num(pixels[i:i + 1], nan=0.0))[0]
        results.append(GeneratedImage(prompt=prompt, seed=int(seed), image=image,
                                      verdict=verdict, seconds=seconds,
                                      dtype=str(dtype).removeprefix("torch."),
                                      first_nonfinite_step=watch.first_step[i], nsfw=nsfw[i]))
    return results


def truncation_note(tokenizer, prompts: Sequence[str]) -> str | None:
    """One line saying which prompts the text encoder will see cut, or None if all fit.

    CLIP reads at most `tokenizer.model_max_length` tokens (77 for SD 1.5) and the pipelines
    cut longer prompts; this line replaces the libraries' alarming messages about it
    (filtered in `shoelib.quiet`).
    """
    limit = tokenizer.model_max_length
    # verbose=False: counting must not itself trigger the tokenizer's warning
    lengths = [len(tokenizer(p, verbose=False).input_ids) for p in prompts if p]
    long = [n for n in lengths if n > limit]
    if not long:
        return None
    if len(lengths) == 1:
        return f"prompt truncated to {limit} tokens ({long[0]} given)"
    return (f"{len(long)} of {len(lengths)} prompts truncated to {limit} tokens "
            f"(up to {max(long)} given)")


def generate_checked_batch(pipe, prompts: Sequence[str], seeds: Sequence[int], *, steps: int,
                           resolution: int, guidance_scale: float = 7.5,
                           negative_prompt: str | None = None,
                           policy: DevicePolicy, width: int | None = None,
                           height: int | None = None) -> list[GeneratedImage]:
    """Generate several images in one pipeline call, check each, retry failures in float32.

    Each image starts from the CPU-seeded noise of its own seed, so it is the same whether it
    is rendered alone or in a batch (up to float rounding). If an image fails the check
    (NaN/inf, black, flat) and `shoelib.device.fallback_dtype` names a precision to fall back
    to (float32 for a float16/bfloat16 pipeline), the pipeline is converted (`to_float32`)
    and the failed images are generated again from the same seeds, in one call. The pipeline
    stays in float32 afterwards: half-precision overflow tends to repeat on every image, and
    converting back and forth would cost each image twice. An image blacked out by the safety
    checker is reported, not retried.

    Args:
        pipe: a pipeline from `load_pipeline`.
        prompts: the text prompts, one per image.
        seeds: noise seeds, one per image (drawn on CPU: the same start on every device).
        steps: denoising steps.
        resolution: image side in px, a multiple of 8.
        guidance_scale: classifier-free guidance weight.
        negative_prompt: what to steer away from (the same for every image), or None.
        policy: the device policy the pipeline was loaded with.
        width, height: the image size when it is not resolution x resolution (multiples of 8).

    Returns:
        The checked images in prompt order; `fp32_retry` says which the float32 retry produced.

    Raises:
        GenerationSettingsError: bad resolution, steps or guidance scale.
    """
    check_generation_settings(resolution, steps, guidance_scale)
    width = resolution if width is None else width
    height = resolution if height is None else height
    for name, side in (("width", width), ("height", height)):
        if problem := resolution_problem(side, name):
            raise GenerationSettingsError(problem)
    if len(prompts) != len(seeds) or not prompts:
        raise ValueError(f"{len(prompts)} prompts and {len(seeds)} seeds: give one seed per "
                         "prompt, at least one")
    settings = {"steps": steps, "width": width, "height": height, "guidance_scale": guidance_scale,
                "negative_prompt": negative_prompt, "device": policy.device}
    results = _render(pipe, prompts, seeds, **settings)
    failed = [i for i, r in enumerate(results) if r.verdict.problem not in ("ok", "safety_checker")]
    if not failed or fallback_dtype(pipeline_dtype(pipe)) is None:
        return results
    to_float32(pipe)
    retries = _render(pipe, [prompts[i] for i in failed], [seeds[i] for i in failed], **settings)
    for i, retry in zip(failed, retries, strict=True):
        results[i] = replace(retry, fp32_retry=True, first_verdict=results[i].verdict,
                             first_nonfinite_step=results[i].first_nonfinite_step)
    return results


def generate_checked(pipe, prompt: str, seed: int, *, steps: int, resolution: int,
                     guidance_scale: float = 7.5, negative_prompt: str | None = None,
                     policy: DevicePolicy) -> GeneratedImage:
    """Generate one image from a CPU-seeded start, check it, retry once in float32 if needed:
    `generate_checked_batch` with a batch of one (see there)."""
    return generate_checked_batch(pipe, [prompt], [seed], steps=steps, resolution=resolution,
                                  guidance_scale=guidance_scale,
                                  negative_prompt=negative_prompt, policy=policy)[0]


def to_float32(pipe) -> None:
    """Convert a loaded pipeline to float32 in place, on its device.

    The weights keep their half-precision rounding (they are not re-read from disk); what
    float32 fixes is the overflow of activations, the cause of NaN latents. Images can
    therefore differ by a grey level or two from a pipeline loaded in float32.
    """
    from diffusers.utils import logging as diffusers_logging

    # diffusers warns that `.to(dtype)` bypasses its keep-in-float32 list; SD 1.5 has none.
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        pipe.to(dtype=torch.float32)
    finally:
        diffusers_logging.set_verbosity(level)


def timing_summary(seconds: list[float]) -> dict:
    """First-image time (includes warm-up: kernel selection, caches) vs the steady state.

    Returns:
        {"seconds_first", "seconds_steady" (median of the rest; None with one image), "n"}.
    """
    if not seconds:
        return {"seconds_first": None, "seconds_steady": None, "n": 0}
    rest = seconds[1:]
    return {"seconds_first": float(seconds[0]),
            "seconds_steady": float(statistics.median(rest)) if rest else None,
            "n": len(seconds)}


def inference_prompts(n: int, template: str = DEFAULT_TEMPLATE,
                      article: str = "Casual Shoes") -> list[str]:
    """`n` test prompts: the template filled with TEST_SUBJECTS in turn (cycling)."""
    return [fill(template, {**TEST_SUBJECTS[i % len(TEST_SUBJECTS)], "article": article})
            for i in range(n)]


@dataclass(frozen=True)
class InferenceTestConfig:
    """Notebook 04's parameters, checked on construction (before any model is loaded)."""

    model: str
    local_config: str | None
    resolution: int
    inference_steps: int
    guidance_scale: float
    n_test_images: int
    inference_seed: int
    caption_template: str
    category: str

    def __post_init__(self) -> None:
        checks.text(self.model, "model", DEFAULT_HUB_ID, GenerationSettingsError)
        check_generation_settings(self.resolution, self.inference_steps, self.guidance_scale)
        checks.whole_number(self.n_test_images, "n_test_images", 1, 4, GenerationSettingsError)
        checks.random_seed(self.inference_seed, "inference_seed", GenerationSettingsError)
        check_template(self.caption_template)
        checks.text(self.category, "category", "Casual Shoes", GenerationSettingsError)

    @property
    def prompts(self) -> list[str]:
        return inference_prompts(self.n_test_images, self.caption_template, self.category)

    @property
    def seeds(self) -> list[int]:
        """Image i uses inference_seed + i."""
        return [self.inference_seed + i for i in range(self.n_test_images)]


# --- showing results

class Playground:
    """04's prompt playground: a labelled prompt box, a seed, Generate, a status line and the
    last `keep` results side by side (image, prompt, seed, verdict), for comparing.

    Generation runs in a thread, so the kernel keeps answering the page: the button is
    disabled and the status says what is happening while it works, and a click that arrives
    meanwhile is refused rather than queued. Images smaller than `display_px` are enlarged for
    display (nearest neighbour: the pixels as generated, only bigger).

    Args:
        generate: (prompt, seed) -> GeneratedImage; 04 passes `generate_checked` on its pipe.
        prompt: the text the box starts with.
        seed: the seed the box starts with.
        keep: results kept side by side.
        display_px: shown image side in px.
        prompt_note: prompt -> a line to show with the result (e.g. `truncation_note`), or None.
    """

    def __init__(self, generate, *, prompt: str, seed: int = 0, keep: int = 4,
                 display_px: int = 256, prompt_note=None) -> None:
        import threading

        import ipywidgets as widgets

        self._generate, self.keep, self.display_px = generate, keep, display_px
        self._prompt_note = prompt_note or (lambda prompt: None)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.results: list[GeneratedImage] = []
        self.refused = 0
        self.prompt = widgets.Textarea(value=prompt, description="prompt",
                                       placeholder="describe the product photo",
                                       layout=widgets.Layout(width="100%", height="4em"))
        self.seed = widgets.IntText(value=seed, description="seed")
        self.button = widgets.Button(description="Generate", button_style="primary",
                                     icon="play")
        self.status = widgets.HTML(value="ready")
        self.history = widgets.HBox(layout=widgets.Layout(flex_flow="row wrap"))
        self.button.on_click(lambda _button: self.click())
        self.box = widgets.VBox([self.prompt, widgets.HBox([self.seed, self.button, self.status]),
                                 self.history])
        self.box.add_class("shoelib-playground")

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def click(self) -> bool:
        """Start one generation; False (and nothing started) while one is running."""
        if not self._lock.acquire(blocking=False):
            self.refused += 1
            return False
        import threading

        prompt, seed = self.prompt.value, int(self.seed.value)
        self.button.disabled = True
        self.button.description = "Generating ..."
        self.status.value = html.escape(f"generating seed {seed} ...")
        self._thread = threading.Thread(target=self._run, args=(prompt, seed), daemon=True)
        self._thread.start()
        return True

    def wait(self, timeout: float | None = None) -> None:
        """Until the running generation (if any) has finished."""
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self, prompt: str, seed: int) -> None:
        try:
            result = self._generate(prompt, seed)
        except Exception as err:  # shown where the user looks, the playground stays usable
            self.status.value = html.escape(f"failed: {type(err).__name__}: {err}")
        else:
            self.results = [result, *self.results][:self.keep]
            self.history.children = [self._card(r) for r in self.results]
            note = self._prompt_note(prompt)
            self.status.value = html.escape(f"{result.verdict.problem} in {result.seconds:.1f} s"
                                            + (f"; {note}" if note else ""))
        finally:
            self.button.description = "Generate"
            self.button.disabled = False
            self._lock.release()

    def _card(self, result: GeneratedImage):
        import io

        import ipywidgets as widgets

        image = result.image
        if max(image.size) < self.display_px:
            factor = self.display_px // max(image.size)
            image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        colour = "green" if result.verdict.ok else "#b00020"
        caption = widgets.HTML(
            f"<div class='shoelib-verdict' style='color:{colour}'><b>{html.escape(result.verdict.problem)}</b>: "
            f"{html.escape(result.verdict.reason)}</div>"
            f"<div>seed {result.seed} · {result.seconds:.1f} s · {html.escape(result.dtype)}</div>"
            f"<div style='font-size:smaller'>{html.escape(result.prompt)}</div>",
            layout=widgets.Layout(width=f"{self.display_px}px"))
        return widgets.VBox([widgets.Image(value=buffer.getvalue(), format="png",
                                           width=self.display_px), caption],
                            layout=widgets.Layout(margin="0 12px 12px 0"))


def prompt_playground(pipe, policy: DevicePolicy, *, steps: int, resolution: int,
                      guidance_scale: float, seed: int = 0, keep: int = 4):
    """04's `Playground` on a loaded pipeline: each image made and checked by
    `generate_checked`. Needs a live Jupyter frontend (`shoelib.browse.widget_frontend()`).
    Returns the playground; display its `box`."""
    return Playground(
        lambda prompt, s: generate_checked(pipe, prompt, s, steps=steps, resolution=resolution,
                                           guidance_scale=guidance_scale, policy=policy),
        prompt=inference_prompts(1)[0], seed=seed, keep=keep,
        prompt_note=lambda prompt: truncation_note(pipe.tokenizer, [prompt]))
