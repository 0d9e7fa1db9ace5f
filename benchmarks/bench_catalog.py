"""Catalogue reading and image inventory speed, against plain pandas / full decoding.

    .venv/bin/python benchmarks/bench_catalog.py [--styles PATH] [--repeats 5] [--images 60]

Prints medians over repeats and ratios against the baseline measured in the same process:
1. read_styles (lossless) vs pd.read_csv(keep_default_na=False, dtype=str) on styles.csv;
2. probe_image (reduced-scale JPEG decode) vs a full PIL decode, on 1800x2400 demo JPEGs;
3. inventory_images with 1 vs 2 threads on the same images.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
from PIL import Image

from shoelib.catalog import inventory_images, probe_image, read_styles
from shoelib.demo import build_demo_catalog
from shoelib.paths import PROJECT_ROOT


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def full_decode(paths: list[Path]) -> None:
    for path in paths:
        with Image.open(path) as img:
            img.load()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--styles", type=Path,
                        default=PROJECT_ROOT.parent / "shared" / "real-sample" / "styles.csv")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=60, help="JPEGs decoded per repeat")
    args = parser.parse_args()

    # 1. reading
    ours = median_seconds(lambda: read_styles(args.styles), args.repeats)
    base = median_seconds(lambda: pd.read_csv(args.styles, keep_default_na=False, dtype=str),
                          args.repeats)
    rows = read_styles(args.styles).rows_read
    print(f"read {args.styles.name} ({rows:,} rows), median of {args.repeats}:")
    print(f"  pd.read_csv (baseline) {base * 1e3:8.1f} ms")
    print(f"  read_styles            {ours * 1e3:8.1f} ms   x{ours / base:.2f} of baseline")

    with tempfile.TemporaryDirectory() as tmp:
        catalog_dir = build_demo_catalog(Path(tmp) / "catalog", seed=0)
        frame = read_styles(catalog_dir).frame
        paths = []
        for product_id in frame["id"]:
            path = catalog_dir / "images" / f"{product_id}.jpg"
            if path.is_file() and path.stat().st_size and probe_image(path).format == "JPEG":
                with Image.open(path) as img:
                    if img.size == (1800, 2400) and img.mode == "RGB":
                        paths.append(path)
        paths = paths[: args.images]
        sample = frame[frame["id"].isin([int(p.stem) for p in paths])]

        # 2. decode check
        full = median_seconds(lambda: full_decode(paths), args.repeats)
        draft = median_seconds(lambda: [probe_image(p) for p in paths], args.repeats)
        print(f"decode check of {len(paths)} 1800x2400 JPEGs, one thread, median of {args.repeats}:")
        print(f"  full decode (baseline) {full / len(paths) * 1e3:8.2f} ms/image")
        print(f"  probe_image (draft)    {draft / len(paths) * 1e3:8.2f} ms/image   "
              f"x{full / draft:.1f} faster")

        # 3. threads
        one = median_seconds(lambda: inventory_images(sample, catalog_dir / "images", workers=1,
                                                      progress=False), args.repeats)
        two = median_seconds(lambda: inventory_images(sample, catalog_dir / "images", workers=2,
                                                      progress=False), args.repeats)
        print(f"inventory_images of {len(sample)} rows, median of {args.repeats}:")
        print(f"  1 thread (baseline)    {one * 1e3:8.1f} ms")
        print(f"  2 threads              {two * 1e3:8.1f} ms   x{one / two:.2f} faster")


if __name__ == "__main__":
    main()
