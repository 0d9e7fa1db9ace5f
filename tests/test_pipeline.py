"""Loading SD from folder / single file / hub id, input errors, and the guarded generation."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shoelib.device import DevicePolicy, choose_policy, cpu_generator
from shoelib.paths import PROJECT_ROOT
from shoelib.pipeline import (
    GenerationSettingsError,
    ModelNotFoundError,
    check_generation_settings,
    check_image,
    describe_model_source,
    generate_checked,
    load_pipeline,
    timing_summary,
)

PROMPT = ("A professional product photo of black casual shoes, summer collection, men, "
          "centered on white background, high quality, product photography")
SETTINGS = {"steps": 2, "resolution": 64, "guidance_scale": 7.5}


@pytest.fixture(scope="module")
def cpu_policy() -> DevicePolicy:
    return choose_policy("cpu")


def bf16_policy() -> DevicePolicy:
    """Half precision simulated on CPU (bf16 kernels exist on every x86/ARM CPU in torch)."""
    with pytest.warns(UserWarning, match="bfloat16 on CPU"):
        return choose_policy("cpu", "bfloat16")


def load(model, policy, **kwargs):
    pipe = load_pipeline(model, policy, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


# --- a single-file (original LDM layout) checkpoint of the tiny model, for from_single_file

_RESNET_TO_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                  "norm2": "out_layers.0", "conv2": "out_layers.3",
                  "conv_shortcut": "skip_connection"}
_VAE_RESNET_TO_LDM = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
                         "to_out.0": "proj_out"}


def _rename_head(rest: str, names: dict[str, str]) -> str:
    head, _, tail = rest.partition(".")
    return f"{names.get(head, head)}.{tail}"


def unet_key_to_ldm(key: str, layers: int, up_blocks_with_attention: set[int]) -> str:
    """diffusers UNet2DConditionModel key -> `model.diffusion_model.` key of an SD 1.x file.

    LDM numbers the blocks flat: input_blocks.0 is conv_in, then each down block has
    `layers` (resnet[, attention]) slots plus a downsampler slot; each up block has
    `layers + 1` slots, the upsampler riding in the last one.
    """
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for old, new in fixed.items():
        if key.startswith(old + "."):
            return new + key[len(old):]
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        slot = 1 + int(m[1]) * (layers + 1) + int(m[3])
        if m[2] == "resnets":
            return f"input_blocks.{slot}.0.{_rename_head(m[4], _RESNET_TO_LDM)}"
        return f"input_blocks.{slot}.1.{m[4]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{1 + int(m[1]) * (layers + 1) + layers}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_rename_head(m[2], _RESNET_TO_LDM)}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        slot = int(m[1]) * (layers + 1) + int(m[3])
        if m[2] == "resnets":
            return f"output_blocks.{slot}.0.{_rename_head(m[4], _RESNET_TO_LDM)}"
        return f"output_blocks.{slot}.1.{m[4]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        block = int(m[1])
        index = 2 if block in up_blocks_with_attention else 1
        return f"output_blocks.{block * (layers + 1) + layers}.{index}.conv.{m[2]}"
    raise KeyError(f"no LDM name for UNet key {key}")


def vae_key_to_ldm(key: str, n_blocks: int) -> str:
    """diffusers AutoencoderKL key -> `first_stage_model.` key (decoder blocks run reversed)."""
    part, _, key = key.partition(".")
    if part in ("quant_conv", "post_quant_conv") or key.startswith(("conv_in.", "conv_out.")):
        return f"{part}.{key}"
    if key.startswith("conv_norm_out."):
        return f"{part}.norm_out.{key.split('.', 1)[1]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"{part}.down.{m[1]}.block.{m[2]}.{_rename_head(m[3], _VAE_RESNET_TO_LDM)}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"{part}.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        block = n_blocks - 1 - int(m[1])
        return f"{part}.up.{block}.block.{m[2]}.{_rename_head(m[3], _VAE_RESNET_TO_LDM)}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"{part}.up.{n_blocks - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{part}.mid.block_{int(m[1]) + 1}.{_rename_head(m[2], _VAE_RESNET_TO_LDM)}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
        return f"{part}.mid.attn_1.{_VAE_ATTENTION_TO_LDM[m[1]]}.{m[2]}"
    raise KeyError(f"no LDM name for VAE key {key}")


def ldm_state_dict(pipe) -> dict[str, torch.Tensor]:
    """The pipeline's weights in the single-file layout of the original SD 1.x checkpoints."""
    unet = pipe.unet.state_dict()
    up_attention = {int(k.split(".")[1]) for k in unet
                    if k.startswith("up_blocks.") and ".attentions." in k}
    out = {"model.diffusion_model." + unet_key_to_ldm(k, pipe.unet.config.layers_per_block,
                                                      up_attention): v for k, v in unet.items()}
    n_blocks = len(pipe.vae.config.down_block_types)
    for key, value in pipe.vae.state_dict().items():
        name = vae_key_to_ldm(key, n_blocks)
        if re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", name):
            value = value[:, :, None, None]  # LDM's VAE attention is made of 1x1 convolutions
        out["first_stage_model." + name] = value
    for key, value in pipe.text_encoder.state_dict().items():
        key = key if key.startswith("text_model.") else "text_model." + key
        out["cond_stage_model.transformer." + key] = value
    return {k: v.contiguous() for k, v in out.items()}


