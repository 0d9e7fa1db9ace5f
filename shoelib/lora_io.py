"""LoRA files: save the trained adapter in two formats, check a file fits a model, apply it.

Two formats, because two worlds use LoRAs:
- diffusers (`pytorch_lora_weights.safetensors`, keys `unet.<module>.lora.down/up.weight`),
  what `StableDiffusionPipeline.load_lora_weights` reads. diffusers assumes alpha = rank
  unless the file carries the adapter config in its header; with rank 8 / alpha 16 a file
  without it would load at half strength, so the PEFT config is always saved with it.
- kohya (`lora_unet_<module with _>.lora_down/lora_up.weight` + `.alpha`), what A1111,
  ComfyUI and kohya's scripts read (they cannot read diffusers keys for SD 1.5); diffusers
  reads it too. Training facts go in its header as kohya's `ss_*` fields.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from shoelib.io import atomic_path, plain_permissions

LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")
# The text encoder's attention projections, as diffusers' LoRA scripts train them.
TEXT_ENCODER_LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj")
DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
ADAPTER_NAME = "default"  # PEFT's name for the adapter `add_adapter` creates


class LoraMismatchError(ValueError):
    """A LoRA file whose layers do not exist, or have other shapes, in the model."""


class LoraFileError(ValueError):
    """A file given as a LoRA that is not a readable .safetensors file."""


# --- adding an adapter

def add_text_encoder_lora(text_encoder, lora_config, adapter_name: str = ADAPTER_NAME) -> None:
    """Add a PEFT LoRA adapter to a transformers text encoder, as `add_adapter` would.

    transformers' own `add_adapter`/`load_adapter` (which diffusers' `load_lora_weights`
    calls for text-encoder layers) refuse PEFT older than 0.22, newer than the pinned PEFT;
    PEFT itself injects the same layers. `peft_config` is set as transformers sets it, so
    that PEFT's state-dict helpers and diffusers' set_adapters/unload_lora_weights find it.
    """
    from peft import inject_adapter_in_model

    inject_adapter_in_model(lora_config, text_encoder, adapter_name=adapter_name)
    text_encoder.peft_config = {**(getattr(text_encoder, "peft_config", None) or {}),
                                adapter_name: lora_config}


# --- saving

def peft_lora_state_dict(model) -> dict[str, torch.Tensor]:
    """A model's (UNet's or text encoder's) LoRA weights, PEFT keys
    (`<module>.lora_A.weight`), float32 on CPU."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, adapter_name=ADAPTER_NAME)
    return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}


def _adapter_metadata(model) -> dict:
    # peft keeps target_modules as a set, whose order changes with every process's hash
    # seed: sorted, the same LoRA always gives the same bytes (06 resumes by file hash).
    return {k: sorted(v) if isinstance(v, set | frozenset) else v
            for k, v in model.peft_config[ADAPTER_NAME].to_dict().items()}


def save_diffusers_lora(unet, path: str | Path, text_encoder=None) -> Path:
    """Write the UNet's (and text encoder's) LoRA as a diffusers file that loads at the
    trained strength.

    Each adapter's PEFT config (rank, alpha, target modules) goes in the safetensors header
    (`unet_lora_adapter_metadata`, `text_encoder_lora_adapter_metadata`), which
    `load_lora_weights` turns back into the same LoraConfig, so the scale alpha / rank
    survives.

    Args:
        unet: the UNet with a PEFT LoRA adapter (`unet.add_adapter`), unwrapped.
        path: the file to write, normally `<folder>/pytorch_lora_weights.safetensors`.
        text_encoder: the text encoder with its LoRA adapter, unwrapped; None: UNet only.

    Returns:
        The path, written atomically.
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    layers = {"unet_lora_layers": convert_state_dict_to_diffusers(peft_lora_state_dict(unet)),
              "unet_lora_adapter_metadata": _adapter_metadata(unet)}
    if text_encoder is not None:
        layers["text_encoder_lora_layers"] = convert_state_dict_to_diffusers(
            peft_lora_state_dict(text_encoder))
        layers["text_encoder_lora_adapter_metadata"] = _adapter_metadata(text_encoder)
    # save_lora_weights writes into a folder: stage it beside the target, then rename.
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.stem}."))
    try:
        StableDiffusionPipeline.save_lora_weights(
            staging, weight_name=path.name, safe_serialization=True, **layers)
        plain_permissions(staging / path.name)  # safetensors writes 0600 files
        os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def kohya_name(module_path: str, prefix: str = "lora_unet") -> str:
    """'down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0' ->
    'lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0'.

    kohya trains SD 1.x on a UNet with diffusers' module names, so its keys are those names
    with dots replaced by underscores.
    """
    return f"{prefix}_{module_path.replace('.', '_')}"


def to_kohya(peft_state: Mapping[str, torch.Tensor], alpha: float,
             prefix: str = "lora_unet") -> dict[str, torch.Tensor]:
    """PEFT LoRA keys (`<module>.lora_A/B.weight`) -> kohya keys with one `.alpha` per module.

    Args:
        peft_state: from `peft_lora_state_dict`.
        alpha: the LoRA alpha (scale = alpha / rank at load time).
        prefix: "lora_unet" for the UNet, "lora_te" for SD 1.x's text encoder.
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in peft_state.items():
        module, _, kind = key.rpartition(".lora_")
        name = kohya_name(module, prefix)
        if kind == "magnitude_vector":
            # DoRA's magnitude per output feature: LyCORIS's `dora_scale`, shape (out, 1).
            out[f"{name}.dora_scale"] = tensor.reshape(-1, 1)
        else:
            out[f"{name}.lora_down.weight" if kind == "A.weight" else f"{name}.lora_up.weight"] = tensor
        out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


