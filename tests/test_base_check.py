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


def test_vae_round_trip_reconstructs_the_photos_and_is_measured_beside_them(tmp_path, one_torch_thread):
    from shoelib.images import letterbox, open_image

    pipe = load_pipeline(demo.MODEL_DIR, choose_policy("cpu", "float32"))
    prompts = base_check.holdout_prompts(demo.MODEL_DIR, demo.PHOTOS_DIR, 3, seed=1)
    paths = base_check.vae_round_trip(pipe, prompts, tmp_path / "vae", resolution=64, batch_size=2)
    errors, offsets = [], []
    for photo, path in zip(prompts["image_path"], paths, strict=True):
        original = np.asarray(letterbox(open_image(photo, 64), 64), float)
        decoded = np.asarray(Image.open(path), float)
        assert decoded.shape == original.shape == (64, 64, 3)
        errors.append(np.abs(decoded - original).mean())
        offsets.append(np.abs(np.roll(decoded, 8, axis=1) - original).mean())
    # the shipped VAE reconstructs each photo, far closer than the photo shifted by 8 px
    assert max(errors) < 20 and all(e < o / 2 for e, o in zip(errors, offsets, strict=True))
    before = [p.stat().st_mtime_ns for p in (tmp_path / "vae").iterdir()]
    assert base_check.vae_round_trip(pipe, prompts, tmp_path / "vae", resolution=64) == paths
    assert [p.stat().st_mtime_ns for p in (tmp_path / "vae").iterdir()] == before

    check = base_check.measure(prompts, paths, demo.ENCODER_DIR, round_trip_paths=paths)
    # the round trip passed as the generated images too: both columns hold the same shares
    assert "real photos through the VAE" in check.table
    assert (check.table["generated_value"] == check.table["vae_value"]).all()
    assert list(check.frame["vae_path"]) == paths


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
