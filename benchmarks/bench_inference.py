"""What the image guard costs, and what precision and attention slicing change, per image.

    .venv/bin/python benchmarks/bench_inference.py [--model data/demo/models/tiny-sd]
        [--resolution 64] [--steps 4] [--repeats 7] [--device auto]

Variants, each timed over `repeats` images after one warm-up image (median seconds):

- baseline: a plain diffusers call, `pipe(prompt, generator=cpu_generator(seed))`, float32;
- guarded: `generate_checked` (latent output, own decode, per-step NaN watch, image checks);
- guarded + attention slicing;
- guarded in half precision (bfloat16 on CPU, the policy's half dtype on CUDA).

Prints medians, ratios to the baseline (measured in the same process, the variants taking
turns image by image) and the most memory one image added on top of the loaded models. With the tiny demo model the absolute times are tiny and mostly overhead; run
it with --model pointing at SD 1.5 and --resolution 512 --steps 30 for real figures.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from functools import partial

from shoelib.device import DevicePolicy, choose_policy, cpu_generator, measure_peak_memory
from shoelib.paths import DEMO_DIR
from shoelib.pipeline import generate_checked, inference_prompts, load_pipeline


def plain_image(pipe, prompt: str, settings: dict, seed: int) -> None:
    pipe(prompt, height=settings["resolution"], width=settings["resolution"],
         num_inference_steps=settings["steps"], guidance_scale=settings["guidance_scale"],
         generator=cpu_generator(seed))


def guarded_image(pipe, policy: DevicePolicy, prompt: str, settings: dict, seed: int) -> None:
    generate_checked(pipe, prompt, seed, policy=policy, **settings)


def time_rounds(runs: dict, repeats: int, device: str) -> dict[str, tuple[float, int]]:
    """Median seconds and largest memory added per image, for each variant.

    The variants take turns image by image (the order rotating each round), so a machine
    that gets busier or quieter during the run affects all of them alike.
    """
    names = list(runs)
    for name in names:
        runs[name](0)  # warm-up image
    times: dict[str, list[float]] = {name: [] for name in names}
    added: dict[str, int] = dict.fromkeys(names, 0)
    for seed in range(1, repeats + 1):
        shift = seed % len(names)
        for name in names[shift:] + names[:shift]:
            with measure_peak_memory(device) as memory:
                t0 = time.perf_counter()
                runs[name](seed)
                times[name].append(time.perf_counter() - t0)
            added[name] = max(added[name], memory.added_bytes)
    return {name: (statistics.median(times[name]), added[name]) for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEMO_DIR / "models" / "tiny-sd"))
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    base = choose_policy(args.device, "float32")
    half_dtype = "bfloat16" if base.device != "cuda" else "auto"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 on CPU warns that it is slow: that is measured
        half = choose_policy(args.device, half_dtype)
    sliced = DevicePolicy(base.device, base.dtype, "benchmark: slicing forced on",
                          attention_slicing=True, mixed_precision=base.mixed_precision)
    prompt = inference_prompts(1)[0]
    settings = {"steps": args.steps, "resolution": args.resolution, "guidance_scale": 7.5}

    runs = {}
    for name, policy, guarded in (("baseline (plain diffusers)", base, False),
                                  ("guarded", base, True),
                                  ("guarded + attention slicing", sliced, True),
                                  (f"guarded, {half.dtype_name}", half, True)):
        pipe = load_pipeline(args.model, policy)
        pipe.set_progress_bar_config(disable=True)
        runs[name] = (partial(guarded_image, pipe, policy, prompt, settings) if guarded
                      else partial(plain_image, pipe, prompt, settings))
    results = time_rounds(runs, args.repeats, base.device)
    rows = [(name, seconds, peak) for name, (seconds, peak) in results.items()]

    baseline = rows[0][1]
    print(f"model={args.model} device={base.device} resolution={args.resolution} "
          f"steps={args.steps} repeats={args.repeats}")
    print(f"{'variant':32s} {'median s/image':>15s} {'x baseline':>11s} {'added MB':>9s}")
    for name, seconds, peak in rows:
        print(f"{name:32s} {seconds:15.4f} {seconds / baseline:11.2f} {peak / 1e6:9.0f}")


if __name__ == "__main__":
    main()
