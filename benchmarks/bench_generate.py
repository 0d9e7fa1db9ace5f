"""Seconds per synthetic image: batched rendering vs one image per call, and the cost of the
evaluation's weight-free checks per image.

    .venv/bin/python benchmarks/bench_generate.py [--model data/demo/models/tiny-sd]
        [--resolution 64] [--steps 25] [--batch-sizes 1,4,8] [--repeats 5] [--device auto]

Generation: `shoelib.generate.render` (the path 06 takes: CPU-seeded latents, one
pipeline call, the NaN/black check per image) at each batch size; batch size 1 is the baseline.
Each repeat renders every batch size once, the order rotating, so a machine that gets busier
during the run affects all sizes alike. Prints the median seconds per image and the ratio to
batch size 1.

Evaluation: `shoelib.metrics.photo_measures` (foreground mask, dominant colour, conformity,
dHash + pHash) on a 512 px product photo, median of `repeats * 10` calls.

With the tiny demo model the absolute times are mostly Python overhead; point --model at
SD 1.5 with --resolution 512 for real figures.
"""

from __future__ import annotations

import argparse
import statistics
import time

from PIL import Image, ImageDraw

from shoelib.device import choose_policy
from shoelib.generate import (
    GenerateConfig,
    PromptPlanConfig,
    load_generation_pipeline,
    make_plan,
    render,
)
from shoelib.metrics import photo_measures
from shoelib.paths import DEMO_DIR


def time_batches(pipe, gen: GenerateConfig, policy, sizes: list[int], repeats: int) -> dict[int, float]:
    """Median seconds per image for each batch size."""
    plan = make_plan(PromptPlanConfig(n_images=max(sizes) * (repeats + 1), seed=0,
                                      colours=(("Black", 1.0), ("Red", 1.0))))
    render(pipe, [plan[0].prompt], [plan[0].seed], gen, policy)  # warm-up
    per_image: dict[int, list[float]] = {s: [] for s in sizes}
    for r in range(repeats):
        order = sizes[r % len(sizes):] + sizes[:r % len(sizes)]
        for size in order:
            items = plan[r * max(sizes):r * max(sizes) + size]
            t0 = time.perf_counter()
            render(pipe, [i.prompt for i in items], [i.seed for i in items], gen, policy)
            per_image[size].append((time.perf_counter() - t0) / size)
    return {s: statistics.median(v) for s, v in per_image.items()}


def time_photo_measures(repeats: int) -> float:
    image = Image.new("RGB", (512, 512), (255, 255, 255))
    ImageDraw.Draw(image).rounded_rectangle([100, 200, 420, 330], radius=30, fill=(200, 30, 40))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        photo_measures(image)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEMO_DIR / "models" / "tiny-sd"))
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batch-sizes", default="1,4,8")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    sizes = sorted({int(s) for s in args.batch_sizes.split(",")} | {1})
    policy = choose_policy(args.device)
    gen = GenerateConfig(model=args.model, lora_path=None, steps=args.steps,
                         resolution=args.resolution, device=args.device)
    pipe = load_generation_pipeline(gen, policy)
    medians = time_batches(pipe, gen, policy, sizes, args.repeats)
    print(f"generation: {args.model}, {args.resolution} px, {args.steps} dpm++ steps, "
          f"{policy.device}/{policy.dtype_name}, median of {args.repeats}")
    for size in sizes:
        print(f"  batch {size:>2}: {medians[size]:.4f} s/image   x{medians[1] / medians[size]:.2f} "
              "vs batch 1")
    print(f"photo checks (512 px image): {time_photo_measures(args.repeats * 10) * 1000:.1f} ms/image, "
          f"median of {args.repeats * 10}")


if __name__ == "__main__":
    main()
