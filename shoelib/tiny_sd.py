"""A tiny random-weight Stable Diffusion pipeline, built offline in the SD 1.5 folder layout.

It has the SD 1.5 structure (UNet with cross-attention to_q/to_k/to_v/to_out.0, a VAE that
downsamples 8x with scaling factor 0.18215, a CLIP text encoder with 77 tokens, the SD 1.5
noise schedule) at a size that runs on a laptop CPU in seconds. Saved with `save_pretrained`,
it is then loaded by exactly the code that loads the real model. Its images are noise.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

# The words of the demo captions get their own BPE tokens, so that prompts differ in a few
# tokens (as they do with the real tokenizer) instead of one token per character.
CAPTION_WORDS = (
    "a professional product photo of casual shoes collection centered on white background "
    "high quality photography men women unisex boys girls summer winter fall spring "
    "black brown white grey blue navy red green olive tan beige khaki pink purple yellow "
    "orange silver gold maroon multi other side view top pair"
).split()

SD15_SCHEDULER = {  # stable-diffusion-v1-5 scheduler/scheduler_config.json
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    # Without it DDIM and DDPM (whose default is True) clip each step's predicted latents to
    # [-1, 1]; SD 1.5's latents reach beyond that, and the images lose their background.
    "clip_sample": False,
}


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins for bytes used by GPT-2/CLIP byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tokenizer_files(folder: Path, words: Sequence[str] = CAPTION_WORDS) -> int:
    """Write a CLIP vocab.json + merges.txt covering every byte, with one merge chain per word
    in `words` (lower case), so each becomes a single token where the chains don't collide.

    Returns the vocabulary size.
    """
    chars = _byte_chars()
    vocab: dict[str, int] = {}
    for token in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(token, len(vocab))
    merges: list[str] = []
    for word in words:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        left = symbols[0]
        for right in symbols[1:]:  # merge left to right: b l -> bl, bl a -> bla, ...
            merge = f"{left} {right}"
            if merge not in merges:
                merges.append(merge)
            left = left + right
            vocab.setdefault(left, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return len(vocab)


def build_tiny_sd(out_dir: str | Path, seed: int = 0) -> Path:
    """Build the tiny pipeline and save it to `out_dir` (replaced atomically). Returns out_dir."""
    import torch
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    out_dir = Path(out_dir)
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    tok_dir = staging / "_tokenizer_src"
    vocab_size = write_tokenizer_files(tok_dir)
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"),
                              model_max_length=77)

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,  # 8 latent px * 8 = 64 px images
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 16, 32, 32),  # four blocks: 8x downsampling, as in SD 1.5
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=64,
        scaling_factor=0.18215,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(staging, safe_serialization=True)
    shutil.rmtree(tok_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return out_dir


def ensure_tiny_sd(out_dir: str | Path) -> Path:
    """Build the tiny pipeline unless a complete one is already there."""
    out_dir = Path(out_dir)
    if not (out_dir / "model_index.json").exists():
        build_tiny_sd(out_dir)
    return out_dir
