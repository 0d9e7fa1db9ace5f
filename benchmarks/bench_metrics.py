"""07's measures: time per measure at N images, sanity checks on controlled sets built from real
photos, and a sample-size guide.

    .venv/bin/python benchmarks/bench_metrics.py [--n 1000] [--dim 128] [--repeats 3]
        [--catalog CATALOGUE_FOLDER] [--photos 500] [--skip-timings]

1. Seconds per measure (median of --repeats) on random (N, dim) feature matrices for both sets,
   N = --n, with the CIs 07 computes (bootstrap_samples 200, kid_subsets 100); dim 128 is the
   shipped encoder's (1024 is DINOv2-large's). Feature extraction is not included.
2. With --catalog (a folder with styles.csv and images/): the controlled sets of
   `shoelib.metrics.controls` (real vs real, blurred, colour-shifted, copies of 4 training
   photos) on --photos random photos each, in the shipped encoder's feature space, every
   measure with its 95 % CI; then the sample-size guide: real vs real on disjoint subsets of
   the same photos' features, 4 repeats per N.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

from shoelib import metrics as M
from shoelib.metrics import controls
from shoelib.paths import PROJECT_ROOT

ENCODER = PROJECT_ROOT / "assets" / "models" / "catalog-encoder"


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timings(n: int, dim: int, repeats: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(n, dim)), rng.normal(0.2, 1.0, size=(n, dim))
    bits = rng.random((n, 64)) > 0.5
    train = rng.normal(size=(n, dim))
    pixels = rng.random((n, 3072))
    measures = {
        "KID (100 subsets)": lambda: M.kid(real, fake, subsets=100),
        "FD + bootstrap CI (200)": lambda: M.fid(real, fake, n_boot=200),
        "CMMD + bootstrap CI (200)": lambda: M.cmmd(real, fake, n_boot=200),
        "precision/recall/density/coverage + CIs": lambda: M.prdc_results(real, fake, n_boot=200),
        "Vendi score (features) + jackknife CI": lambda: M.vendi_results({"s": fake, "r": real}, "f"),
        "Vendi score (32 px pixels) + jackknife CI": lambda: M.vendi_results({"s": pixels}, "p"),
        "near duplicates + pairwise distances + CIs": lambda: M.diversity_results(bits, fake, "s"),
        "memorisation (nearest train) + CIs": lambda: M.memorisation(fake, train, real),
    }
    return pd.DataFrame([{"measure": name, "N per set": n, "dim": dim,
                          "median seconds": round(median_seconds(fn, repeats), 3)}
                         for name, fn in measures.items()])


def real_photos(catalog: Path, count: int) -> list:
    from shoelib.images import open_rgb

    paths = sorted((catalog / "images").glob("*.jpg"))
    order = np.random.default_rng(0).permutation(len(paths))[:count]
    return [open_rgb(paths[i]).resize((96, 96)) for i in order]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--catalog", type=Path)
    parser.add_argument("--photos", type=int, default=500,
                        help="photos per controlled set (4 sets are drawn)")
    parser.add_argument("--skip-timings", action="store_true", help="only parts 2 and 3")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 20)
    if not args.skip_timings:
        print(f"1. seconds per measure, N = {args.n} per set, {args.dim}-d features, "
              f"median of {args.repeats}:")
        print(timings(args.n, args.dim, args.repeats).to_string(index=False))
    if args.catalog is None:
        return
    n = args.photos
    photos = real_photos(args.catalog, 4 * n)
    reference, same, train, baseline = (photos[i * n:(i + 1) * n] for i in range(4))
    encoder = M.EncoderFeatures(ENCODER)
    results = controls.control_results(encoder, reference, train, baseline,
                                       controls.control_sets(same, train))
    print(f"\n2. controlled sets from {4 * n} real photos of {args.catalog.name} "
          f"(features: {ENCODER.name}; value [95 % CI]):")
    print(controls.control_table(results, n).to_string(index=False))
    table, stable = controls.sample_size_guide(encoder(photos), [10, 20, 40, 80, 160, 320, 640, 1000],
                                               repeats=4)
    print("\n3. sample-size guide (real vs real, mean ± std over 4 repeats):")
    table["mean ± std"] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(table["mean"], table["std"], strict=True)]
    print(table.pivot(index="measure", columns="N", values="mean ± std").to_string())
    print(stable.to_string(index=False))


if __name__ == "__main__":
    main()
