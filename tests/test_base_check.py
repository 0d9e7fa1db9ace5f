"""04's base-model check on the shipped model: held-out prompts, batched rendering, measures."""

from __future__ import annotations

import numpy as np
from PIL import Image

from shoelib import base_check, demo
from shoelib.device import choose_policy
from shoelib.pipeline import load_pipeline


def test_holdout_prompts_spread_over_types_and_exist():
    prompts = base_check.holdout_prompts(demo.MODEL_DIR, demo.PHOTOS_DIR, 6, seed=0)
    assert len(prompts) == 6
    # round robin over types: six prompts name six different article types
    assert prompts["articleType"].nunique() == 6
    assert all(Image.open(p).size for p in prompts["image_path"])
    assert "Casual Shoes" not in set(prompts["articleType"])  # the LoRA's concept is not held out


def test_render_batches_like_single_images_and_resumes(tmp_path, one_torch_thread):
    policy = choose_policy("cpu", "float32")
    pipe = load_pipeline(demo.MODEL_DIR, policy)
    prompts = base_check.holdout_prompts(demo.MODEL_DIR, demo.PHOTOS_DIR, 3, seed=1)
    kwargs = dict(seed=7, steps=4, resolution=64, guidance_scale=3.0, policy=policy)
    batched = base_check.render(pipe, prompts, tmp_path / "batched", batch_size=3, **kwargs)
    single = base_check.render(pipe, prompts, tmp_path / "single", batch_size=1, **kwargs)
    for a, b in zip(batched, single, strict=True):
        diff = np.abs(np.asarray(Image.open(a), float) - np.asarray(Image.open(b), float))
        assert diff.max() <= 2  # same seed per row: the same image up to float rounding
    before = [p.stat().st_mtime_ns for p in (tmp_path / "batched").iterdir()]
    assert base_check.render(pipe, prompts, tmp_path / "batched", batch_size=3, **kwargs) == batched
    assert [p.stat().st_mtime_ns for p in (tmp_path / "batched").iterdir()] == before

    check = base_check.measure(prompts, batched, demo.ENCODER_DIR)
    assert list(check.table["measure"]) == ["passes photo checks", "colour as asked",
                                            "article type recognised",
                                            "article type recognised, mean over types"]
    assert check.chance == 1 / 3
    # the real photos are measured with the same code: the encoder knows their types
    assert (check.frame["type found (real)"] == check.frame["articleType"]).mean() >= 2 / 3


def test_mean_over_types_weighs_each_type_once():
    # 3 T-shirt prompts all recognised, 1 of Heels missed: 0.75 of the prompts, 0.5 over types
    types = ["Tshirts", "Tshirts", "Tshirts", "Heels"]
    value, (lo, hi) = base_check.mean_over_types(types, np.array([1.0, 1.0, 1.0, 0.0]))
    assert value == 0.5
    assert lo == 0.0 and hi == 1.0  # two types: a resample can hold either one twice


def test_mean_over_types_interval_with_one_prompt_per_type():
    # the demo asks for most types once: the interval must still reflect the sampling
    value, (lo, hi) = base_check.mean_over_types(list("abcdefgh"), np.array([1.0, 0, 1, 0, 0, 0, 1, 0]))
    assert value == 3 / 8
    assert 0.0 <= lo < value < hi <= 1.0