@pytest.fixture(scope="module")
def other_tiny(tmp_path_factory) -> Path:
    """A second tiny model with different weights (seed 1) than `tiny_sd_dir` (seed 0)."""
    from shoelib.tiny_sd import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd-seed1", seed=1)


@pytest.fixture(scope="module")
def single_file(other_tiny, tmp_path_factory) -> Path:
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    pipe = StableDiffusionPipeline.from_pretrained(other_tiny)
    path = tmp_path_factory.mktemp("single") / "tiny-sd.safetensors"
    save_file(ldm_state_dict(pipe), str(path))
    return path


# --- model sources and input errors

def test_describe_model_source_kinds(tiny_sd_dir, single_file):
    assert describe_model_source("stable-diffusion-v1-5/stable-diffusion-v1-5").kind == "hub"
    folder = describe_model_source(tiny_sd_dir)
    assert (folder.kind, folder.location) == ("folder", str(tiny_sd_dir.resolve()))
    single = describe_model_source(single_file, local_config=tiny_sd_dir)
    assert (single.kind, single.config) == ("single_file", tiny_sd_dir.resolve())


def test_relative_paths_are_project_relative(tiny_sd_dir):
    relative = os.path.relpath(tiny_sd_dir, PROJECT_ROOT)
    assert describe_model_source(relative).location == str(tiny_sd_dir.resolve())


@pytest.mark.parametrize("model", ["data/nothing/here", "./sd15", "/no/such/model",
                                   "models/sd.safetensors"])
def test_missing_path_is_named(model, cpu_policy):
    with pytest.raises(ModelNotFoundError, match=rf"model={re.escape(repr(model))}.*does not exist"):
        load_pipeline(model, cpu_policy)


def test_folder_without_model_index(tmp_path, cpu_policy):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelNotFoundError, match="has no model_index.json"):
        load_pipeline(tmp_path, cpu_policy)


def test_file_that_is_not_a_checkpoint(tmp_path, cpu_policy):
    path = tmp_path / "weights.txt"
    path.write_text("x")
    with pytest.raises(ModelNotFoundError, match=r"not \.safetensors or \.ckpt"):
        load_pipeline(path, cpu_policy)


def test_single_file_without_config_explains(single_file, cpu_policy):
    with pytest.raises(ModelNotFoundError, match=r"local_config=.*hf download"):
        load_pipeline(single_file, cpu_policy)


def test_single_file_config_must_be_a_diffusers_folder(single_file, tmp_path, cpu_policy):
    with pytest.raises(ModelNotFoundError, match=r"local_config=.*no model_index.json"):
        load_pipeline(single_file, cpu_policy, local_config=tmp_path)


def test_errors_are_file_not_found_and_value_errors():
    assert issubclass(ModelNotFoundError, FileNotFoundError)
    assert issubclass(GenerationSettingsError, ValueError)


