"""Generate the synthetic dataset: base model + LoRA, a seeded prompt plan, checked PNGs.

    plan_config = plan_config_from_split(train_dir, n_images=5000, seed=42)
    gen = GenerateConfig(model="stable-diffusion-v1-5/stable-diffusion-v1-5",
                         lora_path=find_lora("data/full", ""))
    result = generate(plan_config, gen, RunPaths.from_param("data/full").synthetic_run("v1"))

Layout of a run folder (synthetic/<run_name>/):

    000000.png ...     one image per plan item; prompt, seed and settings in its text chunks
    000007.failed.json a plan item given up after `max_attempts` checked failures
    metadata.jsonl     one row per PNG (file_name, text, colour, gender, season, seed, ...):
                       the same shape as 02's split files, so the folder is a training set
    run.json           the settings every image of the folder was made with
    summary.json       counts and timings

The plan is a pure function of its config, item by item (item i depends only on the seed
and i), so a rerun regenerates exactly the missing items and a larger `n_images` extends a
run. PNGs are written atomically; the PNG text chunks are the source of truth, and the
manifest is rebuilt from them at the end. Under `accelerate launch` the remaining items are
sharded over the processes and the main process writes the manifest:

    accelerate launch --multi_gpu --num_processes 4 -m shoelib.generate --config configs/full.yaml
    python -m shoelib.generate --config configs/demo.yaml -p n_images 8    # one process

(`--multi_gpu` is accelerate's torchrun launcher; on a machine without GPUs it starts CPU
processes over gloo, which is how the sharding is tested. `--cpu` alone starts one process.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, PngImagePlugin

from shoelib import checks
from shoelib.captions import (
    DEFAULT_TEMPLATE,
    CaptionTemplateError,
    check_template,
    fill,
    is_missing,
)
from shoelib.images import MAX_BUCKET_RATIO, bucket_sizes, nearest_bucket
from shoelib.io import (
    FolderInUseError,
    atomic_path,
    read_json,
    remove_temp_files,
    shared_folder_lock,
    write_json,
    write_text,
)
from shoelib.paths import RunPaths, resolve

VIEW_PHRASES = ("side view", "three-quarter view", "top view", "pair")
# Accepted `scheduler` names -> diffusers class ("model" keeps the model's own scheduler).
SCHEDULERS = {
    "dpm++": "DPMSolverMultistepScheduler", "ddim": "DDIMScheduler", "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler", "euler_a": "EulerAncestralDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler", "model": None,
}
COLOUR_DISTRIBUTIONS = ("real", "uniform")
MANIFEST = "metadata.jsonl"
RUN_FILE = "run.json"
SUMMARY = "summary.json"
PNG_RECORD_KEY = "shoelib"  # PNG text chunk with the image's record as JSON


class GenerateConfigError(ValueError):
    """A generation or prompt-plan setting that cannot work."""


class LoraNotFoundError(FileNotFoundError):
    """No LoRA where `lora_path` (or notebook 05's summary) points."""


class RunMismatchError(ValueError):
    """A run folder holds images made with other settings than the ones asked for now."""


class EmptyRunError(FileNotFoundError):
    """A synthetic run folder that is missing or holds no image."""


# --- the prompt plan


@dataclass(frozen=True)
class PromptPlanConfig:
    """What to ask for, and how often.

    Attributes:
        n_images: plan length.
        seed: plan seed: item i is drawn from a generator seeded with (seed, i).
        colours, genders, seasons: (value, weight) pairs each attribute is drawn from.
        views: view/style phrases, drawn uniformly.
        article: the product noun of the prompt, e.g. "casual shoes".
        template: the caption template (shoelib.captions); it must use {colour}. A plan
            item has no brand, usage, year or name: clauses with only those are dropped.
    """

    n_images: int
    seed: int
    colours: tuple[tuple[str, float], ...]
    genders: tuple[tuple[str, float], ...] = (("Men", 1.0),)
    seasons: tuple[tuple[str, float], ...] = (("Summer", 1.0),)
    views: tuple[str, ...] = VIEW_PHRASES
    article: str = "casual shoes"
    template: str = DEFAULT_TEMPLATE

    def check(self) -> None:
        """Raise GenerateConfigError for an unusable plan (before any heavy work)."""
        checks.whole_number(self.n_images, "n_images", 1, 5000, GenerateConfigError)
        checks.random_seed(self.seed, "generation_seed", GenerateConfigError)
        for name in ("colours", "genders", "seasons"):
            pairs = getattr(self, name)
            if not pairs or any(w < 0 for _, w in pairs) or sum(w for _, w in pairs) <= 0:
                raise GenerateConfigError(
                    f"{name}={pairs!r} needs at least one value with a positive weight; "
                    "check that the train split has values in that column")
        if not self.views or not all(isinstance(v, str) and v.strip() for v in self.views):
            raise GenerateConfigError(f"view_phrases={list(self.views)!r} must be a list of "
                                      "phrases, e.g. ['side view', 'top view']")
        try:
            # {colour} is required: 07 scores whether each image shows the colour asked for.
            check_template(self.template, required=("colour",))
        except CaptionTemplateError as err:
            raise GenerateConfigError(str(err)) from None


@dataclass(frozen=True)
class PlannedImage:
    """One plan item: what to render and with which seed."""

    index: int
    prompt: str
    seed: int
    colour: str
    gender: str
    season: str
    view: str
    category: str = ""  # the articleType, in a plan over several categories

    @property
    def file_name(self) -> str:
        return f"{self.index:06d}.png"


def attribute_weights(values: Iterable[Any], mode: str = "real") -> tuple[tuple[str, float], ...]:
    """(value, weight) pairs from a column of the train split, most frequent first.

    Args:
        values: the column (missing values such as "", "NA", None are left out).
        mode: "real" (weights = shares in the column) or "uniform" (every value equally).
    """
    if mode not in COLOUR_DISTRIBUTIONS:
        raise GenerateConfigError(f"colour_distribution={mode!r} is unknown; use "
                                  f"{' or '.join(COLOUR_DISTRIBUTIONS)}")
    kept = [str(v).strip() for v in values if not is_missing(v)]
    counts = Counter(kept).most_common()
    total = sum(n for _, n in counts)
    if mode == "uniform":
        return tuple((v, round(1.0 / len(counts), 6)) for v, _ in counts)
    return tuple((v, round(n / total, 6)) for v, n in counts)


def plan_config_from_split(train_dir: str | Path, *, n_images: int, seed: int,
                           colour_distribution: str = "real",
                           views: Sequence[str] = VIEW_PHRASES, article: str = "Casual Shoes",
                           template: str = DEFAULT_TEMPLATE) -> PromptPlanConfig:
    """A plan config whose colours, genders and seasons follow the prepared train split.

    Colours follow the train split's shares ("real") or are uniform over its colours
    ("uniform"); genders and seasons always follow the real shares.
    """
    from shoelib.dataset import read_split

    frame = read_split(train_dir)
    config = PromptPlanConfig(
        n_images=n_images, seed=seed,
        colours=attribute_weights(frame.get("colour", []), colour_distribution),
        genders=attribute_weights(frame.get("gender", []), "real"),
        seasons=attribute_weights(frame.get("season", []), "real"),
        views=tuple(views), article=str(article).lower(), template=template,
    )
    config.check()
    return config


@dataclass(frozen=True)
class MixedPlanConfig:
    """A plan over several categories, each at its share.

    Item i first draws its category (from its own generator, seeded with (seed, i, 1)), then
    is item i of that category's plan config: the attributes, prompt and seed a plan of that
    category alone would give it.

    Attributes:
        n_images: plan length. seed: plan seed (every part has the same).
        parts: (articleType, share, that category's PromptPlanConfig), in list order.
    """

    n_images: int
    seed: int
    parts: tuple[tuple[str, float, PromptPlanConfig], ...]

    def check(self) -> None:
        checks.whole_number(self.n_images, "n_images", 1, 5000, GenerateConfigError)
        checks.random_seed(self.seed, "generation_seed", GenerateConfigError)
        if len(self.parts) < 2 or any(w <= 0 for _, w, _ in self.parts):
            raise GenerateConfigError(f"a plan over categories needs two or more with a positive "
                                      f"share; got {[(c, w) for c, w, _ in self.parts]}")
        for _, _, part in self.parts:
            part.check()

    @property
    def category_shares(self) -> dict[str, float]:
        total = sum(w for _, w, _ in self.parts)
        return {c: w / total for c, w, _ in self.parts}


CATEGORY_SHARES = ("train", "uniform")


def plan_config_from_splits(train_dirs: Mapping[str, str | Path], *, n_images: int, seed: int,
                            category_shares: str = "train", colour_distribution: str = "real",
                            views: Sequence[str] = VIEW_PHRASES, template: str = DEFAULT_TEMPLATE
                            ) -> PromptPlanConfig | MixedPlanConfig:
    """The plan config of one category (`plan_config_from_split`), or over several: each
    category's attributes from its own train split, its share that of its train split
    among them ("train") or equal ("uniform")."""
    from shoelib.dataset import read_split

    if category_shares not in CATEGORY_SHARES:
        raise GenerateConfigError(f"category_shares={category_shares!r} is unknown; use "
                                  f"{' or '.join(CATEGORY_SHARES)}")
    configs = {name: plan_config_from_split(d, n_images=n_images, seed=seed,
                                            colour_distribution=colour_distribution, views=views,
                                            article=name, template=template)
               for name, d in train_dirs.items()}
    if len(configs) == 1:
        return next(iter(configs.values()))
    sizes = {name: len(read_split(d)) for name, d in train_dirs.items()}
    total = sum(sizes.values())
    config = MixedPlanConfig(n_images=n_images, seed=seed, parts=tuple(
        (name, round(sizes[name] / total if category_shares == "train" else 1 / len(configs), 6),
         part) for name, part in configs.items()))
    config.check()
    return config


def _draw(rng: np.random.Generator, pairs: Sequence[tuple[str, float]]) -> str:
    weights = np.array([w for _, w in pairs], dtype=np.float64)
    return pairs[int(rng.choice(len(pairs), p=weights / weights.sum()))][0]


def plan_item(config: PromptPlanConfig | MixedPlanConfig, index: int) -> PlannedImage:
    """Item `index` of the plan; depends only on (config.seed, index) and the weights."""
    if isinstance(config, MixedPlanConfig):
        pick = np.random.default_rng([int(config.seed), int(index), 1])
        category, _, part = config.parts[int(pick.choice(
            len(config.parts), p=np.array(list(config.category_shares.values()))))]
        return replace(plan_item(part, index), category=category)
    rng = np.random.default_rng([int(config.seed), int(index)])
    colour, gender = _draw(rng, config.colours), _draw(rng, config.genders)
    season, view = _draw(rng, config.seasons), config.views[int(rng.integers(len(config.views)))]
    seed = int(rng.integers(0, 2**31 - 1))
    prompt = fill(config.template, {"colour": colour, "article": config.article,
                                    "season": season, "gender": gender, "view": view})
    return PlannedImage(index, prompt, seed, colour, gender, season, view)


def make_plan(config: PromptPlanConfig | MixedPlanConfig) -> list[PlannedImage]:
    """The whole plan; the first k items are the same for any n_images >= k."""
    config.check()
    return [plan_item(config, i) for i in range(config.n_images)]


# --- generation settings


@dataclass(frozen=True)
class GenerateConfig:
    """How each image is rendered.

    Attributes:
        model: hub id, local diffusers folder or single .safetensors/.ckpt file.
        lora_path: the LoRA file to apply, or None for the base model alone.
        lora_strength: LoRA multiplier (1.0 = as trained, 0 = base model).
        scheduler: one of SCHEDULERS ("dpm++" is fast: ~25 steps).
        steps: denoising steps.
        guidance_scale: classifier-free guidance weight.
        negative_prompt: what to steer away from ("" = none).
        resolution: image side in px (multiple of 8); with `aspect_ratio` the area side.
        aspect_ratio: "W:H" of the images, e.g. "3:4" (the catalogue's); "1:1" = the
            resolution x resolution square; otherwise the aspect bucket of about
            resolution² px nearest it (`shoelib.images.bucket_sizes`: 448x576 at 512), as 05
            trains with aspect_buckets. `size` is the (width, height) it gives.
        batch_size: images per pipeline call (the device policy may lower it:
            `DevicePolicy.batch_size`).
        max_attempts: tries per plan item (the next seed each time) before it is given up.
        device, dtype: for `shoelib.device.choose_policy`.
        local_config: diffusers config folder for a single-file model.
    """

    model: str
    lora_path: Path | None
    lora_strength: float = 1.0
    scheduler: str = "dpm++"
    steps: int = 25
    guidance_scale: float = 7.5
    negative_prompt: str = ""
    resolution: int = 512
    batch_size: int = 4
    max_attempts: int = 3
    device: str = "auto"
    dtype: str = "auto"
    local_config: str | None = None
    # One LoRA per category (05's lora_per_category): (articleType, file); an item of a listed
    # category is rendered with its file instead of lora_path.
    category_loras: tuple[tuple[str, Path], ...] = ()
    aspect_ratio: str = "1:1"

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the images: the square, or the bucket of `aspect_ratio`."""
        return generation_size(self.resolution, self.aspect_ratio)

    def check(self) -> None:
        """Raise a clear error for unusable settings, before any model is loaded; errors
        name 06's parameters (generation_steps, generation_batch_size, ...)."""
        from shoelib.pipeline import check_generation_settings

        checks.text(self.model, "model", "stable-diffusion-v1-5/stable-diffusion-v1-5",
                    GenerateConfigError)
        check_generation_settings(self.resolution, self.steps, self.guidance_scale,
                                  steps_param="generation_steps")
        checks.number(self.lora_strength, "lora_strength", example=1.0, error=GenerateConfigError)
        if self.scheduler not in SCHEDULERS:
            raise GenerateConfigError(f"scheduler={self.scheduler!r} is unknown; use one of "
                                      f"{', '.join(SCHEDULERS)}")
        checks.whole_number(self.batch_size, "generation_batch_size", 1, 4, GenerateConfigError)
        parse_aspect_ratio(self.aspect_ratio)
        checks.whole_number(self.max_attempts, "max_attempts", 1, 3, GenerateConfigError)
        if not isinstance(self.negative_prompt, str):
            raise GenerateConfigError(f"negative_prompt={self.negative_prompt!r} must be text; "
                                      '"" for none')
        for path in [self.lora_path, *(p for _, p in self.category_loras)]:
            if path is not None and not Path(path).is_file():
                raise LoraNotFoundError(f"lora_path={str(path)!r} is not a file; run "
                                        "05_train_lora or set lora_path to its .safetensors file")

    def lora_for(self, item: PlannedImage) -> Path | None:
        """The LoRA file that renders `item`."""
        return dict(self.category_loras).get(item.category, self.lora_path)


def parse_aspect_ratio(text: object) -> tuple[int, int]:
    """06's aspect_ratio "W:H" as two whole numbers, within the buckets' 1:2 to 2:1.

    Raises:
        GenerateConfigError: anything else, naming the parameter and the fix.
    """
    fix = 'use "W:H" with whole numbers, e.g. "3:4" (the catalogue\'s) or "1:1" (square)'
    parts = text.split(":") if isinstance(text, str) else []
    if isinstance(text, int) and not isinstance(text, bool):
        # YAML 1.1 reads an unquoted 3:4 as the base-60 number 184
        fix = f'quote it in YAML ("3:4"): unquoted, a ratio reads as a number; {fix}'
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise GenerateConfigError(f"aspect_ratio={text!r} is not a ratio; {fix}")
    width, height = (int(p) for p in parts)
    if max(width, height) / min(width, height) > MAX_BUCKET_RATIO:
        raise GenerateConfigError(f"aspect_ratio={text!r} is beyond 1:2 and 2:1, the shapes "
                                  f"the buckets (and 05) use; {fix}")
    return width, height


def generation_size(resolution: int, aspect_ratio: str) -> tuple[int, int]:
    """(width, height) of 06's images: resolution x resolution for a square aspect_ratio,
    else the aspect bucket of about resolution² px nearest it (multiples of 8)."""
    width, height = parse_aspect_ratio(aspect_ratio)
    if width == height:
        return resolution, resolution
    return nearest_bucket(width, height, bucket_sizes(resolution))


def find_lora(output_root: str | Path, lora_path: str | None = "") -> Path | None:
    """The LoRA file to use.

    Args:
        output_root: the run's output root (05 wrote lora/summary.json there).
        lora_path: "" or None: the diffusers file named in 05's summary; "none": no LoRA
            (the base model, a useful baseline for 07); otherwise a .safetensors file or a
            folder holding pytorch_lora_weights.safetensors.

    Raises:
        LoraNotFoundError: nothing usable there; the message says to run 05 or set lora_path.
        LoraFileError: the file is not a .safetensors file (said now, before a model loads).
    """
    from shoelib.lora_io import DIFFUSERS_WEIGHT_NAME, read_header

    text = "" if lora_path is None else str(lora_path).strip()
    if text.lower() == "none":
        return None
    if text:
        path = resolve(text)
        if path.is_dir():
            path = path / DIFFUSERS_WEIGHT_NAME
        if not path.is_file():
            raise LoraNotFoundError(
                f"lora_path={text!r}: {path} does not exist; pass a LoRA .safetensors file "
                "(or its folder), '' for the one 05_train_lora wrote, or 'none' for the base model")
        read_header(path)
        return path
    paths = RunPaths.from_param(output_root)
    summary = paths.lora / "summary.json"
    if not summary.is_file():
        raise LoraNotFoundError(
            f"no LoRA found: {summary} does not exist. Run 05_train_lora first (same "
            "output_root), or set lora_path to a LoRA .safetensors file, or lora_path='none' "
            "to generate with the base model alone")
    index = read_json(summary)
    if "lora_per_category" in index:
        raise LoraNotFoundError(
            f"{summary} lists one LoRA per category ({', '.join(index['lora_per_category'])}); "
            "generate those categories (`categories`), or set lora_path to one of the files")
    path = paths.locate(index.get("lora_diffusers") or "")
    if not path.is_file():
        raise LoraNotFoundError(f"{summary} names lora_diffusers={str(path)!r}, which does not "
                                "exist; rerun 05_train_lora or set lora_path")
    read_header(path)
    return path


def find_category_loras(output_root: str | Path, categories: Sequence[str]
                        ) -> tuple[tuple[str, Path], ...]:
    """The per-category LoRAs 05 wrote (`lora_per_category`) for `categories`, or () when
    05 trained one LoRA (or none yet: `find_lora` then says what to do).

    Raises:
        LoraNotFoundError: a category has no LoRA of its own, or its file is gone.
    """
    from shoelib.lora_io import read_header

    paths = RunPaths.from_param(output_root)
    summary = paths.lora / "summary.json"
    if not summary.is_file():
        return ()
    per_category = read_json(summary).get("lora_per_category")
    if not per_category:
        return ()
    found = []
    for name in categories:
        if name not in per_category:
            raise LoraNotFoundError(
                f"{summary} has a LoRA for {', '.join(per_category)} but not for {name!r}; rerun "
                "05_train_lora with the same categories, or leave it out")
        path = paths.locate(per_category[name])
        if not path.is_file():
            raise LoraNotFoundError(f"{summary} names {str(path)!r} for {name!r}, which does "
                                    "not exist; rerun 05_train_lora or set lora_path")
        read_header(path)
        found.append((name, path))
    return tuple(found)


def set_scheduler(pipe: Any, name: str) -> None:
    """Swap the pipeline's scheduler for SCHEDULERS[name], keeping the model's noise schedule."""
    import diffusers

    class_name = SCHEDULERS[name]
    if class_name is not None:
        pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config)


