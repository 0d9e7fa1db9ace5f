"""Masked loss: 02's foreground masks weight 05's loss towards the product (background_loss_weight)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_train import make_split, read_kohya_header, scheduler, small_config

from shoelib import train as train_module
from shoelib.device import choose_policy
from shoelib.images import mask_path, write_mask
from shoelib.latent_cache import cache_latents, load_latent, load_mask
from shoelib.train import (
    Batch,
    ResumeMismatchError,
    TrainConfigError,
    diffusion_loss,
    sample_batch,
    train,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def masked_split(folder: Path, n: int, seed: int) -> Path:
    """`make_split` with 02's masks: masks/<name>.png of every image, listed as mask_file_name."""
    make_split(folder, n, seed)
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    for row in rows:
        with Image.open(folder / row["file_name"]) as image:
            write_mask(image, mask_path(folder / row["file_name"]))
        row["mask_file_name"] = f"masks/{row['file_name']}"
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    root = tmp_path_factory.mktemp("masked")
    return {"train": masked_split(root / "train", 6, 0), "val": masked_split(root / "val", 3, 1),
            "cache": root / "cache"}


# --- the loss

class Predicts(torch.nn.Module):
    """A stand-in UNet: 0.1 x its noisy input, plus a fixed offset per latent pixel."""

    def __init__(self, offset) -> None:
        super().__init__()
        self.offset = offset

    def forward(self, x, t, encoder_hidden_states=None, return_dict=False):
        return (0.1 * x + self.offset,)


def test_weight_zero_ignores_the_background_and_weight_one_does_not():
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:6, 1:5] = 1.0
    mask[:, :, 2:6, 5] = 0.5  # a latent pixel half on the product
    batch = Batch(torch.randn(2, 4, 8, 8, generator=g), torch.zeros(2, 77, 32),
                  torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 900]), mask)
    background_only = 3.0 * (mask == 0).float()  # the prediction changes on background alone
    sched, policy, cpu = scheduler("epsilon"), choose_policy("cpu"), torch.device("cpu")

    def loss(offset, weight, gamma=0.0):
        return diffusion_loss(Predicts(offset), batch, sched, gamma, policy, cpu,
                              background_loss_weight=weight)

    for gamma in (0.0, 5.0):  # min-SNR weighting applies on top, per sample
        assert torch.equal(loss(background_only, 0.0, gamma), loss(0.0, 0.0, gamma))
        assert loss(background_only, 1.0, gamma) > loss(0.0, 1.0, gamma) + 1
    assert loss(0.0, 0.0) < loss(background_only, 0.1) < loss(background_only, 1.0)
    # weight 0: the mean squared error over the product, each latent pixel by its share
    error = (0.1 * sched.add_noise(batch.latents, batch.noise, batch.timesteps) - batch.noise) ** 2
    by_hand = ((error * mask).sum(dim=(1, 2, 3)) / (4 * mask.sum(dim=(1, 2, 3)))).mean()
    torch.testing.assert_close(loss(0.0, 0.0), by_hand)
    # weight 1 is the plain mean squared error, with or without a mask
    plain = Batch(batch.latents, batch.text, batch.noise, batch.timesteps)
    torch.testing.assert_close(loss(0.0, 1.0), error.mean())
    assert torch.equal(diffusion_loss(Predicts(0.0), plain, sched, 0.0, policy, cpu), loss(0.0, 1.0))


