"""LoRA training step on the SD 1.5 architecture: cached inputs (shoelib) vs encoding every step.

    .venv/bin/python benchmarks/bench_train.py                 # 1 warm-up + 4 timed steps each
    .venv/bin/python benchmarks/bench_train.py --steps 6 --repeats 2 --json out.json

The models have SD 1.5's architecture and sizes with random weights (no download): UNet
(859.5 M parameters, cross-attention 768), VAE (128/256/512/512 channels, 4 blocks) and CLIP
text encoder (hidden 768, 12 layers, 12 heads, vocab 49408). They are saved once in diffusers
layout under --work and loaded from there by every variant, exactly like a real model.

Variants, each in its own subprocess so their peak RSS do not mix:
- shoelib: `shoelib.train.train` (latents and caption states cached once, VAE and text encoder
  freed before training).
- per-step encoding: what diffusers' train_text_to_image_lora.py does: VAE and text encoder
  stay in memory and encode the image and caption of every batch at every step.
- UNet only: the same step on random tensors, no data and no encoders: the floor any input
  pipeline can reach.
- with --torch-compile also shoelib with `torch_compile=True` (its first steps compile: use
  --warmup 2 or more so that they are not timed).
All train the same PEFT LoRA (rank 8, alpha 16 on to_q/to_k/to_v/to_out.0) with AdamW, batch 1,
no accumulation, no gradient checkpointing, random flips, float32 on CPU.

Reported: median seconds per step over the timed steps (after warm-up) of all repeats, the
median of the processes' peak RSS (lifetime, includes loading), their ratios, and the LoRA's
trainable parameter count. On a shared machine, use --repeats 2 or more.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CAPTION = ("A professional product photo of black casual shoes, Summer collection, Men, "
           "United Colors of Benetton, centered on white background, high quality, "
           "product photography")
SD15_LORA_PARAMS = 1_594_368


def build_sd15_random(folder: Path) -> Path:
    """Save SD 1.5-sized random-weight components in diffusers layout (once; ~4.3 GB)."""
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from shoelib.tiny_sd import SD15_SCHEDULER, write_tokenizer_files

    if (folder / "model_index.json").exists():
        return folder
    staging = folder.with_name(folder.name + ".partial")
    write_tokenizer_files(staging / "_tok")
    tokenizer = CLIPTokenizer(str(staging / "_tok" / "vocab.json"),
                              str(staging / "_tok" / "merges.txt"), model_max_length=77)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512),
                        down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
                        latent_channels=4, sample_size=512, scaling_factor=0.18215)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
        projection_dim=768, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=DDPMScheduler.from_config(SD15_SCHEDULER),
                                   safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(staging, safe_serialization=True)
    staging.rename(folder)
    return folder


def make_split(folder: Path, n: int = 4) -> Path:
    """n 512x512 product-like PNGs with captions, as 02_prepare_dataset exports them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        pixels = np.full((512, 512, 3), 250, np.uint8)
        pixels[150:380, 60:440] = rng.integers(0, 255, 3)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": CAPTION})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


# --- the two variants (each runs in a child process)

def run_shoelib(model: Path, split: Path, work: Path, steps: int, resolution: int,
                checkpointing: bool, compiled: bool = False) -> dict:
    from shoelib.train import TrainConfig, train

    config = TrainConfig(model=str(model), train_dir=str(split), output_dir=str(work / "out"),
                         cache_dir=str(work / "cache"), resolution=resolution,
                         max_train_steps=steps, lr_warmup_steps=0, train_batch_size=1,
                         gradient_accumulation_steps=1, validation_every=0,
                         checkpoint_every=0, checkpoints_to_keep=1, device="cpu",
                         gradient_checkpointing=checkpointing, torch_compile=compiled)
    result = train(config, progress=False)
    return {"step_seconds": list(result.step_seconds), "trainable_params": result.trainable_params}