def load_generation_pipeline(gen: GenerateConfig, policy: Any) -> Any:
    """Base model on the policy's device, the LoRA applied at its strength, the scheduler set."""
    from shoelib.lora_io import apply_lora
    from shoelib.pipeline import load_pipeline

    pipe = load_pipeline(gen.model, policy, local_config=gen.local_config)
    if gen.lora_path is not None:
        apply_lora(pipe, gen.lora_path, strength=gen.lora_strength)
    set_scheduler(pipe, gen.scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def model_name(model: str | Path) -> str:
    """A model parameter as recorded: an existing path made absolute, a hub id as given."""
    path = resolve(model)
    return str(path.resolve()) if path.exists() else str(model)


def run_settings(plan_config: PromptPlanConfig, gen: GenerateConfig) -> dict[str, Any]:
    """Everything that decides what an image of the plan looks like (n_images excluded: a
    longer plan extends a run). Stored as run.json; a rerun must match it."""
    from shoelib.lora_io import lora_fingerprint

    plan = asdict(plan_config)
    plan.pop("n_images")
    for _, _, part in plan.get("parts", ()):
        part.pop("n_images")
    extra = {"category_loras": {c: lora_fingerprint(p) for c, p in gen.category_loras}
             } if gen.category_loras else {}  # absent for one LoRA: earlier runs still resume
    return {**extra,
        "plan": json.loads(json.dumps(plan)),  # tuples -> lists, as read back from JSON
        "model": model_name(gen.model),
        "lora": str(gen.lora_path) if gen.lora_path else None,
        "lora_fingerprint": lora_fingerprint(gen.lora_path) if gen.lora_path else None,
        "lora_strength": float(gen.lora_strength),
        "scheduler": gen.scheduler, "steps": gen.steps,
        "guidance_scale": float(gen.guidance_scale),
        "negative_prompt": gen.negative_prompt, "resolution": gen.resolution,
        **_size_fields(gen),
    }


def _size_fields(gen: GenerateConfig) -> dict[str, int]:
    """width and height when they are not the resolution x resolution square (a square run
    records what it recorded before aspect ratios existed, so it still resumes)."""
    width, height = gen.size
    return {} if width == height == gen.resolution else {"width": width, "height": height}


def check_run_folder(out_dir: Path, settings: Mapping[str, Any]) -> None:
    """Raise RunMismatchError if out_dir/run.json records other settings and the folder holds
    results made with them (a run.json alone, left by a run that failed to start, is replaced)."""
    path = out_dir / RUN_FILE
    if not path.is_file() or not holds_results(out_dir):
        return
    old = read_json(path)
    # The LoRA counts by content (lora_fingerprint), not by where it lies: moving an
    # output_root moves its LoRA, and the run must still resume.
    changed = [k for k in sorted(set(old) | set(settings))
               if k != "lora" and old.get(k) != settings.get(k)]
    if changed:
        detail = "; ".join(f"{k}: {_short(old.get(k))} -> {_short(settings.get(k))}" for k in changed[:4])
        raise RunMismatchError(
            f"{out_dir} holds images made with other settings ({detail}). Choose a new "
            "run_name, or delete that folder to start over")


def holds_results(out_dir: Path) -> bool:
    """Whether the folder holds an image or a given-up marker of some plan."""
    return any(out_dir.glob("[0-9]*.png")) or any(out_dir.glob("[0-9]*.failed.json"))


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) < 80 else text[:77] + "..."