def test_hub_id_offline_without_cache_explains_how_to_download(tmp_path):
    """A fresh process with HF_HUB_OFFLINE=1 and an empty HF_HOME, as on an offline laptop."""
    code = ("from shoelib.device import choose_policy\n"
            "from shoelib.pipeline import load_pipeline, ModelNotFoundError\n"
            "try:\n"
            "    load_pipeline('stable-diffusion-v1-5/stable-diffusion-v1-5', choose_policy('cpu'))\n"
            "except ModelNotFoundError as err:\n"
            "    print('ERROR:', err)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, cwd=PROJECT_ROOT)
    message = done.stdout.split("ERROR:", 1)[-1]
    assert "ERROR:" in done.stdout, done.stderr[-2000:]
    assert "hf download stable-diffusion-v1-5/stable-diffusion-v1-5" in message
    assert "huggingface-cli download" in message
    assert "offline mode" in message  # the underlying cause is kept


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"resolution": 500, "steps": 4}, "resolution=500 is not a positive multiple of 8; use 504"),
    ({"resolution": 0, "steps": 4}, "resolution=0"),
    ({"resolution": 64.0, "steps": 4}, "resolution=64.0"),
    ({"resolution": 64, "steps": 0}, "inference_steps=0 must be a whole number >= 1"),
    ({"resolution": 64, "steps": -3}, "inference_steps=-3"),
    ({"resolution": 64, "steps": 2.5}, "inference_steps=2.5"),
    ({"resolution": 64, "steps": 4, "guidance_scale": -1.0}, "guidance_scale=-1.0"),
])
def test_bad_generation_settings(kwargs, words):
    with pytest.raises(GenerationSettingsError, match=re.escape(words)):
        check_generation_settings(**kwargs)


def test_generate_checked_rejects_settings_before_touching_the_pipeline(cpu_policy):
    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"pipeline used ({name}) before the inputs were checked")

    with pytest.raises(GenerationSettingsError, match="resolution=100"):
        generate_checked(Untouchable(), PROMPT, 0, steps=4, resolution=100, policy=cpu_policy)


# --- loading

def test_folder_load_follows_the_policy(tiny_sd_dir):
    policy = bf16_policy()
    pipe = load(tiny_sd_dir, policy)
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.bfloat16
    assert pipe.device.type == "cpu"
    assert pipe.safety_checker is None


def test_attention_slicing_applied_per_policy(tiny_sd_dir, cpu_policy):
    from diffusers.models.attention_processor import SlicedAttnProcessor

    sliced = DevicePolicy("cpu", torch.float32, "test", attention_slicing=True)
    processors = load(tiny_sd_dir, sliced).unet.attn_processors.values()
    assert all(isinstance(p, SlicedAttnProcessor) for p in processors)
    plain = load(tiny_sd_dir, cpu_policy).unet.attn_processors.values()
    assert not any(isinstance(p, SlicedAttnProcessor) for p in plain)


def test_safety_checker_requested_but_absent_warns(tiny_sd_dir, cpu_policy):
    with pytest.warns(UserWarning, match="has no safety checker"):
        load(tiny_sd_dir, cpu_policy, safety_checker=True)


def test_ldm_export_matches_diffusers_own_single_file_converters(other_tiny):
    """The test checkpoint is right if diffusers' LDM->diffusers converters invert it exactly."""
    from diffusers import StableDiffusionPipeline
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    pipe = StableDiffusionPipeline.from_pretrained(other_tiny)
    ldm = ldm_state_dict(pipe)
    pairs = [(convert_ldm_unet_checkpoint(ldm, dict(pipe.unet.config)), pipe.unet.state_dict()),
             (convert_ldm_vae_checkpoint(ldm, dict(pipe.vae.config)), pipe.vae.state_dict())]
    clip = convert_ldm_clip_checkpoint(ldm)
    pairs.append(({k.removeprefix("text_model."): v for k, v in clip.items()},
                  pipe.text_encoder.state_dict()))
    for converted, original in pairs:
        assert set(converted) == set(original)
        assert all(torch.equal(converted[k], original[k]) for k in original)


def test_single_file_loads_its_own_weights_and_matches_the_folder(single_file, other_tiny,
                                                                  tiny_sd_dir, cpu_policy):
    """Configs come from tiny_sd_dir (seed 0), weights from the file (seed 1)."""
    from_file = load(single_file, cpu_policy, local_config=tiny_sd_dir)
    from_folder = load(other_tiny, cpu_policy)
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(from_file, name).state_dict(), getattr(from_folder, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in b), name
    a = generate_checked(from_file, PROMPT, 3, policy=cpu_policy, **SETTINGS)
    b = generate_checked(from_folder, PROMPT, 3, policy=cpu_policy, **SETTINGS)
    assert np.array_equal(pixels(a.image), pixels(b.image))
    seed0 = generate_checked(load(tiny_sd_dir, cpu_policy), PROMPT, 3, policy=cpu_policy,
                             **SETTINGS)
    assert not np.array_equal(pixels(a.image), pixels(seed0.image))


