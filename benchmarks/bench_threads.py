"""The notebooks' `cpu_threads` on this machine: the demo's compute at each torch thread count.

    .venv/bin/python benchmarks/bench_threads.py [--threads 1,2] [--repeats 5]
        [--model assets/models/catalog-sd-64]

Three pieces of work the demo spends its time on, each timed at every thread count:
- generation (04, 06): one `shoelib.generate.render` call of 8 images at 64 px, 25 dpm++
  steps with guidance (the UNet at batch 16), seconds per image;
- the study classifier (09): `shoelib.classifier.train_classifier`, the "small" CNN at 32 px,
  batch 64, 20 steps on random images, seconds per step;
- the evaluation's colour classifier (07): the "tiny" CNN at 16 px, the same way.
Each repeat runs every (work, threads) once, the thread order rotating, so a machine that gets
busier affects every count alike. Prints the medians and each count's speed-up over the first.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from shoelib.classifier import ClassifierConfig, LabelledSet, torch_threads, train_classifier
from shoelib.device import choose_policy
from shoelib.generate import (
    GenerateConfig,
    PromptPlanConfig,
    load_generation_pipeline,
    make_plan,
    render,
)
from shoelib.paths import PROJECT_ROOT

CLASSIFIER_STEPS = 20


def generation_work(model: str):
    policy = choose_policy("cpu")
    gen = GenerateConfig(model=model, lora_path=None, steps=25, resolution=64, device="cpu")
    pipe = load_generation_pipeline(gen, policy)
    plan = make_plan(PromptPlanConfig(n_images=8, seed=0, colours=(("Black", 1.0), ("Red", 1.0))))

    def run() -> float:
        t0 = time.perf_counter()
        render(pipe, [i.prompt for i in plan], [i.seed for i in plan], gen, policy)
        return (time.perf_counter() - t0) / len(plan)
    return run


def classifier_work(architecture: str, px: int, threads: int):
    rng = np.random.default_rng(0)
    data = LabelledSet("random", rng.integers(0, 256, (256, px, px, 3), dtype=np.uint8),
                       rng.integers(0, 7, 256))
    config = ClassifierConfig(image_px=px, steps=CLASSIFIER_STEPS, batch_size=64,
                              architecture=architecture, threads=threads)

    def run() -> float:
        t0 = time.perf_counter()
        train_classifier(data, 7, config, seed=0)
        return (time.perf_counter() - t0) / CLASSIFIER_STEPS
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2", help="thread counts, e.g. 1,2,4")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default=str(PROJECT_ROOT / "assets" / "models" / "catalog-sd-64"))
    args = parser.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    if not counts or min(counts) < 1 or args.repeats < 1:
        parser.error("--threads needs counts >= 1 (e.g. 1,2) and --repeats >= 1")

    generate = generation_work(args.model)

    def with_threads(run, n):  # generation follows the process's count, as in 04 and 06
        def timed() -> float:
            with torch_threads(n):
                return run()
        return timed

    works = {"generation, s/image": {n: with_threads(generate, n) for n in counts},
             "study classifier (small, 32 px), s/step": {
                 n: classifier_work("small", 32, n) for n in counts},
             "colour classifier (tiny, 16 px), s/step": {
                 n: classifier_work("tiny", 16, n) for n in counts}}
    for runs in works.values():  # warm-up: each count's first call pays its own set-up
        for run in runs.values():
            run()
    times = {name: {n: [] for n in counts} for name in works}
    for r in range(args.repeats):
        order = counts[r % len(counts):] + counts[:r % len(counts)]
        for name, runs in works.items():
            for n in order:
                times[name][n].append(runs[n]())
    print(f"torch {torch.__version__}, default threads {torch.get_num_threads()}, "
          f"median of {args.repeats}")
    for name, per_count in times.items():
        medians = {n: statistics.median(v) for n, v in per_count.items()}
        cells = "   ".join(f"{n} thread(s): {m:.4f} (x{medians[counts[0]] / m:.2f})"
                           for n, m in medians.items())
        print(f"{name:<42} {cells}")


if __name__ == "__main__":
    main()
