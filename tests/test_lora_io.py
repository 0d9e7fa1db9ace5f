"""LoRA files: diffusers and kohya exports load through diffusers at the trained strength."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from shoelib.lora_io import (
    DIFFUSERS_WEIGHT_NAME,
    LORA_TARGET_MODULES,
    LoraFileError,
    LoraMismatchError,
    apply_lora,
    check_lora_fits,
    kohya_name,
    lora_fingerprint,
    peft_lora_state_dict,
    read_header,
    save_diffusers_lora,
    save_kohya_lora,
    to_kohya,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RANK, ALPHA = 4, 8.0  # alpha != rank: a loader that ignores alpha gets half the effect
PROMPT = "a professional product photo of black casual shoes"
SEED = 7




def load_pipe(model_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model_dir, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def draw(pipe) -> np.ndarray:
    return pipe(PROMPT, num_inference_steps=3, guidance_scale=7.5, height=64, width=64,
                generator=torch.Generator().manual_seed(SEED), output_type="np").images[0]


@pytest.fixture(scope="module")
def lora_pipe(tiny_sd_dir):
    """A pipeline whose UNet carries a PEFT LoRA with non-zero weights (as after training)."""
    from peft import LoraConfig

    pipe = load_pipe(tiny_sd_dir)
    base = draw(pipe)
    torch.manual_seed(0)
    pipe.unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, init_lora_weights="gaussian",
                                     target_modules=list(LORA_TARGET_MODULES)))
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:  # B starts at zero; give it an effect to preserve
                param.normal_(0, 0.3)
    return pipe, base, draw(pipe)


@pytest.fixture(scope="module")
def exported(lora_pipe, tmp_path_factory):
    pipe, _, _ = lora_pipe
    folder = tmp_path_factory.mktemp("lora")
    return (save_diffusers_lora(pipe.unet, folder / DIFFUSERS_WEIGHT_NAME),
            save_kohya_lora(pipe.unet, ALPHA, folder / "lora_kohya.safetensors",
                            {"ss_network_dim": RANK, "ss_sd_model_name": "tiny-sd"}))


def test_the_lora_changes_the_images(lora_pipe):
    _, base, trained = lora_pipe
    assert np.abs(base - trained).max() > 0.05  # otherwise the comparisons below prove nothing


def test_diffusers_file_loads_at_trained_strength(tiny_sd_dir, lora_pipe, exported):
    _, _, trained = lora_pipe
    fresh = load_pipe(tiny_sd_dir)
    fresh.load_lora_weights(str(exported[0].parent), weight_name=exported[0].name)
    np.testing.assert_allclose(draw(fresh), trained, atol=1e-5)


def test_both_files_can_be_read_by_others_like_any_written_file(exported):
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    for path in exported:  # safetensors alone would leave them 0600
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name


def test_diffusers_file_carries_rank_and_alpha(exported):
    header = read_header(exported[0])
    meta = json.loads(header["lora_adapter_metadata"])
    assert meta["unet.r"] == RANK and meta["unet.lora_alpha"] == ALPHA
    # sorted, not a set's per-process order: the same LoRA must mean the same header
    assert meta["unet.target_modules"] == sorted(LORA_TARGET_MODULES)
    keys = load_file(str(exported[0]))
    assert keys and all(k.startswith("unet.") and ".lora." in k for k in keys)


def test_without_adapter_metadata_diffusers_would_halve_the_effect(tiny_sd_dir, lora_pipe,
                                                                   exported, tmp_path):
    """Why the metadata matters: the same weights without it load at alpha = rank."""
    _, base, trained = lora_pipe
    bare = tmp_path / DIFFUSERS_WEIGHT_NAME
    save_file(load_file(str(exported[0])), str(bare))  # same tensors, no header
    fresh = load_pipe(tiny_sd_dir)
    fresh.load_lora_weights(str(tmp_path), weight_name=bare.name)
    halved = draw(fresh)
    assert np.abs(halved - trained).max() > 1e-3
    assert np.abs(halved - base).max() > 1e-3


def test_kohya_file_has_kohya_keys_alpha_and_header(exported, lora_pipe):
    pipe, _, _ = lora_pipe
    tensors = load_file(str(exported[1]))
    module = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"
    name = kohya_name(module)
    assert name == "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0"
    assert tensors[f"{name}.alpha"].item() == ALPHA
    peft_state = peft_lora_state_dict(pipe.unet)
    torch.testing.assert_close(tensors[f"{name}.lora_down.weight"],
                               peft_state[f"{module}.lora_A.weight"])
    torch.testing.assert_close(tensors[f"{name}.lora_up.weight"],
                               peft_state[f"{module}.lora_B.weight"])
    assert len(tensors) == 3 * len(peft_state) // 2  # down + up + alpha per layer
    with safe_open(str(exported[1]), framework="pt") as f:
        assert f.metadata()["ss_network_dim"] == str(RANK)


def test_kohya_file_loads_through_diffusers_at_trained_strength(tiny_sd_dir, lora_pipe, exported):
    _, _, trained = lora_pipe
    fresh = load_pipe(tiny_sd_dir)
    fresh.load_lora_weights(str(exported[1].parent), weight_name=exported[1].name)
    np.testing.assert_allclose(draw(fresh), trained, atol=1e-5)


@pytest.mark.parametrize("which", [0, 1], ids=["diffusers", "kohya"])
def test_apply_lora_strength(tiny_sd_dir, lora_pipe, exported, which):
    _, base, trained = lora_pipe
    pipe = load_pipe(tiny_sd_dir)
    apply_lora(pipe, exported[which], strength=1.0)
    np.testing.assert_allclose(draw(pipe), trained, atol=1e-5)
    apply_lora(pipe, exported[which], strength=0.0)  # applying again replaces, not stacks
    np.testing.assert_allclose(draw(pipe), base, atol=1e-5)


def test_apply_lora_names_a_different_base_model(tiny_sd_dir, exported, tmp_path):
    tensors = load_file(str(exported[1]))
    name = kohya_name("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q")
    tensors[f"{name}.lora_down.weight"] = torch.zeros(RANK, 320)  # SD 1.5 width, not tiny's 32
    wrong = tmp_path / "other_model.safetensors"
    save_file(tensors, str(wrong), metadata={"ss_sd_model_name": "some-sdxl-model"})
    pipe = load_pipe(tiny_sd_dir)
    with pytest.raises(LoraMismatchError, match="trained for a different base model") as err:
        apply_lora(pipe, wrong)
    assert "attn1_to_q" in str(err.value) and "some-sdxl-model" in str(err.value)
    assert not pipe.get_list_adapters()  # nothing half-loaded


def test_check_lora_fits_rejects_layers_the_model_lacks(tiny_sd_dir, exported, tmp_path):
    tensors = load_file(str(exported[0]))
    tensors["unet.down_blocks.7.attentions.0.proj_in.lora.down.weight"] = torch.zeros(RANK, 32)
    tensors["unet.down_blocks.7.attentions.0.proj_in.lora.up.weight"] = torch.zeros(32, RANK)
    odd = tmp_path / "odd.safetensors"
    save_file(tensors, str(odd))
    pipe = load_pipe(tiny_sd_dir)
    assert check_lora_fits(exported[0], {"unet": pipe.unet}) == len(load_file(str(exported[0]))) // 2
    with pytest.raises(LoraMismatchError, match="no such layer"):
        check_lora_fits(odd, {"unet": pipe.unet})


def test_apply_lora_missing_file(tiny_sd_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        apply_lora(load_pipe(tiny_sd_dir), tmp_path / "nope.safetensors")


@pytest.mark.parametrize("content", [b"not a lora, just text\n" * 40, b"\x80\x02}q\x00.", b""])
def test_a_file_that_is_not_safetensors_is_named_as_not_a_lora(tiny_sd_dir, tmp_path, content):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(content)
    pipe = load_pipe(tiny_sd_dir)
    for call in (lambda: read_header(path), lambda: lora_fingerprint(path),
                 lambda: check_lora_fits(path, {"unet": pipe.unet}), lambda: apply_lora(pipe, path)):
        with pytest.raises(LoraFileError, match=rf"^{path} is not a LoRA: it cannot be read as a "
                                                r"\.safetensors file \(.+\); pass the "):
            call()


def test_to_kohya_pairs_every_module():
    state = {"a.to_q.lora_A.weight": torch.ones(2, 3), "a.to_q.lora_B.weight": torch.ones(3, 2)}
    out = to_kohya(state, alpha=4)
    assert set(out) == {"lora_unet_a_to_q.lora_down.weight", "lora_unet_a_to_q.lora_up.weight",
                        "lora_unet_a_to_q.alpha"}


def test_sd15_unet_lora_has_the_expected_parameter_count():
    """The README's count: rank 8 on to_q/to_k/to_v/to_out.0 of the SD 1.5 UNet (diffusers'
    UNet2DConditionModel with SD 1.5's unet/config.json shapes) is 1,594,368 parameters."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    with torch.device("meta"):  # shapes only: no 3.4 GB of weights
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    unet.add_adapter(LoraConfig(r=8, lora_alpha=16, target_modules=list(LORA_TARGET_MODULES)))
    assert sum(p.numel() for p in unet.parameters()) - 859_520_964 == 1_594_368
    assert sum(p.numel() for p in unet.parameters() if p.requires_grad) == 1_594_368


def _raw_safetensors(path, tensors, metadata):
    """A safetensors file whose header keys are written in exactly the given order."""
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name, tensor in tensors.items():
        blob = tensor.contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + b"".join(blobs))
    return path


def test_fingerprint_ignores_header_order_but_not_meaning(tmp_path):
    a, b = torch.arange(6.0).reshape(2, 3), torch.ones(2)
    meta = {"ss_network_alpha": "16", "ss_network_dim": "8"}
    one = _raw_safetensors(tmp_path / "1.safetensors", {"a": a, "b": b}, meta)
    two = _raw_safetensors(tmp_path / "2.safetensors", {"b": b, "a": a}, dict(reversed(meta.items())))
    assert one.read_bytes() != two.read_bytes()
    assert lora_fingerprint(one) == lora_fingerprint(two)
    other_alpha = _raw_safetensors(tmp_path / "3.safetensors", {"a": a, "b": b},
                                   {**meta, "ss_network_alpha": "8"})
    other_weight = _raw_safetensors(tmp_path / "4.safetensors", {"a": a + 1e-3, "b": b}, meta)
    assert len({lora_fingerprint(p) for p in (one, other_alpha, other_weight)}) == 3