# --- guarded generation

def test_same_seed_same_image_across_two_loads(tiny_sd_dir, cpu_policy):
    first = generate_checked(load(tiny_sd_dir, cpu_policy), PROMPT, 11, policy=cpu_policy,
                             **SETTINGS)
    second_pipe = load(tiny_sd_dir, cpu_policy)
    second = generate_checked(second_pipe, PROMPT, 11, policy=cpu_policy, **SETTINGS)
    assert np.array_equal(pixels(first.image), pixels(second.image))
    other_seed = generate_checked(second_pipe, PROMPT, 12, policy=cpu_policy, **SETTINGS)
    assert not np.array_equal(pixels(first.image), pixels(other_seed.image))
    assert first.verdict.ok and not first.fp32_retry and first.dtype == "float32"
    assert first.image.size == (64, 64)


def test_ancestral_sampler_is_reproducible_from_the_seed(tiny_sd_dir, cpu_policy):
    """Euler a adds noise at every step: it must come from the seed, not the global RNG."""
    from diffusers import EulerAncestralDiscreteScheduler

    pipe = load(tiny_sd_dir, cpu_policy)
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    torch.manual_seed(0)
    first = generate_checked(pipe, PROMPT, 8, policy=cpu_policy, **SETTINGS)
    torch.manual_seed(1)
    again = generate_checked(pipe, PROMPT, 8, policy=cpu_policy, **SETTINGS)
    assert np.array_equal(pixels(first.image), pixels(again.image))


def test_matches_the_plain_diffusers_call_with_a_cpu_generator(tiny_sd_dir, cpu_policy):
    """Capturing latents and decoding them ourselves changes nothing in the image."""
    pipe = load(tiny_sd_dir, cpu_policy)
    ours = generate_checked(pipe, PROMPT, 5, policy=cpu_policy, negative_prompt="blurry",
                            **SETTINGS)
    reference = pipe(PROMPT, negative_prompt="blurry", height=64, width=64,
                     num_inference_steps=2, guidance_scale=7.5,
                     generator=cpu_generator(5)).images[0]
    assert np.array_equal(pixels(ours.image), pixels(reference))


def _nan_unet_in_half(module, args, output):
    """UNet forward hook: NaN noise predictions whenever the UNet runs in half precision."""
    if module.dtype in (torch.float16, torch.bfloat16):
        return (torch.full_like(output[0], float("nan")),)
    return output


def test_nan_latents_in_half_precision_retry_in_float32(tiny_sd_dir, cpu_policy):
    policy = bf16_policy()
    pipe = load(tiny_sd_dir, policy)
    pipe.unet.register_forward_hook(_nan_unet_in_half)
    result = generate_checked(pipe, PROMPT, 9, policy=policy, **SETTINGS)
    assert result.fp32_retry and result.verdict.ok and result.dtype == "float32"
    assert result.first_verdict.problem == "nonfinite_latents"
    assert result.first_verdict.nonfinite_latents == 4 * 8 * 8
    assert result.first_nonfinite_step == 0
    assert result.label.startswith("seed 9: ok (fp32 retry)\n") and "float32" in result.label
    assert pipe.unet.dtype == pipe.vae.dtype == torch.float32  # stays so for the next images
    # The retry is the float32 image of the same seed, up to the bf16 rounding of the weights.
    clean = generate_checked(load(tiny_sd_dir, cpu_policy), PROMPT, 9, policy=cpu_policy,
                             **SETTINGS)
    diff = np.abs(pixels(result.image) - pixels(clean.image))
    assert diff.max() <= 4 and diff.mean() < 0.5