# --- PNG files and the manifest


def image_record(item: PlannedImage, gen: GenerateConfig, *, seed: int, attempts: int,
                 failures: Sequence[str], fp32_retry: bool, seconds: float, dtype: str,
                 process: int = 0) -> dict:
    """The manifest row of one image (without file_name), also stored in its PNG."""
    lora = gen.lora_for(item)
    return {
        **({"category": item.category} if item.category else {}),
        "index": item.index, "text": item.prompt, "colour": item.colour, "gender": item.gender,
        "season": item.season, "view": item.view, "seed": int(seed),
        "planned_seed": item.seed, "attempts": attempts, "failures": list(failures),
        "fp32_retry": bool(fp32_retry), "seconds": round(float(seconds), 4), "dtype": dtype,
        "model": model_name(gen.model), "lora": str(lora) if lora else None,
        "lora_strength": float(gen.lora_strength), "scheduler": gen.scheduler,
        "steps": gen.steps, "guidance_scale": float(gen.guidance_scale),
        "negative_prompt": gen.negative_prompt, "resolution": gen.resolution,
        **_size_fields(gen), "process": process,
    }


def a1111_parameters(record: Mapping[str, Any]) -> str:
    """The `parameters` text chunk in the form AUTOMATIC1111's "PNG Info" shows."""
    lines = [record["text"]]
    if record.get("negative_prompt"):
        lines.append(f"Negative prompt: {record['negative_prompt']}")
    lines.append(f"Steps: {record['steps']}, Sampler: {record['scheduler']}, "
                 f"CFG scale: {record['guidance_scale']}, Seed: {record['seed']}, "
                 f"Size: {record.get('width', record['resolution'])}x"
                 f"{record.get('height', record['resolution'])}, "
                 f"Model: {Path(str(record['model'])).name}")
    return "\n".join(lines)


