"""The LoRA training loop on the tiny model: it learns, exports what it trained, resumes exactly."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from shoelib import train as train_module
from shoelib.device import choose_policy
from shoelib.latent_cache import CacheStats, cache_latents, cache_text, load_latent
from shoelib.lora_io import apply_lora
from shoelib.paths import PROJECT_ROOT
from shoelib.train import (
    Batch,
    CheckpointError,
    DataOrder,
    NonFiniteLossError,
    ResumeMismatchError,
    TrainConfig,
    TrainConfigError,
    list_checkpoints,
    min_snr_weights,
    noise_target,
    sample_batch,
    train,
    verify_checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COLOURS = ("black", "brown", "white", "red", "blue", "grey", "green", "navy blue")
# One thread per process: tiny tensors on a shared 2-core machine are many times slower with
# two OpenMP threads spin-waiting on each other, and subprocesses must match in-process runs.
ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}




def make_split(folder: Path, n: int, seed: int) -> Path:
    """n coloured 'product' PNGs with captions, in the layout 02_prepare_dataset exports."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        pixels = np.full((96, 96, 3), 245, np.uint8)
        pixels[25:70, 6:60] = rng.integers(0, 255, 3)  # off-centre: mirroring changes it
        Image.fromarray(pixels).save(folder / f"{i}.png")
        rows.append({"file_name": f"{i}.png",
                     "text": f"a professional product photo of {COLOURS[i % 8]} casual shoes"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {"train": make_split(root / "train", 6, 0), "val": make_split(root / "val", 3, 1),
            "cache": root / "cache"}


def small_config(tiny_sd_dir, data, output_dir, **overrides) -> TrainConfig:
    values = dict(model=str(tiny_sd_dir), train_dir=data["train"], val_dir=data["val"],
                  output_dir=output_dir, cache_dir=data["cache"], resolution=64,
                  max_train_steps=6, lr_warmup_steps=1, learning_rate=5e-3, train_batch_size=2,
                  gradient_accumulation_steps=2, validation_every=3, num_validation_prompts=2,
                  validation_inference_steps=3, checkpoint_every=3, checkpoints_to_keep=2,
                  device="cpu", seed=3)
    return TrainConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def trained(tiny_sd_dir, data, tmp_path_factory):
    config = small_config(tiny_sd_dir, data, tmp_path_factory.mktemp("run"))
    return config, train(config, progress=False)


# --- settings and inputs are checked before any work

@pytest.mark.parametrize("field,value,words", [
    ("lora_rank", 0, "lora_rank=0"), ("lora_alpha", 0, "lora_alpha=0"),
    ("learning_rate", -1e-4, "learning_rate=-0.0001"), ("max_train_steps", 0, "max_train_steps=0"),
    ("resolution", 500, "resolution=500 is not a positive multiple of 8; use 504"),
    ("caption_dropout", 1.0, "caption_dropout=1.0"), ("lr_scheduler", "cosin", "cosine"),
    ("lr_warmup_steps", 10, "lr_warmup_steps=10 >= max_train_steps=6"),
])
def test_bad_settings_are_refused_with_value_and_fix(tiny_sd_dir, data, tmp_path, field, value, words):
    with pytest.raises(TrainConfigError) as err:
        small_config(tiny_sd_dir, data, tmp_path, **{field: value})
    assert words in str(err.value)


@pytest.mark.parametrize("text, words", [
    (None, "cannot read --config {path} (No such file or directory)"),
    ('{"model": "m",', "--config {path} is not valid JSON: Expecting property name enclosed in "
                      "double quotes at line 1, column 15"),
    ("[1, 2]", "--config {path} must hold a JSON object of TrainConfig fields, not a list"),
    ('{"model": "m"}', "training setting(s) ['train_dir', 'output_dir', 'cache_dir'] are required"),
    ('{"model": "m", "train_dir": "t", "output_dir": "o", "cache_dir": "c", "lora_rnk": 8}',
     "unknown training setting(s) ['lora_rnk']"),
    ('{"model": "m", "train_dir": "t", "output_dir": "o", "cache_dir": "c", "max_train_steps": 0}',
     "max_train_steps=0 must be a whole number > 0; use e.g. 3000"),
    ('{"model": "m", "train_dir": "t", "output_dir": "o", "cache_dir": "c", "seed": "abc"}',
     "seed='abc' (05's train_seed) must be a whole number >= 0; use e.g. 42"),
])
def test_command_line_config_errors_are_one_line_naming_the_file_or_setting(
        tmp_path, capsys, text, words):
    path = tmp_path / "bad.json"
    if text is not None:
        path.write_text(text)
    assert train_module.main(["--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and words.format(path=path) in err
    assert not (tmp_path / "o").exists()


def test_command_line_config_error_prints_no_traceback(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"model": "m", "train_dir": "t", "output_dir": "o", "cache_dir": "c", '
                    '"learning_rate": "fast"}')
    done = subprocess.run([sys.executable, "-m", "shoelib.train", "--config", str(path)],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr == ("error: learning_rate='fast' must be a number > 0 (it is text); "
                           "use e.g. 0.0001\n")


def test_missing_or_uncaptioned_train_split_is_refused_before_loading(tiny_sd_dir, data, tmp_path):
    from shoelib.dataset import DatasetError, MissingInputError

    config = small_config(tiny_sd_dir, data, tmp_path / "out", train_dir=tmp_path / "absent",
                          cache_dir=tmp_path / "cache")
    with pytest.raises(MissingInputError, match="absent does not exist"):
        train(config, progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metadata.jsonl").write_text("")
    with pytest.raises(DatasetError, match="lists no image"):
        train(replace(config, train_dir=str(empty)), progress=False)
    uncaptioned = make_split(tmp_path / "uncaptioned", 2, 0)
    (uncaptioned / "metadata.jsonl").write_text(
        json.dumps({"file_name": "0.png", "text": "shoes"}) + "\n"
        + json.dumps({"file_name": "1.png", "text": " "}) + "\n")
    with pytest.raises(DatasetError, match="without a caption, e.g. 1.png"):
        train(replace(config, train_dir=str(uncaptioned)), progress=False)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_single_file_model_is_refused_with_the_conversion(data, tmp_path):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"")
    config = small_config(ckpt, data, tmp_path / "out")
    with pytest.raises(TrainConfigError, match="save_pretrained"):
        train(config, progress=False)


# --- the objective, against diffusers' reference

def scheduler(prediction_type: str):
    from diffusers import DDPMScheduler

    from shoelib.tiny_sd import SD15_SCHEDULER

    return DDPMScheduler.from_config({**SD15_SCHEDULER, "prediction_type": prediction_type})


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_match_diffusers_compute_snr(prediction_type):
    from diffusers.training_utils import compute_snr

    sched = scheduler(prediction_type)
    timesteps = torch.tensor([0, 1, 10, 100, 500, 999])
    snr = compute_snr(sched, timesteps)
    # train_text_to_image_lora.py's weighting, written out from the paper's definition.
    clipped = torch.stack([snr, 5.0 * torch.ones_like(snr)], dim=1).min(dim=1)[0]
    expected = clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr
    torch.testing.assert_close(min_snr_weights(sched, timesteps, 5.0), expected, rtol=1e-5, atol=0)
    assert (expected < 1).any() and (expected > 0).all()  # clipping happened at small t


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_noise_target_follows_the_scheduler_config(prediction_type):
    sched = scheduler(prediction_type)
    g = torch.Generator().manual_seed(0)
    batch = Batch(torch.randn(2, 4, 8, 8, generator=g), torch.zeros(2, 77, 32),
                  torch.randn(2, 4, 8, 8, generator=g), torch.tensor([10, 900]))
    # v = sqrt(alpha_bar_t) * eps - sqrt(1 - alpha_bar_t) * x0 (Salimans & Ho 2022), written out.
    alpha_bar = sched.alphas_cumprod[batch.timesteps].view(-1, 1, 1, 1)
    velocity = alpha_bar.sqrt() * batch.noise - (1 - alpha_bar).sqrt() * batch.latents
    expected = velocity if prediction_type == "v_prediction" else batch.noise
    torch.testing.assert_close(noise_target(sched, batch), expected)


class FixedLatents:
    """A cached split whose every latent distribution is mean 3, std 2 (and text zeros)."""

    shape = (4, 8, 8)
    masked = False
    sizes = None  # no aspect buckets

    def __len__(self) -> int:
        return 5

    def groups(self) -> list[list[int]]:
        return [list(range(5))]

    def latent(self, index: int, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.full(self.shape, 3.0), torch.full(self.shape, 2.0)

    def text(self, index: int) -> torch.Tensor:
        return torch.zeros(77, 32)


def test_sample_batch_draws_latents_from_the_distribution_mean_plus_std_times_noise(
        tiny_sd_dir, data, tmp_path):
    plain = small_config(tiny_sd_dir, data, tmp_path, random_flip=False, caption_dropout=0.0,
                         noise_offset=0.0)
    batch = sample_batch(FixedLatents(), [0, 1, 2], torch.Generator().manual_seed(7), plain,
                         1000, torch.zeros(77, 32))
    g = torch.Generator().manual_seed(7)
    expected = torch.stack([3.0 + 2.0 * torch.randn(FixedLatents.shape, generator=g)
                            for _ in range(3)])
    assert torch.equal(batch.latents, expected)  # not the mean alone, not noise alone


class ScaledInput(torch.nn.Module):
    """A stand-in UNet: predicts 0.1 x its noisy input."""

    def forward(self, x, t, encoder_hidden_states=None, return_dict=False):
        return (0.1 * x,)


def test_validation_loss_is_the_same_every_time_and_moves_with_the_seed(tiny_sd_dir, data, tmp_path):
    config = small_config(tiny_sd_dir, data, tmp_path, train_batch_size=2)
    args = (ScaledInput(), FixedLatents(), scheduler("epsilon"))
    rest = (choose_policy("cpu"), torch.device("cpu"))
    first = train_module.validation_loss(*args, config, *rest)
    torch.randn(100)  # training draws from other random streams in between
    torch.Generator().manual_seed(0).seed()
    assert train_module.validation_loss(*args, config, *rest) == first
    assert train_module.validation_loss(*args, replace(config, seed=4), *rest) != first


def test_data_order_visits_every_sample_once_per_epoch_and_restores():
    order = DataOrder(5, seed=1)
    first = order.take(5) + order.take(5)
    assert sorted(first[:5]) == sorted(first[5:]) == list(range(5)) and first[:5] != first[5:]
    saved = order.state_dict()
    ahead = order.take(7)
    again = DataOrder(5, seed=99)
    again.load_state_dict(saved)
    assert again.take(7) == ahead


# --- the cache

def test_cache_reuses_and_recomputes_only_what_changed(tiny_sd_dir, data, tmp_path):
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    vae = AutoencoderKL.from_pretrained(tiny_sd_dir, subfolder="vae")
    images = [make_split(tmp_path / "imgs", 3, 5) / f"{i}.png" for i in range(3)]
    cache = tmp_path / "cache"
    keys, stats = cache_latents(images, 64, (False, True), vae, cache)
    assert (stats.computed, stats.reused) == (6, 0)
    _, stats = cache_latents(images, 64, (False, True), vae, cache)
    assert (stats.computed, stats.reused) == (0, 6)
    Image.new("RGB", (96, 96), "red").save(images[1])  # one image changes
    new_keys, stats = cache_latents(images, 64, (False, True), vae, cache)
    assert (stats.computed, stats.reused) == (2, 4)
    assert new_keys[0] == keys[0] and new_keys[1] != keys[1]
    _, stats = cache_latents(images, 32, (False, True), vae, cache)  # resolution changes
    assert (stats.computed, stats.reused) == (6, 0)
    # What is cached is the VAE's distribution (scaled), for the image and its mirror image.
    from shoelib.latent_cache import load_image_tensor

    with torch.no_grad():
        dist = vae.encode(load_image_tensor(images[2], 64, True)[None]).latent_dist
    mean, std = load_latent(cache, new_keys[2][True])
    torch.testing.assert_close(mean, dist.mean[0] * vae.config.scaling_factor, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(std, dist.std[0] * vae.config.scaling_factor, atol=1e-5, rtol=1e-4)

    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd_dir, subfolder="tokenizer")
    encoder = CLIPTextModel.from_pretrained(tiny_sd_dir, subfolder="text_encoder")
    captions = ["black casual shoes", "red casual shoes", "black casual shoes"]
    text_keys, stats = cache_text(captions, tokenizer, encoder, cache)
    assert (stats.computed, stats.reused) == (2, 0) and text_keys[0] == text_keys[2]
    _, stats = cache_text(captions + ["white casual shoes"], tokenizer, encoder, cache)
    assert (stats.computed, stats.reused) == (1, 2)
    with torch.no_grad():  # a different text encoder (other weights) gets other keys
        encoder.get_input_embeddings().weight.mul_(2)
    other_keys, stats = cache_text(captions, tokenizer, encoder, cache)
    assert stats.computed == 2 and other_keys[0] != text_keys[0]


def test_sample_batch_uses_the_mirrored_latent_and_empty_caption(trained):
    config, _ = trained
    inputs = train_module.cache_inputs(config, {"train": _split(config.train_dir), "val": None},
                                       torch.device("cpu"), choose_policy("cpu"))
    flipping = replace(config, caption_dropout=0.999999)
    batch = sample_batch(inputs.train, [0] * 64, torch.Generator().manual_seed(0), flipping,
                         1000, inputs.empty_text)
    plain, mirrored = inputs.train.latent(0, False)[0], inputs.train.latent(0, True)[0]
    # Latents are mean + std * noise; the small VAE std leaves them nearest their own mean.
    near_mirror = [(b - mirrored).abs().mean() < (b - plain).abs().mean() for b in batch.latents]
    assert 16 < sum(near_mirror) < 48  # about half mirrored
    assert torch.equal(batch.text[0], inputs.empty_text)  # dropped caption -> "" embedding
    assert inputs.stats["train_latents"] == CacheStats(computed=0, reused=12)  # from training


def _split(folder):
    from shoelib.dataset import read_split

    return read_split(folder)


# --- training

def test_training_lowers_the_loss_on_a_fixed_set(tiny_sd_dir, data, tmp_path):
    config = small_config(tiny_sd_dir, data, tmp_path, val_dir=data["train"], max_train_steps=30,
                          learning_rate=1e-2, lr_warmup_steps=3, validation_every=15,
                          num_validation_prompts=0, checkpoint_every=0)
    result = train(config, progress=False)
    (s0, first), (_, middle), (s_end, last) = result.val_loss
    assert (s0, s_end) == (0, 30)
    assert last < middle < first and last < 0.85 * first  # about 1.20 -> 0.84
    assert result.trainable_params == sum(v.numel() for v in load_file(str(result.lora_diffusers)).values())


def tiny_pipeline(tiny_sd_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd_dir, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def draw_validation_images(pipe, result, seed: int) -> np.ndarray:
    """The run's validation prompts drawn as training draws them: seed + i for prompt i."""
    return np.stack([pipe(prompt, num_inference_steps=3, guidance_scale=7.5, height=64, width=64,
                          generator=torch.Generator().manual_seed(seed + i),
                          output_type="np").images[0]
                     for i, prompt in enumerate(result.validation_prompts)])


def test_run_exports_loras_that_redraw_the_training_images(tiny_sd_dir, trained):

    config, result = trained
    assert result.steps == 6 and result.last_images.shape == (2, 64, 64, 3)
    assert [s for s, _ in result.val_loss] == [0, 3, 6]
    assert [Path(p).name for _, p in result.validation_grids] == [
        "step_000000.png", "step_000003.png", "step_000006.png"]
    pipe = tiny_pipeline(tiny_sd_dir)

    def draw():
        return draw_validation_images(pipe, result, config.seed)

    base = draw()
    assert np.abs(base - result.last_images).max() > 1e-3  # training changed the images
    pipe.load_lora_weights(str(result.lora_diffusers.parent), weight_name=result.lora_diffusers.name)
    np.testing.assert_allclose(draw(), result.last_images, atol=1e-5)
    apply_lora(pipe, result.lora_kohya)
    np.testing.assert_allclose(draw(), result.last_images, atol=1e-5)


def test_kohya_header_records_the_training(trained):
    from shoelib.lora_io import read_header

    config, result = trained
    header = read_header(result.lora_kohya)
    assert header["ss_network_dim"] == "8" and header["ss_network_alpha"] == "16.0"
    assert header["ss_sd_model_name"] == config.model and header["ss_steps"] == "6"
    assert header["ss_resolution"] == "(64, 64)" and header["ss_num_train_images"] == "6"
    assert header["ss_seed"] == "3"


def test_checkpoints_keep_the_last_k_and_ignore_staging(trained):
    config, _ = trained
    root = Path(config.output_dir) / "checkpoints"
    assert [p.name for p in list_checkpoints(root)] == ["step_000003", "step_000006"]
    (root / ".step_000009.partial").mkdir()  # what a kill during writing leaves
    try:
        assert list_checkpoints(root)[-1].name == "step_000006"
    finally:
        (root / ".step_000009.partial").rmdir()
    saved = json.loads((root / "step_000006" / "state.json").read_text())
    assert saved["step"] == 6 and len(saved["history"]["train_loss"]) == 6


def test_rerun_of_a_finished_run_resumes_without_training(trained):
    config, first = trained
    again = train(config, progress=False)
    assert again.resumed_from == 6 and again.steps == 6 and again.last_images is None
    assert again.train_loss == first.train_loss and again.val_loss == first.val_loss


def test_resume_with_other_settings_names_the_keys(trained):
    config, _ = trained
    changed = replace(config, lora_rank=4, learning_rate=1e-3, validation_every=2)
    with pytest.raises(ResumeMismatchError) as err:
        train(changed, progress=False)
    message = str(err.value)
    assert "lora_rank: 8 -> 4" in message and "learning_rate: 0.005 -> 0.001" in message
    assert "validation_every" not in message  # changes nothing a step computes


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tiny_sd_dir, data,
                                                                      tmp_path, monkeypatch):
    real = train_module.diffusion_loss
    calls = {"n": 0}

    def nan_from_step_3(*args, **kwargs):  # 2 micro-batches per step: call 5 is step 3
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] >= 5 else loss

    monkeypatch.setattr(train_module, "diffusion_loss", nan_from_step_3)
    config = small_config(tiny_sd_dir, data, tmp_path, validation_every=0, checkpoint_every=2)
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 3") as err:
        train(config, progress=False)
    assert "step_000002" in str(err.value)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step_000002"]
    assert not (tmp_path / "pytorch_lora_weights.safetensors").exists()


# --- damaged checkpoints, moved folders, a folder in use

def _copy_run(config: TrainConfig, folder: Path) -> TrainConfig:
    shutil.copytree(config.output_dir, folder)
    return replace(config, output_dir=str(folder), validation_every=0)


@pytest.mark.parametrize("name", ["lora.safetensors", "training_state.pt", "state.json"])
def test_a_truncated_latest_checkpoint_falls_back_to_the_older_one(trained, tmp_path, name):
    config = _copy_run(trained[0], tmp_path / "run")
    root = Path(config.output_dir) / "checkpoints"
    damaged = root / "step_000006" / name
    size = damaged.stat().st_size
    damaged.write_bytes(damaged.read_bytes()[:size // 2])
    with pytest.warns(UserWarning) as caught:
        result = train(config, progress=False)
    message = " ".join(str(w.message) for w in caught)
    assert (f"checkpoint {root / 'step_000006'} is damaged ({name} has {size // 2:,} bytes, "
            f"not {size:,}): resuming from the older {root / 'step_000003'} instead") in message
    assert result.resumed_from == 3 and result.steps == 6
    assert verify_checkpoint(root / "step_000006") is None  # trained again and rewritten


def test_no_intact_checkpoint_is_one_error_naming_each(trained, tmp_path):
    config = _copy_run(trained[0], tmp_path / "run")
    root = Path(config.output_dir) / "checkpoints"
    state = root / "step_000003" / "state.json"
    size = state.stat().st_size
    state.write_text("{")
    (root / "step_000006" / "lora.safetensors").unlink()
    with pytest.raises(CheckpointError) as err:
        train(config, progress=False)
    assert str(err.value) == (
        f"no intact checkpoint to resume: {root / 'step_000006'} is damaged (lora.safetensors "
        f"is missing); {root / 'step_000003'} is damaged (state.json has 1 bytes, not "
        f"{size:,}). Delete {root} to train from the start")


def test_a_moved_run_folder_resumes(tiny_sd_dir, data, tmp_path, monkeypatch):
    first = tmp_path / "first"
    for split in ("train", "val"):
        shutil.copytree(data[split], first / "processed" / split)

    def config_in(root: Path) -> TrainConfig:
        return small_config(tiny_sd_dir, data, root / "lora", train_dir=root / "processed" / "train",
                            val_dir=root / "processed" / "val", cache_dir=root / "cache",
                            max_train_steps=4, checkpoint_every=2, validation_every=2)

    save = train_module.save_checkpoint

    def killed_after_step_2(*args):
        folder = save(*args)
        raise KeyboardInterrupt  # the run is killed here
        return folder

    monkeypatch.setattr(train_module, "save_checkpoint", killed_after_step_2)
    with pytest.raises(KeyboardInterrupt):
        train(config_in(first), progress=False)
    monkeypatch.setattr(train_module, "save_checkpoint", save)
    moved = tmp_path / "moved"
    shutil.move(first, moved)
    result = train(config_in(moved), progress=False)
    assert result.resumed_from == 2 and result.steps == 4
    assert [Path(p) for _, p in result.validation_grids] == [
        moved / "lora" / "validation" / f"step_{s:06d}.png" for s in (0, 2, 4)]
    assert all(Path(p).is_file() for _, p in result.validation_grids)

    changed = moved / "processed" / "train" / "metadata.jsonl"
    changed.write_text(changed.read_text().replace("black casual shoes", "black sneakers"))
    with pytest.raises(ResumeMismatchError, match="train_split_content"):
        train(config_in(moved), progress=False)


def test_a_folder_in_use_is_refused_before_any_work(tiny_sd_dir, data, tmp_path, capsys,
                                                     lock_in_other_process):
    from shoelib.io import FolderInUseError

    holder = lock_in_other_process(tmp_path / "lora")
    with pytest.raises(FolderInUseError, match=f"lora is in use by pid {holder.pid} "):
        train(small_config(tiny_sd_dir, data, tmp_path / "lora"), progress=False)
    assert not (tmp_path / "lora").exists()
    # the command line says it in one line, without a traceback
    config = _write_config(small_config(tiny_sd_dir, data, tmp_path / "lora"), tmp_path / "c.json")
    assert train_module.main(["--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and f"pid {holder.pid}" in err


# --- processes: a real kill, and two processes

def _write_config(config: TrainConfig, path: Path) -> Path:
    path.write_text(json.dumps(config.to_dict()))
    return path


# Runs the CLI, but after the checkpoint of step STOP sleeps so the test can SIGKILL it there.
KILLABLE = """
import sys, time
import shoelib.train as t
save = t.save_checkpoint
def save_then_wait(config, *args):
    folder = save(config, *args)
    if folder.name == "step_{stop:06d}":
        print("CHECKPOINT WRITTEN", flush=True)
        time.sleep(600)
    return folder
t.save_checkpoint = save_then_wait
sys.exit(t.main(["--config", sys.argv[1]]))
"""


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tiny_sd_dir, data, tmp_path):
    steps, stop = 8, 4
    full = small_config(tiny_sd_dir, data, tmp_path / "full", max_train_steps=steps,
                        lr_warmup_steps=2, validation_every=0, checkpoint_every=stop)
    cut = replace(full, output_dir=str(tmp_path / "cut"))
    cli = [sys.executable, "-m", "shoelib.train", "--config"]
    subprocess.run(cli + [str(_write_config(full, tmp_path / "full.json"))], check=True,
                   env=ONE_THREAD_ENV, capture_output=True)

    script = tmp_path / "killable.py"
    script.write_text(KILLABLE.format(stop=stop))
    child = subprocess.Popen([sys.executable, str(script), str(_write_config(cut, tmp_path / "cut.json"))],
                             env=ONE_THREAD_ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True)
    try:
        assert child.stdout.readline().strip().endswith("CHECKPOINT WRITTEN")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not (tmp_path / "cut" / "pytorch_lora_weights.safetensors").exists()
    resumed = subprocess.run(cli + [str(tmp_path / "cut.json")], env=ONE_THREAD_ENV,
                             capture_output=True, text=True, check=True)
    assert '"steps": 8' in resumed.stdout

    a = load_file(str(tmp_path / "full" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(tmp_path / "cut" / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit on CPU
    assert any(a[k].abs().max() > 0 for k in a if ".up." in k)  # trained, not the zero init
    history = json.loads((tmp_path / "cut" / "checkpoints" / "step_000008" / "state.json").read_text())
    assert [s for s, _ in history["history"]["train_loss"]] == list(range(1, steps + 1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_cpu_run_trains_and_saves_one_lora(tiny_sd_dir, data, tmp_path):
    config = small_config(tiny_sd_dir, data, tmp_path / "ddp", max_train_steps=4,
                          train_batch_size=1, validation_every=2, checkpoint_every=2)
    launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu",
              "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
              "-m", "shoelib.train", "--config", str(_write_config(config, tmp_path / "ddp.json"))]
    started = time.perf_counter()
    done = subprocess.run(launch, env=ONE_THREAD_ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('"steps": 4') == 1  # one report, from the main process
    out = tmp_path / "ddp"
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["lora_kohya.safetensors",
                                                                 "pytorch_lora_weights.safetensors"]
    last = out / "checkpoints" / "step_000004"
    assert json.loads((last / "state.json").read_text())["num_processes"] == 2
    assert (last / "rng_0.pt").exists() and (last / "rng_1.pt").exists()
    lora = load_file(str(out / "pytorch_lora_weights.safetensors"))
    assert any(v.abs().max() > 0 for k, v in lora.items() if ".up." in k)
    assert time.perf_counter() - started < 300


def test_validation_grid_is_one_row_of_the_images_at_their_own_size(tmp_path):
    images = np.zeros((3, 64, 48, 3))
    images[:, :, :, 0] = [[[1.0]], [[0.0]], [[2.0]]]  # red, black, red (clipped)
    path = train_module.save_validation_grid(images, tmp_path / "step_000001.png")
    with Image.open(path) as im:
        assert im.size == (3 * 48, 64)
        middle = [im.convert("RGB").getpixel((48 * k + 24, 32)) for k in range(3)]
    assert middle[0][0] > 200 and middle[1][0] < 50 and middle[2][0] > 200


# --- trainer options: precision, optimizers, LoRA+, DoRA, EMA

def _lora_b(path) -> dict:
    return {k: v for k, v in load_file(str(path)).items() if ".lora.up." in k or ".lora_B." in k}


def _crash_after(stop: int):
    """save_checkpoint that raises right after writing step `stop`: a run killed there."""
    real = train_module.save_checkpoint

    def save_then_crash(config, *args):
        folder = real(config, *args)
        if folder.name == f"step_{stop:06d}":
            raise KeyboardInterrupt("killed after the checkpoint")
        return folder
    return save_then_crash


def _straight_and_resumed(make_config, monkeypatch):
    """A 4-step run straight through, and the same run killed after its step-2 checkpoint and
    resumed (`make_config(name)`: the config writing to folder `name`). Asserts that both end
    with bit-identical LoRA files; returns (straight, resumed, the resumed run's config)."""
    straight = train(make_config("straight"), progress=False)
    cut = make_config("cut")
    with monkeypatch.context() as patch:
        patch.setattr(train_module, "save_checkpoint", _crash_after(2))
        with pytest.raises(KeyboardInterrupt):
            train(cut, progress=False)
    resumed = train(cut, progress=False)
    assert resumed.resumed_from == 2 and resumed.steps == 4
    a, b = load_file(str(straight.lora_diffusers)), load_file(str(resumed.lora_diffusers))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return straight, resumed, cut


@pytest.mark.parametrize("field,value,words", [
    ("mixed_precision", "fp8", "mixed_precision='fp8' is unknown; use one of auto, no, fp16, bf16"),
    ("optimizer", "sgd", "optimizer='sgd' is unknown; use one of adamw, adamw8bit, prodigy"),
    ("loraplus_lr_ratio", 0.5, "loraplus_lr_ratio=0.5 must be a number >= 1"),
    ("ema_decay", 1.0, "ema_decay=1.0 must be 0 (off) or in [0.5, 1)"),
    ("use_dora", "yes", "use_dora='yes' must be true or false"),
    ("text_encoder_lr", 0, "text_encoder_lr=0 must be a number > 0, or None for learning_rate"),
])
def test_bad_trainer_options_are_refused_with_value_and_fix(tiny_sd_dir, data, tmp_path, field,
                                                            value, words):
    with pytest.raises(TrainConfigError, match=re.escape(words)):
        small_config(tiny_sd_dir, data, tmp_path, **{field: value})


def test_prodigy_with_loraplus_is_refused_and_a_tiny_prodigy_rate_warns(tiny_sd_dir, data, tmp_path):
    with pytest.raises(TrainConfigError, match="Prodigy takes one rate"):
        small_config(tiny_sd_dir, data, tmp_path, optimizer="prodigy", learning_rate=1.0,
                     loraplus_lr_ratio=16)
    with pytest.warns(UserWarning, match="use learning_rate=1.0"):
        small_config(tiny_sd_dir, data, tmp_path, optimizer="prodigy", learning_rate=1e-4)


def test_adamw8bit_off_cuda_is_refused_before_any_model_loads(tiny_sd_dir, data, tmp_path,
                                                              monkeypatch):
    monkeypatch.setattr(train_module, "cache_inputs", lambda *a: pytest.fail("loaded models"))
    config = small_config(tiny_sd_dir, data, tmp_path, optimizer="adamw8bit")
    with pytest.raises(TrainConfigError, match="runs on CUDA only .* this run is on cpu"):
        train(config, progress=False)


def test_mixed_precision_picks_the_policy_and_a_contradicting_policy_is_refused(
        tiny_sd_dir, data, tmp_path):
    bf16 = small_config(tiny_sd_dir, data, tmp_path, mixed_precision="bf16")
    policy = train_module.resolve_policy(bf16, None)
    assert (policy.mixed_precision, policy.dtype) == ("bf16", torch.bfloat16)
    with pytest.raises(TrainConfigError, match="but the device policy trains in 'no'"):
        train_module.resolve_policy(bf16, choose_policy("cpu"))
    auto = small_config(tiny_sd_dir, data, tmp_path)
    assert train_module.resolve_policy(auto, None).mixed_precision == "no"  # cpu: float32


def test_a_bf16_checkpoint_does_not_resume_in_fp32(tiny_sd_dir, data, tmp_path):
    config = small_config(tiny_sd_dir, data, tmp_path, max_train_steps=2, validation_every=0,
                          checkpoint_every=0)
    first = train(config, choose_policy("cpu", "bfloat16"), progress=False)
    assert first.steps == 2
    saved = json.loads((tmp_path / "checkpoints" / "step_000002" / "state.json").read_text())
    assert saved[train_module.MIXED_PRECISION_KEY] == "bf16"
    assert read_kohya_header(first)["ss_mixed_precision"] == "bf16"
    with pytest.raises(ResumeMismatchError, match="resolved_mixed_precision: 'bf16' -> 'no'"):
        train(config, choose_policy("cpu"), progress=False)


def test_loraplus_puts_the_up_matrices_in_a_group_at_ratio_times_the_rate(tiny_sd_dir, data,
                                                                          tmp_path):
    plain = train(small_config(tiny_sd_dir, data, tmp_path / "plain", max_train_steps=3,
                               validation_every=0, checkpoint_every=0), progress=False)
    plus = train(small_config(tiny_sd_dir, data, tmp_path / "plus", max_train_steps=3,
                              validation_every=0, checkpoint_every=0, loraplus_lr_ratio=4),
                 progress=False)
    # B starts at zero and Adam's first steps move a weight by about the rate, so B grows
    # about 4 times as much under LoRA+.
    b_plain, b_plus = _lora_b(plain.lora_diffusers), _lora_b(plus.lora_diffusers)
    ratio = (sum(v.abs().mean() for v in b_plus.values())
             / sum(v.abs().mean() for v in b_plain.values()))
    assert 3.0 < ratio < 5.0
    saved = torch.load(tmp_path / "plus" / "checkpoints" / "step_000003" / "training_state.pt",
                       weights_only=True)
    groups = saved["optimizer"]["param_groups"]
    assert len(groups) == 2 and groups[1]["initial_lr"] == pytest.approx(4 * groups[0]["initial_lr"])
    assert '"loraplus_lr_ratio": 4' in read_kohya_header(plus)["ss_network_args"]


def read_kohya_header(result) -> dict:
    from shoelib.lora_io import read_header

    return read_header(result.lora_kohya)


@pytest.mark.parametrize("options", [
    {"optimizer": "prodigy", "learning_rate": 1.0},
    {"optimizer": "adafactor"},
    {"ema_decay": 0.9},
    {"use_dora": True, "loraplus_lr_ratio": 8},
    {"train_text_encoder": True, "text_encoder_lr": 2e-3, "ema_decay": 0.8},
], ids=["prodigy", "adafactor", "ema", "dora-loraplus", "text-encoder-ema"])
def test_each_option_resumes_to_the_same_weights(tiny_sd_dir, data, tmp_path, monkeypatch, options):
    values = dict(max_train_steps=4, validation_every=0, checkpoint_every=2, **options)
    _, resumed, cut = _straight_and_resumed(
        lambda name: small_config(tiny_sd_dir, data, tmp_path / name, **values), monkeypatch)
    assert read_kohya_header(resumed)["ss_optimizer"] == cut.optimizer


def test_optimizer_option_selects_the_optimizer(tiny_sd_dir, data, tmp_path):
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig
    from prodigyopt import Prodigy
    from transformers.optimization import Adafactor

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_dir, subfolder="unet")
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q"]))
    made = {name: train_module.make_optimizer(small_config(
        tiny_sd_dir, data, tmp_path, optimizer=name, learning_rate=1.0), unet)
        for name in ("adamw", "prodigy", "adafactor")}
    assert isinstance(made["adamw"], torch.optim.AdamW)
    assert isinstance(made["prodigy"], Prodigy) and isinstance(made["adafactor"], Adafactor)
    assert not made["adafactor"].defaults["relative_step"]  # the given rate is the rate


def test_ema_weights_are_what_validation_draws_and_export_writes(tiny_sd_dir, data, tmp_path):

    config = small_config(tiny_sd_dir, data, tmp_path, ema_decay=0.9, max_train_steps=6,
                          validation_every=6, checkpoint_every=0)
    result = train(config, progress=False)
    checkpoint = tmp_path / "checkpoints" / "step_000006"
    raw = load_file(str(checkpoint / "lora.safetensors"))
    exported = load_file(str(result.lora_diffusers))
    shadow = torch.load(checkpoint / train_module.EMA_FILE, weights_only=True)["shadow_params"]
    assert len(shadow) == len(raw) == len(exported)  # an average of every LoRA weight
    assert all(any(torch.equal(v, s) for s in shadow) for v in exported.values())  # exported
    assert not all(any(torch.equal(v, s) for s in shadow) for v in raw.values())  # not raw
    pipe = tiny_pipeline(tiny_sd_dir)
    pipe.load_lora_weights(str(result.lora_diffusers.parent), weight_name=result.lora_diffusers.name)
    np.testing.assert_allclose(draw_validation_images(pipe, result, config.seed),
                               result.last_images, atol=1e-5)


def test_dora_exports_a_diffusers_file_that_redraws_the_validation_images(tiny_sd_dir, data,
                                                                          tmp_path):

    from shoelib.lora_io import LoraFileError

    config = small_config(tiny_sd_dir, data, tmp_path, use_dora=True, max_train_steps=4,
                          validation_every=4, checkpoint_every=0)
    result = train(config, progress=False)
    assert any("lora_magnitude_vector" in k for k in load_file(str(result.lora_diffusers)))
    kohya = load_file(str(result.lora_kohya))
    scales = [k for k in kohya if k.endswith(".dora_scale")]
    assert scales and all(kohya[k].ndim == 2 and kohya[k].shape[1] == 1 for k in scales)
    assert json.loads(read_kohya_header(result)["ss_network_args"]) == {"use_dora": True}
    pipe = tiny_pipeline(tiny_sd_dir)

    def draw():
        return draw_validation_images(pipe, result, config.seed)

    apply_lora(pipe, result.lora_diffusers)
    np.testing.assert_allclose(draw(), result.last_images, atol=1e-5)
    with pytest.raises(LoraFileError, match="DoRA LoRA in kohya format"):
        apply_lora(pipe, result.lora_kohya)


# --- speed switches

def test_training_runs_pytorch_sdpa_attention(tiny_sd_dir, data, tmp_path, monkeypatch):
    real = torch.nn.functional.scaled_dot_product_attention
    calls = {"n": 0}

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    result = train(small_config(tiny_sd_dir, data, tmp_path, max_train_steps=1, lr_warmup_steps=0,
                                validation_every=0, checkpoint_every=0), progress=False)
    assert result.attention == ("AttnProcessor2_0",)
    assert calls["n"] > 0  # the processor name is what ran, not only what is set


def test_channels_last_trains_the_same_loras_in_channels_last_memory(tiny_sd_dir, data, tmp_path,
                                                                    monkeypatch):
    values = dict(max_train_steps=2, validation_every=0, checkpoint_every=0)
    plain = train(small_config(tiny_sd_dir, data, tmp_path / "plain", **values), progress=False)
    formats = []
    real = train_module.accumulate_gradients

    def recording(config, accelerator, unet, *args):
        conv = accelerator.unwrap_model(unet).conv_in.weight
        formats.append(conv.is_contiguous(memory_format=torch.channels_last) and
                       not conv.is_contiguous())
        return real(config, accelerator, unet, *args)
    monkeypatch.setattr(train_module, "accumulate_gradients", recording)
    fast = train(small_config(tiny_sd_dir, data, tmp_path / "fast", channels_last=True, **values),
                 progress=False)
    assert formats == [True, True]
    a, b = load_file(str(plain.lora_diffusers)), load_file(str(fast.lora_diffusers))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert read_kohya_header(fast)["ss_channels_last"] == "True"


def test_tf32_is_switched_on_for_cuda_runs_only(tiny_sd_dir, data, tmp_path):
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        train(small_config(tiny_sd_dir, data, tmp_path, allow_tf32=True, max_train_steps=1,
                           lr_warmup_steps=0, validation_every=0, checkpoint_every=0),
              progress=False)
        assert torch.get_float32_matmul_precision() == "highest"  # a cpu run leaves it alone
        train_module.allow_tf32()
        assert torch.get_float32_matmul_precision() == "high"  # TF32 matmuls on CUDA
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.slow
def test_torch_compile_trains_the_same_lora(tiny_sd_dir, data, tmp_path, monkeypatch):
    values = dict(max_train_steps=2, validation_every=0, checkpoint_every=0)
    eager = train(small_config(tiny_sd_dir, data, tmp_path / "eager", **values), progress=False)
    kinds = []
    real = train_module.accumulate_gradients

    def recording(config, accelerator, unet, *args):
        kinds.append(unet._compiled_call_impl is not None)  # what Module.compile sets
        return real(config, accelerator, unet, *args)
    monkeypatch.setattr(train_module, "accumulate_gradients", recording)
    compiled = train(small_config(tiny_sd_dir, data, tmp_path / "compiled", torch_compile=True,
                                  **values), progress=False)
    assert kinds == [True, True]
    # The same loss (Adam turns float rounding in near-zero gradients into rate-sized steps,
    # so the weights are not compared); the exports keep the eager keys.
    assert compiled.train_loss[0][1] == pytest.approx(eager.train_loss[0][1], rel=1e-5)
    assert compiled.train_loss[1][1] == pytest.approx(eager.train_loss[1][1], rel=1e-3)
    assert load_file(str(compiled.lora_diffusers)).keys() == load_file(
        str(eager.lora_diffusers)).keys()
def test_text_encoder_lora_trains_and_both_files_redraw_the_validation_images(
        tiny_sd_dir, data, tmp_path, capsys):

    config = small_config(tiny_sd_dir, data, tmp_path, train_text_encoder=True,
                          text_encoder_lr=1e-2, max_train_steps=4, validation_every=4,
                          checkpoint_every=0)
    result = train(config, progress=False)
    assert "caption states are not cached" in capsys.readouterr().out
    saved = load_file(str(result.lora_diffusers))
    text_keys = [k for k in saved if k.startswith("text_encoder.")]
    assert text_keys and any(saved[k].abs().max() > 0 for k in text_keys if ".up." in k)
    kohya = load_file(str(result.lora_kohya))
    # A1111, ComfyUI and kohya name SD 1.x text-encoder layers from text_model
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj.") for k in kohya)
    header = read_kohya_header(result)
    assert header["ss_network_train_unet_only"] == "False" and header["ss_text_encoder_lr"] == "0.01"
    groups = torch.load(tmp_path / "checkpoints" / "step_000004" / "training_state.pt",
                        weights_only=True)["optimizer"]["param_groups"]
    assert [g["initial_lr"] for g in groups] == [5e-3, 1e-2]  # UNet, then the text encoder

    pipe = tiny_pipeline(tiny_sd_dir)

    def draw():
        return draw_validation_images(pipe, result, config.seed)

    apply_lora(pipe, result.lora_diffusers)
    with_text_lora = draw()
    np.testing.assert_allclose(with_text_lora, result.last_images, atol=1e-5)
    apply_lora(pipe, result.lora_kohya)
    np.testing.assert_allclose(draw(), result.last_images, atol=1e-5)
    from peft.tuners.tuners_utils import BaseTunerLayer

    for layer in pipe.text_encoder.modules():  # the text encoder's LoRA is part of the images
        if isinstance(layer, BaseTunerLayer):
            layer.enable_adapters(False)
    assert np.abs(draw() - with_text_lora).max() > 1e-4


# --- aspect buckets

# (width, height) of the bucket split's images: 3:4 photos (02's 448x576 at a small scale),
# squares and one 4:3; at resolution 64 they train at 56x72, 64x64 and 72x56.
BUCKET_IMAGE_SIZES = [(72, 96), (96, 96), (72, 96), (96, 96), (72, 96), (96, 72), (72, 96)]


def make_bucket_split(folder: Path, seed: int) -> Path:
    """A split of images of several shapes, with foreground masks, as 02 exports at buckets."""
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i, (w, h) in enumerate(BUCKET_IMAGE_SIZES):
        pixels = np.full((h, w, 3), 245, np.uint8)
        pixels[h // 4:3 * h // 4, 6:w // 2] = rng.integers(0, 255, 3)
        Image.fromarray(pixels).save(folder / f"{i}.png")
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4:3 * h // 4, 6:w // 2] = 255
        Image.fromarray(mask).save(folder / "masks" / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "mask_file_name": f"masks/{i}.png",
                     "text": f"a professional product photo of {COLOURS[i % 8]} casual shoes",
                     "width": w, "height": h})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture(scope="module")
def bucket_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bucket_data")
    return {"train": make_bucket_split(root / "train", 0), "val": make_bucket_split(root / "val", 1),
            "cache": root / "cache"}


def bucket_config(tiny_sd_dir, bucket_data, output_dir, **overrides) -> TrainConfig:
    return small_config(tiny_sd_dir, bucket_data, output_dir, aspect_buckets=True,
                        max_train_steps=4, checkpoint_every=2, validation_every=4,
                        background_loss_weight=0.5, **overrides)


def test_bucketed_data_order_never_mixes_buckets_and_restores():
    groups = [[0, 2, 4, 6], [1, 3], [5]]
    order = DataOrder(7, seed=1, groups=groups, batch=2)
    member = {i: g for g, group in enumerate(groups) for i in group}
    batches = [order.take(2) for _ in range(12)]
    assert all(member[a] == member[b] for a, b in batches)
    # an epoch is every group's batches (the last one filled from the same group): 2 + 1 + 1
    assert sorted(i for b in batches[:4] for i in b) == [0, 1, 2, 3, 4, 5, 5, 6]
    assert batches[:4] != batches[4:8]  # reshuffled every epoch
    saved = order.state_dict()
    ahead = [order.take(2) for _ in range(5)]
    again = DataOrder(7, seed=99, groups=groups, batch=2)
    again.load_state_dict(saved)
    assert [again.take(2) for _ in range(5)] == ahead
    with pytest.raises(ValueError, match="batches of 2, not 3"):
        order.take(3)
    # one group (every image in one bucket) is the order without buckets
    assert DataOrder(5, seed=1, groups=[[0, 1, 2, 3, 4]], batch=2).take(10) == \
        DataOrder(5, seed=1).take(10)


def test_the_cache_is_keyed_by_bucket_and_masks_follow_its_geometry(tiny_sd_dir, tmp_path):
    from diffusers import AutoencoderKL

    from shoelib.latent_cache import latent_key, load_mask

    vae = AutoencoderKL.from_pretrained(tiny_sd_dir, subfolder="vae")
    folder = make_bucket_split(tmp_path / "imgs", 0)
    images, masks = [folder / "0.png"], [folder / "masks" / "0.png"]  # 72x96
    cache = tmp_path / "cache"
    square, _ = cache_latents(images, 64, (False,), vae, cache, mask_paths=masks)
    bucket, stats = cache_latents(images, 64, (False,), vae, cache, mask_paths=masks,
                                  sizes=[(56, 72)])
    assert stats.computed == 1 and bucket[0][False] != square[0][False]
    assert load_latent(cache, bucket[0][False])[0].shape == (4, 9, 7)  # 72 / 8, 56 / 8
    assert load_latent(cache, square[0][False])[0].shape == (4, 8, 8)
    mask = load_mask(cache, bucket[0][False])
    assert mask.shape == (1, 9, 7)
    # the product covers rows 1/4 to 3/4: the mask's top and bottom latent rows are background
    assert mask[0, 0].max() == 0 and mask[0, -1].max() == 0 and mask[0, 4, 1] == 1
    # the whole 3:4 image, not a square crop of it: the product keeps its share, half the
    # rows times 30 of 72 columns
    assert mask.mean().item() == pytest.approx(0.5 * 30 / 72, abs=0.01)
    # at the square, the key is what it was before buckets existed
    data = images[0].read_bytes()
    assert latent_key(data, 64, False, "fp", None, (64, 64)) == latent_key(data, 64, False, "fp")
    assert latent_key(data, 64, False, "fp", None, (56, 72)) != latent_key(data, 64, False, "fp")


def test_bucketed_run_batches_within_buckets_and_records_them(tiny_sd_dir, bucket_data, tmp_path,
                                                              monkeypatch):
    seen = []
    real = train_module.sample_batch

    def recording(split, indices, *args, **kwargs):
        batch = real(split, indices, *args, **kwargs)
        seen.append(({split.sizes[i] for i in indices}, tuple(batch.latents.shape[-2:]),
                     tuple(batch.mask.shape[-2:])))
        return batch

    monkeypatch.setattr(train_module, "sample_batch", recording)
    config = bucket_config(tiny_sd_dir, bucket_data, tmp_path)
    result = train(config, progress=False)
    assert result.buckets == {"56x72": 4, "64x64": 2, "72x56": 1}
    assert len(seen) > 8
    for sizes, latent, mask in seen:  # every batch (training and validation) one bucket
        assert len(sizes) == 1
        (w, h), = sizes
        assert latent == mask == (h // 8, w // 8)
    assert {s for sizes, _, _ in seen for s in sizes} == {(56, 72), (64, 64), (72, 56)}
    # validation images at the most common bucket
    assert result.last_images.shape == (2, 72, 56, 3)
    header = read_kohya_header(result)
    assert header["ss_enable_bucket"] == "True"
    assert json.loads(header["ss_bucket_info"])["buckets"] == {
        "0": {"resolution": [56, 72], "count": 4}, "1": {"resolution": [64, 64], "count": 2},
        "2": {"resolution": [72, 56], "count": 1}}
    # the option is part of the resume check
    with pytest.raises(ResumeMismatchError, match="aspect_buckets: True -> False"):
        train(replace(config, aspect_buckets=False), progress=False)


def test_a_killed_bucketed_run_resumes_to_the_same_weights(tiny_sd_dir, bucket_data, tmp_path,
                                                            monkeypatch):
    straight, resumed, _ = _straight_and_resumed(
        lambda name: bucket_config(tiny_sd_dir, bucket_data, tmp_path / name), monkeypatch)
    assert resumed.train_loss == straight.train_loss


def test_aspect_buckets_must_be_true_or_false_in_05(tiny_sd_dir, data, tmp_path):
    with pytest.raises(TrainConfigError, match=r"^aspect_buckets='yes' must be true or false$"):
        small_config(tiny_sd_dir, data, tmp_path, aspect_buckets="yes")
