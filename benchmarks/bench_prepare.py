"""Image preparation of 02_prepare_dataset against a plain PIL loop.

    .venv/bin/python benchmarks/bench_prepare.py [--n 100] [--repeats 3] [--workers 0]

Generates `n` 1800x2400 JPEG product shots (textured product on a white studio background,
like the Kaggle originals) in a temporary folder, then prepares them to 512x512 PNG:

- baseline: one process; open, convert("RGB"), LANCZOS resize, pad with white, save PNG
  with Pillow's default settings (compress_level 6);
- shoelib: `images.prepare_images`: reduced-scale JPEG decoding (`Image.draft`), PNG level
  `--level` (default 1), one process per core; and, to compare like with like, the same in
  one process at PNG level 6 (only the decoding differs from the baseline) and at `--level`.

Prints images/s (median of `repeats`), CPU ms per image, the mean absolute pixel difference
to the baseline (/255) and total sizes; the ratios at the same compression and process count,
per CPU second, and of the default setting; then what each PNG level costs to write and to
read back, since the prepared set is written once and read many times.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from shoelib.images import PrepareConfig, prepare_images, resolve_workers

SIZE = 512
SOURCE = (1800, 2400)


def product_shot(seed: int, size: tuple[int, int] = SOURCE) -> Image.Image:
    """A product photo stand-in: shaded, textured shapes on white (drawn at 1/4 scale, upscaled
    with BICUBIC so edges and texture are smooth, as in a real photo)."""
    rng = np.random.default_rng(seed)
    small = (size[0] // 4, size[1] // 4)
    img = Image.new("RGB", small, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    w, h = small
    colour = tuple(int(c) for c in rng.integers(20, 230, 3))
    x0, y0 = int(w * rng.uniform(0.08, 0.2)), int(h * rng.uniform(0.3, 0.4))
    x1, y1 = int(w * rng.uniform(0.8, 0.92)), int(h * rng.uniform(0.6, 0.7))
    draw.ellipse((x0, y0, x1, y1), fill=colour)
    draw.rectangle((x0, (y0 + y1) // 2, x1, y1), fill=colour)
    draw.rectangle((x0 - 5, y1 - 12, x1 + 5, y1), fill=(235, 235, 230))
    pixels = np.asarray(img).astype(np.int16)
    inside = (pixels != 255).any(axis=2)
    shade = np.linspace(-40, 40, w)[None, :, None] + rng.normal(0, 10, pixels.shape)
    pixels = np.where(inside[..., None], pixels + shade, pixels)
    small_img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return small_img.resize(size, Image.Resampling.BICUBIC)


def generate(folder: Path, n: int, workers: int) -> list[Path]:
    paths = [folder / f"{i}.jpg" for i in range(n)]

    def write(i: int) -> None:
        product_shot(i).save(paths[i], quality=90)

    with ThreadPoolExecutor(max_workers=workers) as pool:  # JPEG encoding releases the GIL
        list(pool.map(write, range(n)))
    return paths


def baseline_prepare(src: Path, dst: Path) -> None:
    """The plain loop: full decode, LANCZOS, white padding, Pillow's default PNG settings."""
    with Image.open(src) as img:
        rgb = img.convert("RGB")
    scale = SIZE / max(rgb.size)
    target = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    resized = rgb.resize(target, Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    canvas.paste(resized, ((SIZE - target[0]) // 2, (SIZE - target[1]) // 2))
    canvas.save(dst)


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (pool workers are reaped on
    shutdown), so work spread over processes counts in full."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(run: Callable[[], None], repeats: int) -> tuple[float, float]:
    """Median wall time and median CPU time of `repeats` runs (s).

    On a shared machine the wall time depends on what else runs; the CPU time does not.
    """
    walls, cpus = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), cpu_seconds()
        run()
        walls.append(time.perf_counter() - t0)
        cpus.append(cpu_seconds() - c0)
    return statistics.median(walls), statistics.median(cpus)


def run_shoelib(sources: list[Path], out: Path, config: PrepareConfig, workers: int) -> None:
    jobs = [(src, out / f"{src.stem}.png") for src in sources]
    results = list(prepare_images(jobs, config, workers=workers, progress=False))
    failed = [r for r in results if r.status != "ok"]
    if failed:
        raise RuntimeError(f"{len(failed)} images failed, e.g. {failed[0].error}")


def mean_abs_diff(a_dir: Path, b_dir: Path, names: list[str]) -> float:
    diffs = [np.abs(np.asarray(Image.open(a_dir / n), dtype=np.int16)
                    - np.asarray(Image.open(b_dir / n), dtype=np.int16)).mean() for n in names]
    return float(np.mean(diffs))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.png"))


def png_levels(prepared: list[Path], levels=(0, 1, 3, 6, 9), repeats: int = 3) -> None:
    """What each zlib level costs to write and to read back, on prepared images."""
    images = [Image.open(p).convert("RGB") for p in prepared]
    print(f"\nPNG level trade-off on {len(images)} prepared {SIZE}x{SIZE} images (one process):")
    print(f"{'level':>5} {'write ms/img':>13} {'read ms/img':>12} {'MB / 1000 img':>14}")
    for level in levels:
        blobs: list[bytes] = []

        def write(level=level, blobs=blobs) -> None:
            blobs.clear()
            for img in images:
                buffer = io.BytesIO()
                img.save(buffer, format="PNG", compress_level=level)
                blobs.append(buffer.getvalue())

        def read(blobs=blobs) -> None:
            for blob in blobs:
                Image.open(io.BytesIO(blob)).load()

        write_s = timed(write, repeats)[0]
        read_s = timed(read, repeats)[0]
        mb = sum(len(b) for b in blobs) / len(blobs) * 1000 / 1e6
        print(f"{level:>5} {write_s / len(images) * 1e3:>13.1f} {read_s / len(images) * 1e3:>12.1f}"
              f" {mb:>14.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="generated 1800x2400 JPEGs")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method (median)")
    parser.add_argument("--workers", type=int, default=0, help="shoelib processes; 0 = per core")
    parser.add_argument("--level", type=int, default=1, help="shoelib PNG compress_level")
    args = parser.parse_args(argv)
    workers = resolve_workers(args.workers)

    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        tmp = Path(tmp)
        (tmp / "src").mkdir()
        t0 = time.perf_counter()
        sources = generate(tmp / "src", args.n, workers)
        src_mb = sum(p.stat().st_size for p in sources) / 1e6
        print(f"{args.n} JPEGs {SOURCE[0]}x{SOURCE[1]} ({src_mb / args.n:.2f} MB each) generated "
              f"in {time.perf_counter() - t0:.1f} s; {workers} worker process(es), "
              f"{args.repeats} repeats, median times\n")
        names = [f"{p.stem}.png" for p in sources]
        base_dir, ours_dir = tmp / "baseline", tmp / "shoelib"
        base_dir.mkdir()

        def baseline() -> None:
            for src in sources:
                baseline_prepare(src, base_dir / f"{src.stem}.png")

        config = PrepareConfig(size=SIZE, compress_level=args.level)
        rows = [("plain PIL loop (full decode, PNG level 6, 1 process)",
                 timed(baseline, args.repeats), base_dir)]
        for label, cfg in (
            ("shoelib, draft decode, PNG level 6, 1 process", PrepareConfig(SIZE, 6)),
            (f"shoelib, draft decode, PNG level {args.level}, 1 process", config),
        ):
            out = tmp / f"one_process_{len(rows)}"
            rows.append((label, timed(lambda out=out, cfg=cfg: run_shoelib(
                sources, out, cfg, 1), args.repeats), out))
        rows.append((f"shoelib prepare_images (draft, PNG level {args.level}, {workers} proc)",
                     timed(lambda: run_shoelib(sources, ours_dir, config, workers),
                           args.repeats), ours_dir))

        (base_s, base_cpu) = rows[0][1]
        print(f"{'method':<62} {'img/s':>6} {'speed-up':>8} {'CPU ms/img':>10} "
              f"{'diff/255':>8} {'MB total':>8}")
        for label, (seconds, cpu), out in rows:
            diff = mean_abs_diff(base_dir, out, names) if out != base_dir else 0.0
            print(f"{label:<62} {args.n / seconds:>6.1f} {base_s / seconds:>7.2f}x "
                  f"{cpu / args.n * 1e3:>10.1f} {diff:>8.3f} {folder_bytes(out) / 1e6:>8.1f}")
        (same_s, same_cpu), (level_s, level_cpu), (seconds, cpu) = (r[1] for r in rows[1:])
        diff = mean_abs_diff(base_dir, ours_dir, names)
        print("\nratios to the plain loop (wall clock; CPU per image):")
        print(f"  like for like, PNG level 6, 1 process (the decoding alone): "
              f"{base_s / same_s:.2f}x; {base_cpu / same_cpu:.2f}x less CPU")
        print(f"  PNG level {args.level} instead of 6, 1 process: {base_s / level_s:.2f}x; "
              f"{base_cpu / level_cpu:.2f}x less CPU")
        print(f"  the default, PNG level {args.level}, {workers} process(es): "
              f"{base_s / seconds:.2f}x; {base_cpu / cpu:.2f}x less CPU")
        print(f"mean |difference| {diff:.3f}/255 (target <= 1/255); sizes "
              f"{folder_bytes(ours_dir) / 1e6:.1f} MB (level {args.level}) vs "
              f"{folder_bytes(base_dir) / 1e6:.1f} MB (level 6); load average at the end "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        png_levels(sorted(ours_dir.glob("*.png"))[:20], repeats=args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