def test_batch_retries_only_its_failed_images_in_float32(tiny_sd_dir, cpu_policy):
    from shoelib.pipeline import generate_checked_batch

    policy = bf16_policy()
    pipe = load(tiny_sd_dir, policy)

    def nan_for_image_1_in_half(module, args, output):
        # Classifier-free guidance stacks (unconditional, conditional): rows 1 and 3 are image 1.
        if module.dtype == torch.bfloat16:
            out = output[0].clone()
            out[1::2] = float("nan")
            return (out,)
        return output

    pipe.unet.register_forward_hook(nan_for_image_1_in_half)
    first, second = generate_checked_batch(pipe, [PROMPT, PROMPT], [9, 10], policy=policy,
                                           **SETTINGS)
    assert first.verdict.ok and not first.fp32_retry and first.dtype == "bfloat16"
    assert first.first_nonfinite_step is None
    assert second.verdict.ok and second.fp32_retry and second.dtype == "float32"
    assert second.first_verdict.problem == "nonfinite_latents"
    assert second.first_nonfinite_step == 0 and second.seed == 10
    # The retry is the image of its own seed, as a float32 render of seed 10 alone gives it.
    clean = generate_checked(load(tiny_sd_dir, cpu_policy), PROMPT, 10, policy=cpu_policy,
                             **SETTINGS)
    assert np.abs(pixels(second.image) - pixels(clean.image)).max() <= 4


def test_batch_needs_one_seed_per_prompt(tiny_sd_dir, cpu_policy):
    from shoelib.pipeline import generate_checked_batch

    with pytest.raises(ValueError, match="2 prompts and 1 seeds"):
        generate_checked_batch(None, [PROMPT, PROMPT], [1], policy=cpu_policy, **SETTINGS)


def test_nan_latents_in_float32_are_reported_not_retried(tiny_sd_dir, cpu_policy):
    pipe = load(tiny_sd_dir, cpu_policy)
    pipe.unet.register_forward_hook(lambda m, a, out: (torch.full_like(out[0], float("nan")),))
    result = generate_checked(pipe, PROMPT, 9, policy=cpu_policy, **SETTINGS)
    assert not result.verdict.ok and not result.fp32_retry
    assert result.verdict.problem == "nonfinite_latents"
    assert result.first_nonfinite_step == 0
    assert pixels(result.image).max() == 0  # NaN pixels are shown black


def constant_decoder(pipe, value: float, only_in_half: bool):
    """A replacement for `pipe.vae.decode` giving a constant image (value in [-1, 1] units)."""
    real_decode = pipe.vae.decode

    def decode(z, return_dict=True, **kwargs):
        out = real_decode(z, return_dict=False, **kwargs)[0]
        if only_in_half and pipe.vae.dtype == torch.float32:
            return (out,)
        return (torch.full_like(out, value),)

    return decode


@pytest.mark.parametrize(("value", "problem"), [(-1.0, "black"), (-0.2, "constant"),
                                                (float("nan"), "nonfinite_pixels")])
def test_bad_decoded_images_in_half_precision_retry(tiny_sd_dir, monkeypatch, value, problem):
    policy = bf16_policy()
    pipe = load(tiny_sd_dir, policy)
    monkeypatch.setattr(pipe.vae, "decode",
                        constant_decoder(pipe, value, only_in_half=True))
    result = generate_checked(pipe, PROMPT, 4, policy=policy, **SETTINGS)
    assert result.fp32_retry and result.verdict.ok
    assert result.first_verdict.problem == problem
    assert result.first_verdict.nonfinite_latents == 0  # the latents were fine


def test_failure_that_persists_in_float32_is_reported(tiny_sd_dir, monkeypatch):
    policy = bf16_policy()
    pipe = load(tiny_sd_dir, policy)
    monkeypatch.setattr(pipe.vae, "decode",
                        constant_decoder(pipe, -1.0, only_in_half=False))
    result = generate_checked(pipe, PROMPT, 4, policy=policy, **SETTINGS)
    assert result.fp32_retry and not result.verdict.ok
    assert result.verdict.problem == result.first_verdict.problem == "black"
    record = result.record()
    json.dumps(record)  # summary.json-ready
    assert record["verdict"]["problem"] == "black" and record["fp32_retry"] is True


def flag_everything(images, clip_input):
    """Stands in for the NSFW safety checker: flags every image and zeroes it, as it does."""
    return torch.zeros_like(images), [True] * len(images)