def write_png(image: Image.Image, path: Path, record: Mapping[str, Any]) -> Path:
    """Save a PNG atomically with prompt, seed and the full record in its text chunks."""
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", str(record["text"]))
    info.add_text("seed", str(record["seed"]))
    info.add_text("parameters", a1111_parameters(record))
    info.add_text(PNG_RECORD_KEY, json.dumps(record, sort_keys=True))
    with atomic_path(path) as tmp:
        image.convert("RGB").save(tmp, format="PNG", pnginfo=info)
    return path


def read_png_record(path: Path) -> dict | None:
    """The record stored in a PNG written by `write_png`; None if unreadable or foreign."""
    try:
        with Image.open(path) as im:
            # PIL writes text chunks before the pixel data, so `info` has them without
            # decoding the image (`im.text` would decode it).
            raw = im.info.get(PNG_RECORD_KEY)
    except (OSError, ValueError, SyntaxError):
        return None
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and "index" in record else None


def finished_items(out_dir: Path, plan: Sequence[PlannedImage]) -> dict[int, dict]:
    """Plan items already done: index -> PNG record, or {"failed": ...} for given-up items.

    Raises:
        RunMismatchError: a PNG's record asks for another prompt than the plan item.
    """
    done: dict[int, dict] = {}
    for item in plan:
        png = out_dir / item.file_name
        if png.is_file():
            record = read_png_record(png)
            if record is None:
                continue  # not ours or damaged: made again (and atomically replaced)
            if record.get("text") != item.prompt or record.get("planned_seed") != item.seed:
                raise RunMismatchError(
                    f"{png} was made for another plan (prompt {record.get('text')!r}, planned "
                    f"seed {record.get('planned_seed')}); choose a new run_name or delete {out_dir}")
            done[item.index] = record
        elif (marker := out_dir / f"{item.index:06d}.failed.json").is_file():
            done[item.index] = {"failed": read_json(marker)}
    return done


