"""The weight-free colour measure and the downstream classifier on real catalogue photos.

    .venv/bin/python benchmarks/bench_photo_checks.py --data-root data/raw/fashion-dataset
        [--category "Casual Shoes"] [--max-photos 0] [--seed 0] [--classifier-steps 600]

`--data-root` is a folder in the Kaggle "Fashion Product Images" layout (`styles.csv` and
`images/<id>.jpg`). The category's rows whose photo is present are shuffled (`--seed`) and cut
into two halves, A and B:

1. colour agreement: the dominant foreground colour of each photo vs its catalogue label
   (`metrics.dominant_colour`). `chromatic_share` and `chroma` are tuned on half A (a grid
   search for the best agreement) and the agreement is reported on half B, which the tuning
   never saw, for both the tuned and the shipped thresholds (`metrics.PhotoThresholds`);
   the in-sample agreement on A shows how optimistic a number tuned and reported on the same
   photos would be. This agreement is the ceiling 07 reports for real photos: label noise and
   shading cap it.
2. the downstream colour classifier (`classifier`, the settings 07 uses in `full.yaml` unless
   given) trained on half A and tested on half B, against the majority-class baseline (always
   the most frequent colour of half A) that it must beat.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from shoelib import classifier as C
from shoelib import metrics as M
from shoelib.catalog import read_styles, select_category
from shoelib.images import open_rgb

CHROMATIC_SHARES = tuple(round(0.05 * k, 2) for k in range(1, 20))
CHROMAS = (6.0, 8.0, 10.0, 12.0, 15.0, 20.0)


def agreement(pixels: list[tuple[np.ndarray, np.ndarray]], labels: list[str],
              chroma: float, chromatic_share: float) -> float:
    """Share of photos whose dominant colour is their label's palette colour."""
    found = [M.dominant_colour(rgb, mask, chroma, chromatic_share)[0] for rgb, mask in pixels]
    return float(np.mean([f == label for f, label in zip(found, labels, strict=True)]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, required=True,
                        help="folder holding styles.csv and images/ (the Kaggle layout)")
    parser.add_argument("--category", default="Casual Shoes", help="articleType to use")
    parser.add_argument("--max-photos", type=int, default=0,
                        help="use at most this many photos (a seeded draw); 0 = all")
    parser.add_argument("--seed", type=int, default=0, help="shuffle before the A/B cut")
    parser.add_argument("--classifier-steps", type=int, default=600)
    parser.add_argument("--classifier-px", type=int, default=32)
    parser.add_argument("--classifier-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--min-per-class", type=int, default=10,
                        help="fewest half-A photos for a colour to be a classifier class")
    args = parser.parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would bury the figures
    styles = args.data_root / "styles.csv"
    if not styles.is_file():
        parser.error(f"--data-root {args.data_root}: no styles.csv there; give the folder "
                     "holding styles.csv and images/ (the Kaggle download)")

    rows = select_category(read_styles(styles).frame, args.category)
    paths = [args.data_root / "images" / f"{i}.jpg" for i in rows["id"]]
    present = [(p, M.palette_name(c)) for p, c in zip(paths, rows["baseColour"], strict=True)
               if p.is_file()]
    photos = [(p, c) for p, c in present if c is not None]
    rng = np.random.default_rng(args.seed)
    photos = [photos[i] for i in rng.permutation(len(photos))]
    if args.max_photos:
        photos = photos[:args.max_photos]
    if len(photos) < 20:
        parser.error(f"{args.category}: only {len(photos)} photos with a palette colour label "
                     f"under {args.data_root / 'images'}; need at least 20")
    half = len(photos) // 2
    split = {"A": photos[:half], "B": photos[half:]}
    print(f"{args.category}: {len(rows):,} rows, {len(present):,} photos present, "
          f"{len(photos):,} used ({len(present) - len([c for _, c in present if c])} without a "
          f"palette colour left out); half A {len(split['A'])}, half B {len(split['B'])} "
          f"(seed {args.seed})")

    # 1. colour agreement: tune on A, report on B
    shipped = M.PhotoThresholds()
    pixels = {k: [M.analysis_pixels(open_rgb(p), shipped) for p, _ in v] for k, v in split.items()}
    labels = {k: [c for _, c in v] for k, v in split.items()}
    grid = {(chroma, share): agreement(pixels["A"], labels["A"], chroma, share)
            for chroma, share in itertools.product(CHROMAS, CHROMATIC_SHARES)}
    best = max(grid, key=grid.get)
    tuned = replace(shipped, chroma=best[0], chromatic_share=best[1])
    print(f"\n1. dominant colour vs label ({len(grid)} threshold pairs searched on half A)")
    print(f"{'thresholds':<44} {'A (tuning)':>10} {'B (held out)':>12}")
    for name, t in ((f"shipped: chroma {shipped.chroma:g}, share {shipped.chromatic_share:g}", shipped),
                    (f"tuned on A: chroma {tuned.chroma:g}, share {tuned.chromatic_share:g}", tuned)):
        a, b = (agreement(pixels[k], labels[k], t.chroma, t.chromatic_share) for k in "AB")
        print(f"{name:<44} {a:>10.1%} {b:>12.1%}")
    majority_colour = max(set(labels["A"]), key=labels["A"].count)
    print(f"answering '{majority_colour}' (half A's most frequent label) for every photo: "
          f"{np.mean([c == majority_colour for c in labels['B']]):.1%} on B")

    # 2. the downstream classifier: train on A, test on B
    classes = C.select_classes(labels["A"], labels["B"], args.min_per_class)
    if len(classes) < 2:
        print(f"\n2. classifier: fewer than 2 colours with {args.min_per_class}+ photos in A")
        return 0
    config = C.ClassifierConfig(image_px=args.classifier_px, steps=args.classifier_steps)
    sets = {}
    for k in "AB":
        keep, y = C.encode_labels(labels[k], classes)
        kept = [p for (p, _), ok in zip(split[k], keep, strict=True) if ok]
        sets[k] = C.LabelledSet(k, C.load_pixels(kept, config.image_px), y)
    runs = C.run_classifiers([sets["A"]], sets["B"], len(classes), config, args.classifier_seeds)
    summary = C.summarise_study(runs).iloc[0]
    baseline = C.majority_baseline(sets["A"].y, sets["B"].y, len(classes))
    print(f"\n2. colour classifier, {len(classes)} classes {classes}: trained on {len(sets['A'])} "
          f"photos of A ({config.steps} steps, {config.image_px} px), tested on {len(sets['B'])} of B")
    print(f"  classifier accuracy {summary.accuracy_mean:.1%} ± {summary.accuracy_std:.1%}, "
          f"macro-F1 {summary.macro_f1_mean:.1%} ± {summary.macro_f1_std:.1%} "
          f"(mean ± std over seeds {args.classifier_seeds})")
    print(f"  majority baseline (always {classes[baseline['class']]}): accuracy "
          f"{baseline['accuracy']:.1%}, macro-F1 {baseline['macro_f1']:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