def test_safety_checker_black_is_reported_and_not_retried(tiny_sd_dir):
    from transformers import BatchFeature

    policy = bf16_policy()
    pipe = load(tiny_sd_dir, policy)
    pipe.safety_checker = flag_everything
    pipe.feature_extractor = lambda images, return_tensors: BatchFeature(
        {"pixel_values": torch.zeros(len(images), 3, 8, 8)})
    result = generate_checked(pipe, PROMPT, 1, policy=policy, **SETTINGS)
    assert result.nsfw is True and not result.fp32_retry
    assert result.verdict.problem == "safety_checker" and not result.verdict.ok
    assert pixels(result.image).max() == 0  # black, as diffusers returns it
    assert pipe.unet.dtype == torch.bfloat16  # no float32 conversion for a deliberate black


def test_prompt_playground_generates_a_checked_image_on_click(tiny_sd_dir, cpu_policy):
    from shoelib.pipeline import prompt_playground

    play = prompt_playground(load(tiny_sd_dir, cpu_policy), cpu_policy, steps=2, resolution=64,
                             guidance_scale=7.5, seed=3)
    assert play.prompt.value.startswith("A professional product photo") and play.seed.value == 3
    play.button.click()
    play.wait(300)
    assert play.status.value.startswith("ok in ")
    assert [(r.seed, r.verdict.reason) for r in play.results] == [(3, "finite, not black, not flat")]


# --- check_image on its own

def _product_photo(dark: bool) -> np.ndarray:
    """A white background with a (black or grey) rectangle 'shoe' in the middle, uint8."""
    image = np.full((64, 64, 3), 250, np.uint8)
    image[20:44, 12:52] = 5 if dark else 120
    return image


def test_check_image_accepts_real_looking_images():
    for dark in (True, False):
        verdict = check_image(torch.randn(1, 4, 8, 8), _product_photo(dark))
        assert verdict.ok and verdict.problem == "ok"
        assert verdict.nonfinite_pixels == 0 and verdict.nonfinite_latents == 0


def test_check_image_problems_in_order():
    latents = torch.randn(1, 4, 8, 8)
    nan_latents = latents.clone()
    nan_latents[0, 0, 0, 0] = float("inf")
    photo = _product_photo(dark=False)
    nan_pixels = photo.astype(np.float32) / 255
    nan_pixels[0, 0, 0] = np.nan
    assert check_image(nan_latents, photo).problem == "nonfinite_latents"
    assert check_image(latents, nan_pixels).problem == "nonfinite_pixels"
    assert check_image(None, np.zeros((64, 64, 3), np.uint8)).problem == "black"
    assert check_image(None, Image.new("RGB", (64, 64))).problem == "black"
    almost_black = np.zeros((64, 64, 3), np.uint8)
    almost_black[0, :3] = 255  # a few stray pixels do not make it an image
    assert check_image(None, almost_black).problem == "black"
    assert check_image(None, np.full((64, 64, 3), 0.7)).problem == "constant"
    grey = check_image(None, torch.full((3, 64, 64), 0.5))  # CHW tensors are accepted too
    assert grey.problem == "constant" and grey.pixel_std == 0
    assert check_image(latents, photo).latent_std == pytest.approx(float(latents.std()))


def test_timing_summary_separates_the_first_image():
    assert timing_summary([5.0, 1.0, 3.0, 2.0]) == {"seconds_first": 5.0, "seconds_steady": 2.0,
                                                    "n": 4}
    assert timing_summary([4.0])["seconds_steady"] is None
    assert timing_summary([])["n"] == 0


@pytest.mark.parametrize(("resolution", "fix"), [(100, 104), (500, 504), (3, 8), (61.5, 64),
                                                  ("abc", 512), (float("nan"), 512)])
def test_training_and_generation_give_one_resolution_hint(resolution, fix, tmp_path):
    from shoelib.train import TrainConfig, TrainConfigError

    with pytest.raises(GenerationSettingsError) as generation:
        check_generation_settings(resolution=resolution, steps=4)
    with pytest.raises(TrainConfigError) as training:
        TrainConfig(model="m", train_dir=str(tmp_path), output_dir=str(tmp_path),
                    cache_dir=str(tmp_path), resolution=resolution)
    assert str(generation.value) == str(training.value)
    assert str(generation.value) == f"resolution={resolution!r} is not a positive multiple of 8; use {fix}"