def rebuild_manifest(out_dir: Path, plan: Sequence[PlannedImage]) -> pd.DataFrame:
    """Write metadata.jsonl from the PNGs of the plan (index order) and return it."""
    done = finished_items(out_dir, plan)
    rows = [{"file_name": f"{i:06d}.png", **rec} for i, rec in sorted(done.items())
            if "failed" not in rec]
    write_text(out_dir / MANIFEST, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return pd.DataFrame(rows)


# --- rendering


def render(pipe: Any, prompts: Sequence[str], seeds: Sequence[int], gen: GenerateConfig,
           policy: Any) -> list:
    """Render and check prompts with `gen`'s settings in one pipeline call:
    `shoelib.pipeline.generate_checked_batch`, which retries a failed half-precision image in
    float32 from the same seed. Returns its `GeneratedImage`s, in prompt order."""
    from shoelib.pipeline import generate_checked_batch

    width, height = gen.size
    return generate_checked_batch(pipe, list(prompts), list(seeds), steps=gen.steps,
                                  resolution=gen.resolution, width=width, height=height,
                                  guidance_scale=gen.guidance_scale,
                                  negative_prompt=gen.negative_prompt or None, policy=policy)


def generate_items(pipe: Any, items: Sequence[PlannedImage], out_dir: Path, gen: GenerateConfig,
                   policy: Any, progress: bool = True, process: int = 0) -> Counter:
    """Render, check and save `items` in batches of `gen.batch_size` (as the device policy
    allows). A failed half-precision image is first retried in float32 from the same seed
    (`render`); an image that still fails is tried again with the next seed.

    `process` (the accelerate rank) is recorded with each image.

    Returns:
        Counts: "saved", "regenerated" (extra attempts), "failed" (given up), "fp32_retries".
    """
    from tqdm.auto import tqdm

    counts: Counter = Counter()
    batch = policy.batch_size(gen.batch_size)
    bar = tqdm(total=len(items), desc="generate", disable=not progress)
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        first = render(pipe, [i.prompt for i in chunk], [i.seed for i in chunk], gen, policy)
        for item, result in zip(chunk, first, strict=True):
            seed, failures, seconds = item.seed, [], result.seconds
            while not result.verdict.ok and len(failures) + 1 < gen.max_attempts:
                failures.append(result.verdict.problem)
                seed += 1
                result = render(pipe, [item.prompt], [seed], gen, policy)[0]
                seconds += result.seconds
            counts["regenerated"] += len(failures)
            counts["fp32_retries"] += int(result.fp32_retry)
            if result.verdict.ok:
                record = image_record(item, gen, seed=seed, attempts=len(failures) + 1,
                                      failures=failures, fp32_retry=result.fp32_retry,
                                      seconds=seconds, dtype=result.dtype, process=process)
                write_png(result.image, out_dir / item.file_name, record)
                counts["saved"] += 1
            else:
                failures.append(result.verdict.problem)
                write_json(out_dir / f"{item.index:06d}.failed.json",
                           {"index": item.index, "prompt": item.prompt, "seeds_tried":
                            [item.seed + k for k in range(len(failures))], "failures": failures})
                counts["failed"] += 1
            bar.update(1)
    bar.close()
    return counts


# --- the run


@dataclass(frozen=True)
class GenerationResult:
    """What `generate` did.

    Attributes:
        out_dir: the run folder.
        manifest: metadata.jsonl as a table (main process; empty on others).
        summary: summary.json's content (main process; {} on others).
        counts: this call's counts on this process (saved, regenerated, failed, ...).
        already_done: plan items found finished when the call began.
    """

    out_dir: Path
    manifest: pd.DataFrame
    summary: dict
    counts: dict
    already_done: int


def process_state(gen: GenerateConfig) -> tuple[Any, Any]:
    """(accelerate PartialState, device policy) of this process.

    The state must be told about CPU runs (`cpu=True`), or CPU processes started by
    `accelerate launch` would each think they are alone. Under multi-GPU launches each
    process uses its own GPU (`shoelib.device.for_process`).
    """
    from accelerate import PartialState

    from shoelib.device import choose_policy, for_process

    policy = choose_policy(gen.device, gen.dtype)
    state = PartialState(cpu=policy.device == "cpu")
    return state, for_process(policy, state.num_processes, str(state.device))


def generate(plan_config: PromptPlanConfig, gen: GenerateConfig, out_dir: str | Path, *,
             progress: bool = True) -> GenerationResult:
    """Generate the plan into out_dir, resuming what an earlier call left; accelerate-aware.

    1. Check settings and the run folder (before loading any model).
    2. The main process locks the folder (a second run into it fails with the holder's pid),
       removes temp files of killed runs and records run.json.
    3. Every process lists the finished items; after a barrier the remaining items are
       dealt round-robin (remaining[rank::world]), so a resumed run stays balanced.
    4. Each process renders its share; the main process rebuilds metadata.jsonl from the
       PNGs and writes summary.json.
    """
    plan_config.check()
    gen.check()
    out_dir = Path(out_dir)
    plan = make_plan(plan_config)
    settings = run_settings(plan_config, gen)
    check_run_folder(out_dir, settings)
    state, policy = process_state(gen)
    t0 = time.perf_counter()
    with shared_folder_lock(out_dir, state):
        check_run_folder(out_dir, settings)  # again: another run may have written it meanwhile
        if state.is_main_process:
            out_dir.mkdir(parents=True, exist_ok=True)
            remove_temp_files(out_dir)
            # Either the same settings or a folder without images (a run that failed to start).
            write_json(out_dir / RUN_FILE, settings)
        state.wait_for_everyone()
        done = finished_items(out_dir, plan)
        state.wait_for_everyone()  # nobody writes before everyone has listed the same files
        todo = [item for item in plan if item.index not in done]
        mine = todo[state.process_index::state.num_processes]
        counts: Counter = Counter()
        if mine:
            pipe = load_generation_pipeline(gen, policy)
            # With one LoRA per category, each category's items are rendered with its own.
            groups: dict[Path | None, list[PlannedImage]] = {}
            for item in mine:
                groups.setdefault(gen.lora_for(item), []).append(item)
            for lora, items in groups.items():
                if gen.category_loras:
                    from shoelib.lora_io import apply_lora

                    if lora is not None:
                        apply_lora(pipe, lora, strength=gen.lora_strength)
                    elif pipe.get_list_adapters():
                        pipe.unload_lora_weights()
                counts += generate_items(pipe, items, out_dir, gen, policy,
                                         progress=progress and state.is_local_main_process,
                                         process=state.process_index)
        state.wait_for_everyone()
        manifest, summary = pd.DataFrame(), {}
        if state.is_main_process:
            manifest = rebuild_manifest(out_dir, plan)
            summary = run_summary(out_dir, plan, manifest, gen, policy,
                                  processes=state.num_processes,
                                  call={"todo": len(todo), "already_done": len(done),
                                        "wall_seconds": round(time.perf_counter() - t0, 2)})
            write_json(out_dir / SUMMARY, summary)
    return GenerationResult(out_dir, manifest, summary, dict(counts), len(done))


MANIFEST_COLUMNS = ("file_name", "index", "text", "colour", "gender", "season", "view", "seed",
                    "attempts", "fp32_retry", "seconds")


def run_summary(out_dir: Path, plan: Sequence[PlannedImage], manifest: pd.DataFrame,
                gen: GenerateConfig, policy: Any, processes: int, call: dict) -> dict:
    """summary.json: what the folder holds (from the PNG records, so resumes add up).

    n_regenerated counts every extra attempt after a failed check, including those of
    items that were finally given up.
    """
    rows = manifest if len(manifest) else pd.DataFrame(columns=list(MANIFEST_COLUMNS))
    markers = [read_json(p) for p in sorted(out_dir.glob("[0-9]*.failed.json"))
               if int(p.name[:6]) < len(plan)]
    n = len(rows)
    seconds = rows["seconds"].astype(float)
    return {
        "run": out_dir.name, "model": model_name(gen.model),
        "lora": ({c: str(p) for c, p in gen.category_loras} if gen.category_loras
                 else str(gen.lora_path) if gen.lora_path else None),
        "lora_strength": float(gen.lora_strength), "scheduler": gen.scheduler,
        "steps": gen.steps, "guidance_scale": float(gen.guidance_scale),
        "resolution": gen.resolution, "aspect_ratio": gen.aspect_ratio,
        "width": gen.size[0], "height": gen.size[1], "negative_prompt": gen.negative_prompt,
        "max_attempts": gen.max_attempts, "n_planned": len(plan), "n_images": n,
        "n_failed": len(markers), "failed_indices": [m["index"] for m in markers],
        "n_regenerated": int(rows["attempts"].sum() - n)
                         + sum(len(m["failures"]) - 1 for m in markers),
        "n_fp32_retries": int(rows["fp32_retry"].sum()),
        "seconds_per_image": float(seconds.mean()) if n else None,
        "seconds_per_image_median": float(seconds.median()) if n else None,
        "colour_counts": {str(k): int(v) for k, v in rows["colour"].value_counts().items()},
        **({"category_counts": {str(k): int(v) for k, v in rows["category"].value_counts().items()}}
           if "category" in rows.columns else {}),
        "gender_counts": {str(k): int(v) for k, v in rows["gender"].value_counts().items()},
        "complete": n + len(markers) == len(plan),
        "device": policy.device, "dtype": policy.dtype_name,
        "processes": processes, "last_call": call, "format": "PNG",
    }


# --- reading a run back (07)


@dataclass(frozen=True)
class SyntheticRun:
    """A synthetic run folder as 07 reads it.

    Attributes:
        out_dir: the folder.
        frame: one row per readable PNG (manifest columns + image_path), index order.
        summary: summary.json, or {} if the run never finished a call.
        notes: plain-language remarks (partial run, rebuilt manifest, ...).
    """

    out_dir: Path
    frame: pd.DataFrame
    summary: dict
    notes: tuple[str, ...]


def read_run(run_dir: str | Path) -> SyntheticRun:
    """Read a synthetic run from its PNGs (the source of truth), checked against its manifest.

    Raises:
        EmptyRunError: the folder is missing or holds no generated PNG.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise EmptyRunError(f"no synthetic run at {run_dir}; run 06_generate first (same "
                            "output_root and run_name)")
    rows = []
    for png in sorted(run_dir.glob("[0-9]*.png")):
        record = read_png_record(png)
        if record is not None:
            rows.append({"file_name": png.name, **record, "image_path": str(png)})
    if not rows:
        raise EmptyRunError(f"{run_dir} holds no generated PNG; run 06_generate (it resumes) "
                            "or check run_name")
    frame = pd.DataFrame(rows).sort_values("index").reset_index(drop=True)
    notes = []
    summary = read_json(run_dir / SUMMARY) if (run_dir / SUMMARY).is_file() else {}
    manifest = run_dir / MANIFEST
    listed = set()
    if manifest.is_file():
        listed = {json.loads(line)["file_name"] for line in manifest.read_text().splitlines()
                  if line.strip()}
    if listed != set(frame["file_name"]):
        notes.append(f"metadata.jsonl lists {len(listed)} images but {len(frame)} PNGs are "
                     "present (interrupted run?); the PNGs were read directly. Rerun 06 to "
                     "finish the run and rewrite the manifest.")
    if not summary:
        notes.append("summary.json is missing: 06 never finished a call on this folder.")
    elif summary.get("n_planned", len(frame)) > len(frame) + summary.get("n_failed", 0):
        notes.append(f"partial run: {len(frame)} of {summary['n_planned']} planned images; "
                     "rerun 06 to complete it.")
    if summary.get("n_failed"):
        notes.append(f"{summary['n_failed']} plan items failed the NaN/black check "
                     f"{summary.get('max_attempts', '')} times and were given up.")
    return SyntheticRun(run_dir, frame, summary, tuple(notes))


# --- command line (accelerate launch)


# Notebook 06's parameters that decide the run (the notebook's cpu_threads and
# generation_grid_size only change how fast it runs and what it shows).
GENERATE_PARAMETERS = (
    "output_root", "category", "categories", "category_shares", "model", "local_config", "device", "dtype", "generation_seed",
    "resolution", "guidance_scale", "lora_path", "lora_strength", "run_name", "n_images",
    "colour_distribution", "view_phrases", "caption_template", "negative_prompt", "scheduler",
    "generation_steps", "generation_batch_size", "max_attempts", "aspect_ratio",
)


def configs_from_params(params: Mapping[str, Any]) -> tuple[PromptPlanConfig, GenerateConfig, Path]:
    """The plan config, the generation config and the run folder from 06's parameters.

    The one mapping from parameter names to the two configs: notebook 06 and
    `python -m shoelib.generate --config` both call it, and it has no defaults of its own
    (a missing parameter is an error). Every value is checked before a file is read.

    Args:
        params: at least GENERATE_PARAMETERS (other keys, e.g. a whole profile, are ignored).
    """
    missing = [k for k in GENERATE_PARAMETERS if k not in params]
    if missing:
        raise GenerateConfigError(f"06's parameter(s) {', '.join(missing)} are not set; add them "
                                  "(configs/demo.yaml lists every one)")
    p = {k: params[k] for k in GENERATE_PARAMETERS}
    checks.text(p["output_root"], "output_root", "data/demo", GenerateConfigError)
    cats = checks.categories(p["category"], p["categories"], GenerateConfigError)
    if p["category_shares"] not in CATEGORY_SHARES:
        raise GenerateConfigError(f"category_shares={p['category_shares']!r} is unknown; use "
                                  f"{' or '.join(CATEGORY_SHARES)}")
    views = p["view_phrases"]
    if not isinstance(views, list | tuple):
        raise GenerateConfigError(f"view_phrases={views!r} must be a list of phrases, "
                                  "e.g. ['side view', 'top view']")
    # The plan's own checks, with a stand-in colour: the split's shares are read below.
    PromptPlanConfig(n_images=p["n_images"], seed=p["generation_seed"], colours=(("any", 1.0),),
                     views=tuple(views), article=p["category"],
                     template=p["caption_template"]).check()
    gen = GenerateConfig(
        model=p["model"], lora_path=None, lora_strength=p["lora_strength"],
        scheduler=p["scheduler"], steps=p["generation_steps"],
        guidance_scale=p["guidance_scale"], negative_prompt=p["negative_prompt"] or "",
        resolution=p["resolution"], batch_size=p["generation_batch_size"],
        max_attempts=p["max_attempts"], device=p["device"], dtype=p["dtype"],
        local_config=p["local_config"], aspect_ratio=p["aspect_ratio"])
    gen.check()
    paths = RunPaths.from_param(p["output_root"])
    out_dir = paths.synthetic_run(p["run_name"])  # a bad name fails before any data is read
    # Only now the files: the LoRA(s) 05 wrote and the train splits' shares.
    from shoelib.dataset import prepared_categories

    kept, _ = prepared_categories(p["output_root"], cats)  # 06 reports the left-out ones
    loras = (find_category_loras(p["output_root"], kept)
             if len(kept) > 1 and not str(p["lora_path"] or "").strip() else ())
    gen = replace(gen, model=model_name(gen.model), category_loras=loras,
                  lora_path=None if loras else find_lora(p["output_root"], p["lora_path"]))
    plan_config = plan_config_from_splits(
        {name: paths.processed(name) / "train" for name in kept}, n_images=p["n_images"],
        seed=p["generation_seed"], category_shares=p["category_shares"],
        colour_distribution=p["colour_distribution"], views=tuple(views),
        template=p["caption_template"])
    return plan_config, gen, out_dir


def main(argv: list[str] | None = None) -> int:
    import yaml

    parser = argparse.ArgumentParser(prog="python -m shoelib.generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="configs/<profile>.yaml")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="override one parameter (repeatable), e.g. -p n_images 100")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    from shoelib.run import as_declared_type

    params = yaml.safe_load(resolve(args.config).read_text()) or {}
    # The profile's values give each -p its type, as the runner's parameters cells do.
    params.update({k: as_declared_type(yaml.safe_load(v), params.get(k)) for k, v in args.p})
    try:
        plan_config, gen, out_dir = configs_from_params(params)
        result = generate(plan_config, gen, out_dir, progress=not args.no_progress)
    except (ValueError, FileNotFoundError, FolderInUseError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if result.summary:
        print(json.dumps({k: result.summary[k] for k in ("run", "n_planned", "n_images",
                          "n_failed", "n_regenerated", "seconds_per_image", "processes")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
