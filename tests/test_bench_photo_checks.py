"""benchmarks/bench_photo_checks.py on a small catalogue in the Kaggle layout."""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest
from PIL import Image, ImageDraw

from shoelib.metrics import PALETTE
from shoelib.paths import PROJECT_ROOT

HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"


def bench():
    spec = importlib.util.spec_from_file_location(
        "bench_photo_checks", PROJECT_ROOT / "benchmarks" / "bench_photo_checks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def kaggle_folder(tmp_path_factory):
    """36 Casual Shoes photos (Red, Blue, White: drawn shoes on white) and a Sandal."""
    root = tmp_path_factory.mktemp("kaggle")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    lines = [HEADER]
    for i in range(37):
        colour = ("Red", "Blue", "White")[i % 3]
        article = "Casual Shoes" if i < 36 else "Sandals"
        lines.append(f"{100 + i},Men,Footwear,Shoes,{article},{colour},Summer,2012,Casual,"
                     f"Brand Men {colour} Shoes")
        im = Image.new("RGB", (80, 60), (255, 255, 255))
        shade = rng.uniform(0.8, 1.0)
        fill = (230, 230, 235) if colour == "White" else tuple(int(c * shade) for c in PALETTE[colour])
        ImageDraw.Draw(im).rounded_rectangle([12, 20, 68, 44], radius=6, fill=fill,
                                             outline=(90, 90, 90), width=2)
        im.save(root / "images" / f"{100 + i}.jpg", quality=95)
    (root / "styles.csv").write_text("\n".join(lines) + "\n")
    return root


def test_tunes_on_half_a_and_reports_half_b_and_the_majority_baseline(kaggle_folder, capsys):
    code = bench().main(["--data-root", str(kaggle_folder), "--classifier-steps", "20",
                         "--classifier-px", "8", "--classifier-seeds", "0", "--min-per-class", "3"])
    out = capsys.readouterr().out
    assert code == 0
    assert "36 photos present, 36 used" in out and "half A 18, half B 18" in out
    shipped = re.search(r"shipped: .*? ([\d.]+)% +([\d.]+)%", out)
    tuned = re.search(r"tuned on A: .*? ([\d.]+)% +([\d.]+)%", out)
    assert shipped and tuned
    assert float(tuned[1]) >= float(shipped[1])  # the search maximises agreement on A only
    assert "3 classes" in out and "majority baseline (always" in out


def test_a_folder_without_styles_csv_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench().main(["--data-root", str(tmp_path)])
    assert "no styles.csv there" in capsys.readouterr().err
