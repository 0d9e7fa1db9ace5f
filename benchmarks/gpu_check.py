"""The GPU check's Python part (run it through benchmarks/gpu_check.sh): training and generation
speed on SD 1.5-size random weights, printed as one JSON object.

- training at 512 px, batch 8, rank 8, bf16 mixed precision (the device policy's choice on a
  GPU with native bf16): it/s as the difference of two whole runs (benchmarks/bench_peer.py's
  method, each run its own process) and each run's peak CUDA memory; shoelib and, when
  --peer-script is given and this interpreter has torchvision and datasets, diffusers' own
  train_text_to_image_lora.py on the same work; shoelib once more with torch.compile where
  its TrainConfig has a `torch_compile` switch (the JSON says when it has none).
- generation: images/s of `shoelib.generate.render` (06's path) at 25 DPM++ steps, batch 8,
  512 px, after one warm-up batch, and the peak CUDA memory.

--dry-run: the same code on CPU with the tiny random pipeline (shoelib.tiny_sd), 64 px,
batch 1, runs of 1 and 2 steps, one image of 2 steps: seconds, to prove the script works.
The training photos are synthetic product-like 512 px PNGs (bench_train.make_split): speed
does not depend on what the photos show.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

from bench_peer import Recipe, benchmark, check_interpreter, step_counts
from bench_train import CAPTION, build_sd15_random, make_split

from shoelib.train import TrainConfig

FULL = {"device": "cuda", "resolution": 512, "batch_size": 8, "steps": (5, 45),
        "generation_steps": 25, "generation_batch": 8, "generation_batches": 3}
DRY = {"device": "cpu", "resolution": 64, "batch_size": 1, "steps": (1, 2),
       "generation_steps": 2, "generation_batch": 1, "generation_batches": 1}


def train_speed(sizes: dict, model: Path, data: Path, script: Path | None, work: Path,
                counts: tuple[int, int]) -> dict:
    """it/s and peak CUDA memory of shoelib (and the peer, when `script` is usable)."""
    peer_skipped = None
    if script is None:
        peer_skipped = "no --peer-script given"
    else:
        try:
            check_interpreter()
        except SystemExit as err:
            script, peer_skipped = None, str(err)
    recipe = Recipe(resolution=sizes["resolution"], batch_size=sizes["batch_size"],
                    device=sizes["device"])
    threads = os.cpu_count() or 1
    result = benchmark(recipe, counts, 1, model, data, script, work, threads)
    out = {"recipe": {**recipe.__dict__, "mixed_precision": recipe.mixed_precision},
           "steps": list(counts)}
    for trainer in ("ours", "peer"):
        if trainer in result:
            out[trainer] = speed_figures(result[trainer])
    if sizes is DRY:  # compiling costs minutes on a CPU, for a smoke run of seconds
        out["ours_torch_compile"] = {"skipped": "not in the dry run"}
    elif "torch_compile" in {f.name for f in fields(TrainConfig)}:
        compiled = replace(recipe, torch_compile=True)
        out["ours_torch_compile"] = speed_figures(
            benchmark(compiled, counts, 1, model, data, None, work, threads)["ours"])
    else:
        out["ours_torch_compile"] = {"skipped": "shoelib's TrainConfig has no torch_compile switch"}
    if peer_skipped:
        out["peer"] = {"skipped": peer_skipped}
    else:
        out["ours_over_peer"] = result["ours_over_peer"]
    return out


def speed_figures(r: dict) -> dict:
    return {"it_per_second": 1 / r["seconds_per_step"], "seconds_per_step": r["seconds_per_step"],
            "in_loop_seconds_per_step": r.get("in_loop_seconds_per_step"),
            "first_step_seconds": r["first_step_seconds"], "peak_cuda_bytes": r["peak_cuda_bytes"],
            "peak_rss_bytes": r["peak_rss_bytes"]}


def generation_speed(sizes: dict, model: Path) -> dict:
    """images/s of 06's render path after one warm-up batch; peak CUDA memory."""
    import torch

    from shoelib.device import choose_policy, peak_memory_bytes, reset_peak_memory
    from shoelib.generate import GenerateConfig, load_generation_pipeline, render

    policy = choose_policy(sizes["device"])
    gen = GenerateConfig(model=str(model), lora_path=None, steps=sizes["generation_steps"],
                         resolution=sizes["resolution"], batch_size=sizes["generation_batch"],
                         device=sizes["device"])
    gen.check()
    pipe = load_generation_pipeline(gen, policy)
    n = sizes["generation_batch"]
    render(pipe, [CAPTION] * n, list(range(n)), gen, policy)  # warm-up: kernels, allocator
    reset_peak_memory(policy.device)
    images, started = [], time.perf_counter()
    for b in range(sizes["generation_batches"]):
        images += render(pipe, [CAPTION] * n, list(range((b + 1) * n, (b + 2) * n)), gen, policy)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"images_per_second": len(images) / seconds, "images": len(images),
            "steps": gen.steps, "batch_size": n, "resolution": gen.resolution,
            "scheduler": gen.scheduler, "dtype": policy.dtype_name,
            "fp32_retries": sum(image.fp32_retry for image in images),
            "peak_cuda_bytes": peak_memory_bytes(policy.device) if policy.device == "cuda" else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, tiny model, 1 and 2 steps, one image: proves the script runs")
    parser.add_argument("--peer-script", type=Path,
                        help="diffusers' train_text_to_image_lora.py (skipped without it)")
    parser.add_argument("--steps", type=step_counts, help="N1,N2 (default 5,45; dry run 1,2)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/shoelib-gpu-check"),
                        help="model (4.3 GB, built once), photos, runs")
    args = parser.parse_args(argv)
    sizes = DRY if args.dry_run else FULL
    import torch

    if sizes["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on a GPU machine, or pass --dry-run for the "
                         "CPU smoke run")
    if args.peer_script is not None and not args.peer_script.is_file():
        raise SystemExit(f"--peer-script {args.peer_script} is not a file")
    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        from shoelib.tiny_sd import ensure_tiny_sd

        model = ensure_tiny_sd(args.work / "tiny-sd")
    else:
        model = build_sd15_random(args.work / "sd15-random")
    data = args.work / "train"
    if not (data / "metadata.jsonl").is_file():
        make_split(data, n=32)
    report = {"dry_run": args.dry_run, "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
              "model": "tiny random pipeline" if args.dry_run else
              "SD 1.5 architecture, random weights",
              "train": train_speed(sizes, model.resolve(), data.resolve(),
                                   args.peer_script.resolve() if args.peer_script else None,
                                   args.work, args.steps or sizes["steps"]),
              "generate": generation_speed(sizes, model)}
    report["seconds"] = time.perf_counter() - started
    text = json.dumps(report, indent=2)
    print(text)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.json").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