class MirroredLatents:
    """A cached split whose mirrored latent is all 10 and its mask all 1 (unmirrored: 0, 0)."""

    masked = True

    def __len__(self) -> int:
        return 4

    def latent(self, index: int, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.full((4, 8, 8), 10.0 if flip else 0.0), torch.zeros(4, 8, 8)

    def mask(self, index: int, flip: bool) -> torch.Tensor:
        return torch.full((1, 8, 8), 1.0 if flip else 0.0)

    def text(self, index: int) -> torch.Tensor:
        return torch.zeros(77, 32)


def test_sample_batch_takes_the_mask_of_the_latent_it_drew(tiny_sd_dir, masked, tmp_path):
    config = small_config(tiny_sd_dir, masked, tmp_path, random_flip=True)
    batch = sample_batch(MirroredLatents(), [0] * 32, torch.Generator().manual_seed(0), config,
                         1000, torch.zeros(77, 32))
    flipped = batch.latents[:, 0, 0, 0] == 10.0
    assert 4 < int(flipped.sum()) < 28
    assert batch.mask.shape == (32, 1, 8, 8)
    assert torch.equal(batch.mask[:, 0, 0, 0] == 1.0, flipped)


# --- the cache

def test_cached_mask_is_the_foreground_share_per_latent_pixel_mirrored_with_the_latent(
        tiny_sd_dir, tmp_path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_sd_dir, subfolder="vae")
    folder = masked_split(tmp_path / "images", 2, 0)
    images = [folder / f"{i}.png" for i in range(2)]
    masks = [mask_path(p) for p in images]
    cache = tmp_path / "cache"
    keys, stats = cache_latents(images, 64, (False, True), vae, cache, mask_paths=masks)
    assert stats.computed == 4
    for mask, key in zip(masks, keys, strict=True):
        mean, _ = load_latent(cache, key[False])
        plain, mirrored = load_mask(cache, key[False]), load_mask(cache, key[True])
        assert plain.shape == (1, *mean.shape[-2:])
        torch.testing.assert_close(mirrored, plain.flip(-1))  # mirrored with its latent
        assert not torch.equal(mirrored, plain)  # the product is off-centre
        # 96 px resized to 64, then area-averaged: the share of product is kept
        share = float(np.asarray(Image.open(mask)).mean() / 255)
        assert float(plain.mean()) == pytest.approx(share, abs=0.02)
        assert 0 < share < 1 and set(plain.unique().tolist()) - {0.0, 1.0}  # partial pixels
    # a mask is part of its latent's key: another mask, another entry; none, the old key
    Image.new("L", (96, 96), 255).save(masks[0])
    new_keys, stats = cache_latents(images, 64, (False, True), vae, cache, mask_paths=masks)
    assert stats.computed == 2 and new_keys[0] != keys[0] and new_keys[1] == keys[1]
    assert torch.equal(load_mask(cache, new_keys[0][True]), torch.ones_like(plain))
    unmasked, _ = cache_latents(images, 64, (False,), vae, cache)
    assert load_mask(cache, unmasked[0][False]) is None


# --- settings and training

@pytest.mark.parametrize("value", [1.5, -0.1, "0.1", True])
def test_bad_background_loss_weight_is_refused_naming_it(tiny_sd_dir, masked, tmp_path, value):
    with pytest.raises(TrainConfigError, match=re.escape(
            f"background_loss_weight={value!r} must be a number in [0, 1]")):
        small_config(tiny_sd_dir, masked, tmp_path, background_loss_weight=value)


def test_a_split_without_masks_and_a_background_weight_is_one_line_naming_the_fix(
        tiny_sd_dir, masked, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train_module, "cache_inputs", lambda *a: pytest.fail("loaded models"))
    plain = make_split(tmp_path / "plain", 2, 0)
    config = small_config(tiny_sd_dir, masked, tmp_path / "out", train_dir=plain,
                          background_loss_weight=0.1)
    words = (f"background_loss_weight=0.1 needs foreground masks, but {plain / 'metadata.jsonl'}"
             " lists none (no mask_file_name); rerun 02_prepare_dataset to write them, or set "
             "background_loss_weight=1")
    with pytest.raises(TrainConfigError, match=re.escape(words)):
        train(config, progress=False)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config.to_dict()))
    assert train_module.main(["--config", str(path)]) == 1
    assert capsys.readouterr().err == f"error: {words}\n"


def test_masked_run_records_the_foreground_loss_the_weight_and_refuses_another_on_resume(
        tiny_sd_dir, masked, tmp_path):
    config = small_config(tiny_sd_dir, masked, tmp_path / "run", max_train_steps=3,
                          checkpoint_every=3, validation_every=3, num_validation_prompts=1,
                          background_loss_weight=0.1)
    result = train(config, progress=False)
    assert [s for s, _ in result.val_loss_foreground] == [s for s, _ in result.val_loss] == [0, 3]
    assert all(fg != plain for (_, fg), (_, plain) in zip(result.val_loss_foreground,
                                                          result.val_loss, strict=True))
    assert read_kohya_header(result)["ss_background_loss_weight"] == "0.1"
    with pytest.raises(ResumeMismatchError, match=re.escape("background_loss_weight: 0.1 -> 1.0")):
        train(small_config(tiny_sd_dir, masked, tmp_path / "run", max_train_steps=3,
                           checkpoint_every=3, validation_every=3, num_validation_prompts=1),
              progress=False)
    again = train(config, progress=False)  # the same weight resumes, its history kept
    assert again.resumed_from == 3 and again.val_loss_foreground == result.val_loss_foreground


def test_without_masks_there_is_no_foreground_loss(tiny_sd_dir, masked, tmp_path):
    from test_train import FixedLatents, ScaledInput

    config = small_config(tiny_sd_dir, masked, tmp_path)
    loss, foreground = train_module.validation_loss(
        ScaledInput(), FixedLatents(), scheduler("epsilon"), config, choose_policy("cpu"),
        torch.device("cpu"))
    assert loss > 0 and foreground is None
