"""Catalogue reading and image inventory speed, against plain pandas / full decoding.

    .venv/bin/python benchmarks/bench_catalog.py [--styles PATH] [--repeats 5] [--images 60]

Prints medians over repeats and ratios against the baseline measured in the same process:
1. read_styles (lossless) vs pd.read_csv(on_bad_lines="skip", keep_default_na=False, dtype=str),
   which drops the lines with unquoted commas (the count is printed), on the generated demo
   catalogue (it has such lines) and, with --styles, on a styles.csv of yours (the Kaggle
   download's has about 22);
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


def median_seconds(fn, repeats: int, clock=time.perf_counter) -> float:
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


def full_decode(paths: list[Path]) -> None:
    for path in paths:
        with Image.open(path) as img:
            img.load()


def pandas_skipping(styles: Path) -> pd.DataFrame:
    """The baseline: pandas reading every cell as text, skipping the lines it cannot parse."""
    return pd.read_csv(styles, on_bad_lines="skip", keep_default_na=False, dtype=str)


def compare_reading(name: str, styles: Path, repeats: int) -> None:
    """Both readers are single-threaded, so CPU time is their cost even on a busy machine."""
    ours = median_seconds(lambda: read_styles(styles), repeats, time.process_time)
    base = median_seconds(lambda: pandas_skipping(styles), repeats, time.process_time)
    rows, kept = read_styles(styles).rows_read, len(pandas_skipping(styles))
    print(f"read {name}, CPU time, median of {repeats}:")
    print(f"  pd.read_csv(on_bad_lines='skip') {base * 1e3:8.1f} ms   {kept:,} rows "
          f"({rows - kept} dropped)")
    print(f"  read_styles (lossless)           {ours * 1e3:8.1f} ms   {rows:,} rows   "
          f"x{ours / base:.2f} of baseline")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--styles", type=Path, default=None,
                        help="also read this styles.csv (e.g. the Kaggle download's)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=60, help="JPEGs decoded per repeat")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        catalog_dir = build_demo_catalog(Path(tmp) / "catalog", seed=0)

        # 1. reading
        for name, styles in (("generated demo styles.csv", catalog_dir / "styles.csv"),
                             (str(args.styles), args.styles)):
            if styles is not None:
                compare_reading(name, styles, args.repeats)
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