QUIET_RUN = """
import sys
from shoelib.device import choose_policy
from shoelib.pipeline import generate_checked, load_pipeline
policy = choose_policy("cpu")
pipe = load_pipeline(sys.argv[1], policy)
pipe.set_progress_bar_config(disable=True)
long_prompt = " ".join(["black casual shoes"] * 40)
for seed in (0, 1):  # the playground: the same long prompt twice
    generate_checked(pipe, long_prompt, seed, steps=2, resolution=64, policy=policy)
generate_checked(pipe, "black casual shoes", 2, steps=2, resolution=64, policy=policy)
"""


def test_long_prompt_says_one_line_and_known_library_noise_is_gone(tiny_sd_dir):
    """A prompt over 77 tokens gives one line per generation, not the tokenizer's false
    "indexing errors" and diffusers' token dump; the torchvision fallback notice is gone."""
    done = subprocess.run([sys.executable, "-c", QUIET_RUN, str(tiny_sd_dir)],
                          env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = (done.stdout + done.stderr).splitlines()
    assert [line for line in lines if "truncated" in line] == [
        "prompt truncated to 77 tokens (122 given)"] * 2
    assert not [line for line in lines if "indexing errors" in line or "torchvision" in line]


def test_truncation_note_counts_the_prompts_cut(tiny_sd_dir):
    from transformers import CLIPTokenizer

    from shoelib.pipeline import truncation_note

    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd_dir / "tokenizer")
    long = " ".join(["black casual shoes"] * 40)
    assert truncation_note(tokenizer, ["black casual shoes"]) is None
    assert truncation_note(tokenizer, [long, "shoes", long + " shoes"]) == (
        "2 of 3 prompts truncated to 77 tokens (up to 123 given)")


def test_playground_disables_generate_refuses_queued_clicks_and_keeps_the_last_results():
    import io
    import threading

    from shoelib.pipeline import GeneratedImage, Playground, Verdict

    release, started = threading.Event(), threading.Event()
    calls = []

    def generate(prompt, seed):
        calls.append((prompt, seed))
        started.set()
        assert release.wait(30)
        verdict = Verdict(True, "ok", "looks fine", 0.5, 0.2, 0.0, 1.0, 0)
        return GeneratedImage(prompt=prompt, seed=seed, image=Image.new("RGB", (64, 64), "red"),
                              verdict=verdict, seconds=0.5, dtype="float32")

    play = Playground(generate, prompt="red <b>shoes</b>", seed=7, keep=2, display_px=256,
                      prompt_note=lambda p: "prompt truncated to 77 tokens (80 given)")
    assert play.prompt.description == "prompt"  # the box is labelled
    assert play.click() is True
    assert started.wait(30)
    assert play.busy and play.button.disabled and "generating seed 7" in play.status.value
    assert play.click() is False and play.refused == 1  # refused, not queued
    release.set()
    play.wait(30)
    assert not play.button.disabled and play.button.description == "Generate"
    assert calls == [("red <b>shoes</b>", 7)]
    assert play.status.value == "ok in 0.5 s; prompt truncated to 77 tokens (80 given)"
    image, caption = play.history.children[0].children
    assert Image.open(io.BytesIO(image.value)).size == (256, 256)  # 64 px shown 4x larger
    assert "seed 7" in caption.value and "red &lt;b&gt;shoes&lt;/b&gt;" in caption.value
    assert "looks fine" in caption.value
    for seed in (8, 9):
        play.seed.value = seed
        assert play.click()
        play.wait(30)
    assert [r.seed for r in play.results] == [9, 8]  # the newest first, the last two kept
    assert len(play.history.children) == 2


def test_a_width_or_height_off_the_8_px_grid_is_named_before_rendering():
    from shoelib.device import choose_policy
    from shoelib.pipeline import GenerationSettingsError, generate_checked_batch

    for name, sizes, fix in (("width", {"width": 60}, "64"), ("height", {"height": 0}, "8")):
        with pytest.raises(GenerationSettingsError,
                           match=rf"^{name}={sizes[name]} is not a positive multiple of 8; use {fix}$"):
            generate_checked_batch(None, ["a shoe"], [1], steps=2, resolution=64,
                                   policy=choose_policy("cpu"), **sizes)