def lora_unet(model: Path, checkpointing: bool):
    """The baselines' UNet: frozen, rank-8/alpha-16 LoRA on the attention projections, AdamW."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    from shoelib.lora_io import LORA_TARGET_MODULES

    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet").requires_grad_(False)
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(r=8, lora_alpha=16, init_lora_weights="gaussian",
                                target_modules=list(LORA_TARGET_MODULES)))
    params = [p for p in unet.parameters() if p.requires_grad]
    return unet, params, torch.optim.AdamW(params, lr=1e-4)


def run_per_step_encoding(model: Path, split: Path, steps: int, resolution: int,
                          checkpointing: bool) -> dict:
    """The example script's loop: encode the batch's image and caption at every step."""
    from diffusers import AutoencoderKL, DDPMScheduler
    from diffusers.optimization import get_scheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    from shoelib.dataset import read_split
    from shoelib.latent_cache import load_image_tensor, tokenize

    rows = read_split(split)
    tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder").requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae").requires_grad_(False)
    noise_scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
    unet, params, optimizer = lora_unet(model, checkpointing)
    lr_scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=0, num_training_steps=steps)
    generator = torch.Generator().manual_seed(0)
    seconds = []
    for step in range(steps):
        started = time.perf_counter()
        row = rows.iloc[step % len(rows)]
        pixels = load_image_tensor(Path(row["image_path"]), resolution, random.random() < 0.5)
        with torch.no_grad():
            latents = vae.encode(pixels[None]).latent_dist.sample(generator)
            latents = latents * vae.config.scaling_factor
            hidden = text_encoder(tokenize(tokenizer, [row["text"]]))[0]
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (1,),
                                  generator=generator)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = unet(noisy, timesteps, encoder_hidden_states=hidden).sample
        loss = torch.nn.functional.mse_loss(prediction.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - started)
    return {"step_seconds": seconds, "trainable_params": sum(p.numel() for p in params)}


def run_unet_only(model: Path, steps: int, resolution: int, checkpointing: bool) -> dict:
    """The floor: the same LoRA step on random latents and text states, no data at all."""


    unet, params, optimizer = lora_unet(model, checkpointing)
    side = resolution // 8
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        latents, text = torch.randn(1, 4, side, side), torch.randn(1, 77, 768)
        prediction = unet(latents, torch.randint(0, 1000, (1,)), encoder_hidden_states=text).sample
        torch.nn.functional.mse_loss(prediction, latents).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - started)
    return {"step_seconds": seconds, "trainable_params": sum(p.numel() for p in params)}


def child(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    total = args.warmup + args.steps
    if args.child in ("shoelib", "shoelib_compiled"):
        out = run_shoelib(args.model, args.split, args.work / "shoelib", total, args.resolution,
                          args.gradient_checkpointing, compiled=args.child == "shoelib_compiled")
    elif args.child == "per_step":
        out = run_per_step_encoding(args.model, args.split, total, args.resolution,
                                    args.gradient_checkpointing)
    else:
        out = run_unet_only(args.model, total, args.resolution, args.gradient_checkpointing)
    out["wall_seconds"] = time.perf_counter() - started
    out["peak_rss_bytes"] = peak_rss_bytes()
    print("RESULT " + json.dumps(out), flush=True)


# --- the parent: build, run both children, compare

def measure(variant: str, args: argparse.Namespace, model: Path, split: Path) -> dict:
    """One child process of `variant`; its per-step times and peak RSS."""
    # A fresh cache for every shoelib run: its figures include encoding the inputs once.
    shutil.rmtree(args.work / "shoelib", ignore_errors=True)
    cmd = [sys.executable, __file__, "--child", variant, "--model", str(model), "--split",
           str(split), "--work", str(args.work), "--steps", str(args.steps), "--warmup",
           str(args.warmup), "--resolution", str(args.resolution)]
    if args.gradient_checkpointing:
        cmd.append("--gradient-checkpointing")
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"{variant} failed:\n{done.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def combine(runs: list[dict], warmup: int) -> dict:
    """Median step time over the timed steps of all repeats; median peak RSS of the repeats."""
    timed = [s for run in runs for s in run["step_seconds"][warmup:]]
    return {"median_seconds_per_step": statistics.median(timed),
            "peak_rss_bytes": int(statistics.median(r["peak_rss_bytes"] for r in runs)),
            "wall_seconds": statistics.median(r["wall_seconds"] for r in runs),
            "trainable_params": runs[0]["trainable_params"], "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps")
    parser.add_argument("--repeats", type=int, default=1,
                        help="child processes per variant (alternating); medians over all")
    parser.add_argument("--resolution", type=int, default=256, help="training side (px)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/shoelib-bench-train"),
                        help="models, images and cache (the 4.3 GB model is reused)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="in every variant, as the full recipe (configs/full.yaml) trains")
    parser.add_argument("--torch-compile", action="store_true",
                        help="also shoelib with torch_compile (the UNet compiled in place)")
    parser.add_argument("--child", choices=("shoelib", "shoelib_compiled", "per_step", "unet_only"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--split", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0

    args.work.mkdir(parents=True, exist_ok=True)
    model = build_sd15_random(args.work / "sd15-random")
    split = make_split(args.work / "train")
    variants = ("per_step", "shoelib", "unet_only") + (("shoelib_compiled",) if args.torch_compile else ())
    # Repeats alternate the variants, so a slow spell of a shared machine hits all of them.
    runs = [(v, measure(v, args, model, split)) for _ in range(args.repeats) for v in variants]
    results = {v: combine([r for name, r in runs if name == v], args.warmup) for v in variants}
    base, ours = results["per_step"], results["shoelib"]
    summary = {
        "resolution": args.resolution, "timed_steps": args.steps, "warmup_steps": args.warmup,
        "gradient_checkpointing": args.gradient_checkpointing,
        "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(), "variants": results,
        "speedup_steps_per_second": base["median_seconds_per_step"] / ours["median_seconds_per_step"],
        "peak_rss_reduction": 1 - ours["peak_rss_bytes"] / base["peak_rss_bytes"],
        "lora_params": ours["trainable_params"],
        # The most any input pipeline could save: the step with no data work and no encoders.
        "floor_peak_rss_reduction": 1 - results["unet_only"]["peak_rss_bytes"] / base["peak_rss_bytes"],
    }
    if args.torch_compile:
        summary["compile_speedup"] = (ours["median_seconds_per_step"]
                                      / results["shoelib_compiled"]["median_seconds_per_step"])
    print(f"\nLoRA training step, SD 1.5 architecture (random weights), {args.resolution} px, "
          f"batch 1, CPU, {torch.get_num_threads()} threads, gradient checkpointing "
          f"{'on' if args.gradient_checkpointing else 'off'}; median of {args.steps} steps "
          f"after {args.warmup} warm-up, {args.repeats} process(es) per variant")
    print(f"{'variant':<22}{'s/step':>9}{'steps/s':>9}{'peak RSS GB':>13}{'wall s':>9}")
    labels = [("per_step", "encode every step"), ("shoelib", "shoelib (cached)"),
              ("unet_only", "UNet only (floor)")]
    if args.torch_compile:
        labels.append(("shoelib_compiled", "shoelib, torch_compile"))
    for name, label in labels:
        r = results[name]
        print(f"{label:<22}{r['median_seconds_per_step']:>9.2f}"
              f"{1 / r['median_seconds_per_step']:>9.3f}{r['peak_rss_bytes'] / 1e9:>13.2f}"
              f"{r['wall_seconds']:>9.1f}")
    speedup, reduction = summary["speedup_steps_per_second"], summary["peak_rss_reduction"]
    print(f"speed-up (steps/s): {speedup:.2f}x (target >= 1.3x: "
          f"{'met' if speedup >= 1.3 else 'missed'})")
    print(f"peak RSS reduction: {100 * reduction:.1f}% (target >= 15%: "
          f"{'met' if reduction >= 0.15 else 'missed'}; "
          f"a UNet-only step with no inputs at all: "
          f"{100 * summary['floor_peak_rss_reduction']:.1f}%)")
    if args.torch_compile:
        compiled = results["shoelib_compiled"]
        print(f"torch_compile: {summary['compile_speedup']:.2f}x shoelib's steps/s after "
              f"{args.warmup} warm-up step(s); its first step took "
              f"{compiled['runs'][0]['step_seconds'][0]:.1f} s (compiling)")
    ok = summary["lora_params"] == SD15_LORA_PARAMS == base["trainable_params"]
    print(f"LoRA parameters at rank 8: {summary['lora_params']:,} "
          f"({'matches' if ok else 'DIFFERS FROM'} {SD15_LORA_PARAMS:,})")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