def save_kohya_lora(unet, alpha: float, path: str | Path,
                    metadata: Mapping[str, object] | None = None, text_encoder=None) -> Path:
    """Write the UNet's (and text encoder's) LoRA in kohya/A1111/ComfyUI format.

    Args:
        unet: the UNet with a PEFT LoRA adapter, unwrapped.
        alpha: the LoRA alpha it was trained with.
        path: the .safetensors file to write.
        metadata: training facts for the header (kohya's `ss_*` names); values become strings.
        text_encoder: the text encoder with its LoRA adapter (keys `lora_te_<module>`), or None.

    Returns:
        The path, written atomically.
    """
    tensors = to_kohya(peft_lora_state_dict(unet), alpha)
    if text_encoder is not None:
        # kohya, A1111 and ComfyUI name SD 1.x text-encoder modules from "text_model.".
        text = {module_spellings("text_encoder", k)[1] if not k.startswith("text_model.") else k: v
                for k, v in peft_lora_state_dict(text_encoder).items()}
        tensors.update(to_kohya(text, alpha, prefix="lora_te"))
    header = {str(k): str(v) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return Path(path)


@contextmanager
def _open(path: str | Path) -> Iterator:
    """safe_open for a LoRA file; a file that is not safetensors (text, a .ckpt, a truncated
    download) is named with the fix, instead of safetensors' "header too large"."""
    try:
        handle = safe_open(str(path), framework="pt")
    except SafetensorError as err:
        raise LoraFileError(
            f"{path} is not a LoRA: it cannot be read as a .safetensors file ({err}); pass the "
            f"{DIFFUSERS_WEIGHT_NAME} or lora_kohya.safetensors that 05_train_lora wrote, or "
            "a LoRA .safetensors from diffusers or kohya's scripts") from None
    with handle as f:
        yield f


def read_header(path: str | Path) -> dict[str, str]:
    """The safetensors header metadata of a LoRA file (empty dict if none).

    Raises:
        LoraFileError: the file is not a safetensors file.
    """
    with _open(path) as f:
        return dict(f.metadata() or {})


def lora_fingerprint(path: str | Path) -> str:
    """A sha256 of what a LoRA file means: its tensors and header metadata, in sorted order.

    Not the file's bytes: safetensors writes header metadata in a different key order in
    every process, so the same LoRA saved twice differs byte for byte.
    """
    digest = hashlib.sha256()
    with _open(path) as f:
        digest.update(json.dumps(f.metadata() or {}, sort_keys=True).encode())
        for key in sorted(f.keys()):
            tensor = f.get_tensor(key).contiguous()
            digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# --- checking a file against a model

# (component, module path, "down" | "up") from a LoRA key, for both formats.
_DIFFUSERS_KEY = re.compile(
    r"^(unet|text_encoder)\.(.+?)\.(?:lora\.(down|up)|lora_([AB])|lora_linear_layer\.(down|up))"
    r"\.weight$")
_KOHYA_KEY = re.compile(r"^(lora_unet|lora_te)_(.+)\.lora_(down|up)\.weight$")


def _lora_layers(path: Path, components: Mapping[str, torch.nn.Module]
                 ) -> dict[tuple[str, str], dict[str, tuple[int, ...]]]:
    """{(component, module path or kohya name): {"down": shape, "up": shape}} of a LoRA file."""
    layers: dict[tuple[str, str], dict[str, tuple[int, ...]]] = {}
    with _open(path) as f:
        for key in f.keys():
            shape = tuple(f.get_slice(key).get_shape())
            if m := _DIFFUSERS_KEY.match(key):
                component, module = m.group(1), m.group(2)
                side = m.group(3) or m.group(5) or {"A": "down", "B": "up"}[m.group(4)]
            elif m := _KOHYA_KEY.match(key):
                component = "unet" if m.group(1) == "lora_unet" else "text_encoder"
                module, side = m.group(2), m.group(3)
            else:
                continue  # .alpha, dora scales: no shape to check
            if component in components:
                layers.setdefault((component, module), {})[side] = shape
    return layers


def module_spellings(component: str, name: str) -> tuple[str, ...]:
    """The names LoRA files give a module: its path, kohya's path with "_" for ".", and, for
    the text encoder, both with the "text_model." level that SD 1.x LoRA files carry and
    transformers 5's CLIPTextModel no longer has."""
    names = [name]
    if component == "text_encoder" and not name.startswith("text_model."):
        names.append(f"text_model.{name}")
    return tuple(names) + tuple(n.replace(".", "_") for n in names)


def check_lora_fits(path: str | Path, components: Mapping[str, torch.nn.Module],
                    model_name: str = "this model") -> int:
    """Check every LoRA layer of a file exists in the model with matching shapes.

    diffusers only warns about LoRA keys it cannot place and fails with a bare size-mismatch
    error on wrong shapes; this says what is wrong before anything is loaded.

    Args:
        path: diffusers or kohya LoRA file.
        components: {"unet": pipe.unet, "text_encoder": pipe.text_encoder}.
        model_name: how to call the model in the error message.

    Returns:
        The number of LoRA layers checked.

    Raises:
        LoraMismatchError: no LoRA layers in the file, or layers missing / of another shape.
    """
    path = Path(path)
    layers = _lora_layers(path, components)
    if not layers:
        raise LoraMismatchError(
            f"{path} holds no UNet or text-encoder LoRA layers in diffusers or kohya format; "
            f"pass a file written by shoelib, diffusers or kohya's scripts")
    modules = {}
    for component, model in components.items():
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if ".lora_" in name or not isinstance(weight, torch.Tensor):
                continue
            # A layer that already holds a LoRA keeps its original weights in `base_layer`.
            name = name.removesuffix(".base_layer")
            if name:
                for spelling in module_spellings(component, name):
                    modules[(component, spelling)] = tuple(weight.shape)
    problems = []
    for (component, module), sides in sorted(layers.items()):
        target = modules.get((component, module))
        down, up = sides.get("down"), sides.get("up")
        if target is None:
            problems.append(f"{component}.{module}: no such layer in the model")
        elif down is None or up is None or down[1] != target[1] or up[0] != target[0]:
            lora_io = f"{down[1] if down else '?'}->{up[0] if up else '?'}"
            problems.append(f"{component}.{module}: LoRA maps {lora_io} features, the model's "
                            f"layer {target[1]}->{target[0]}")
    if problems:
        base = read_header(path).get("ss_sd_model_name")
        trained_on = f" (its header names base model {base!r})" if base else ""
        raise LoraMismatchError(
            f"this LoRA was trained for a different base model than {model_name}{trained_on}: "
            f"{len(problems)} of {len(layers)} layers do not fit, e.g. "
            + "; ".join(problems[:3])
            + ". Load the base model it was trained on, or a LoRA trained for this model.")
    return len(layers)


# --- applying

def apply_lora(pipe, lora_path: str | Path, strength: float = 1.0,
               adapter_name: str = "lora") -> str:
    """Load a diffusers- or kohya-format LoRA file into a pipeline at a given strength.

    Any LoRA applied before is removed first, so calling it again swaps LoRAs.

    Args:
        pipe: a StableDiffusionPipeline.
        lora_path: the .safetensors file.
        strength: multiplier on the trained effect (1.0 = as trained, 0 = base model).
        adapter_name: name of the adapter inside the pipeline.

    Returns:
        The adapter name.

    Raises:
        FileNotFoundError: no such file.
        LoraMismatchError: the file's layers do not fit this pipeline's model.
    """
    path = Path(lora_path)
    if not path.is_file():
        raise FileNotFoundError(f"lora_path={str(lora_path)!r} does not exist; pass the "
                                f"{DIFFUSERS_WEIGHT_NAME} or kohya .safetensors file notebook 05 wrote")
    components = {"unet": pipe.unet}
    if getattr(pipe, "text_encoder", None) is not None:
        components["text_encoder"] = pipe.text_encoder
    model_name = pipe.unet.config.get("_name_or_path") or "this model"
    check_lora_fits(path, components, model_name=repr(model_name))
    with _open(path) as f:
        dora_in_kohya = any(key.endswith(".dora_scale") for key in f.keys())
    if dora_in_kohya:
        # diffusers drops kohya-format DoRA scales for SD 1.x with only a log line, which
        # would draw different images than the LoRA was trained to.
        raise LoraFileError(
            f"{path} is a DoRA LoRA in kohya format (dora_scale keys), whose scales diffusers "
            f"cannot load for SD 1.5; load the {DIFFUSERS_WEIGHT_NAME} written beside it, "
            "which keeps DoRA's magnitudes")
    if pipe.get_list_adapters():
        pipe.unload_lora_weights()
    with _open(path) as f:
        keys, header = list(f.keys()), f.metadata() or {}
        text_keys = [k for k in keys if k.startswith(("text_encoder.", "lora_te_"))]
        if not text_keys:
            pipe.load_lora_weights(str(path.parent), weight_name=path.name,
                                   adapter_name=adapter_name)
        else:
            # diffusers loads the UNet's layers; the text encoder's go through PEFT
            # (add_text_encoder_lora says why), from the same file.
            with tempfile.TemporaryDirectory() as staging:  # the LoRA's folder may be read-only
                save_file({k: f.get_tensor(k) for k in keys if k not in text_keys},
                          str(Path(staging) / path.name), metadata=header)
                pipe.load_lora_weights(staging, weight_name=path.name, adapter_name=adapter_name)
            if getattr(pipe, "text_encoder", None) is not None:
                state, config = _text_encoder_lora(f, text_keys, header, pipe.text_encoder)
                from peft.utils import set_peft_model_state_dict

                add_text_encoder_lora(pipe.text_encoder, config, adapter_name)
                set_peft_model_state_dict(pipe.text_encoder, state, adapter_name=adapter_name)
                pipe.text_encoder.to(pipe.unet.device)
    pipe.set_adapters([adapter_name], adapter_weights=[float(strength)])
    return adapter_name


def _text_encoder_lora(f, keys: list[str], header: Mapping[str, str], text_encoder):
    """(PEFT state dict, LoraConfig) of the text-encoder layers of an open LoRA file.

    diffusers keys (`text_encoder.<module>.lora.down.weight`, alpha in the header's adapter
    metadata, else alpha = rank as diffusers assumes) and kohya keys
    (`lora_te_<module with _>.lora_down.weight` with one `.alpha` per module) alike.
    """
    from peft import LoraConfig

    path_of = {spelling: name for name, _ in text_encoder.named_modules()
               for spelling in module_spellings("text_encoder", name)}
    state: dict[str, torch.Tensor] = {}
    alphas: dict[str, float] = {}
    for key in keys:
        if m := _DIFFUSERS_KEY.match(key):
            module = path_of[m.group(2)]
            side = m.group(3) or m.group(5) or {"A": "down", "B": "up"}[m.group(4)]
        elif m := _KOHYA_KEY.match(key):
            module, side = path_of[m.group(2)], m.group(3)
        elif key.endswith(".lora_magnitude_vector"):
            module = path_of[key.removeprefix("text_encoder.").removesuffix(".lora_magnitude_vector")]
            state[f"{module}.lora_magnitude_vector"] = f.get_tensor(key)
            continue
        elif key.endswith(".alpha"):
            alphas[path_of[key.removeprefix("lora_te_").removesuffix(".alpha")]] = float(
                f.get_tensor(key))
            continue
        else:
            continue
        state[f"{module}.lora_{'A' if side == 'down' else 'B'}.weight"] = f.get_tensor(key)
    ranks = {k.removesuffix(".lora_A.weight"): v.shape[0] for k, v in state.items()
             if k.endswith(".lora_A.weight")}
    rank = max(sorted(set(ranks.values())), key=list(ranks.values()).count)
    meta = json.loads(header.get("lora_adapter_metadata", "{}"))
    alpha = alphas.get(next(iter(ranks)), meta.get("text_encoder.lora_alpha", rank))
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=sorted(ranks),
        rank_pattern={m: r for m, r in ranks.items() if r != rank},
        alpha_pattern={m: a for m, a in alphas.items() if a != alpha},
        use_dora=any(k.endswith(".lora_magnitude_vector") for k in state))
    return state, config
