"""Pretrain the embedded model: a small text-to-image model in Stable Diffusion 1.5's layout.

    python -m shoelib.pretrain --config configs/pretrain/catalog-sd-64.yaml

It trains from scratch, on real catalogue photos, the components SD 1.5 is made of, so that
`pipeline.load_pipeline`, 05, 06 and 07 use it exactly as they use the real model:

1. a BPE `CLIPTokenizer` whose merges make every frequent caption word one token;
2. an `AutoencoderKL` (reconstruction MSE + a small KL term), whose `scaling_factor` is then
   set to 1 / std of its latents, as SD's 0.18215 was;
3. a `UNet2DConditionModel` (cross-attention on to_q/to_k/to_v/to_out.0) trained jointly with
   a small `CLIPTextModel` on cached latents, captions written the way 02 writes them, 10 % of
   them dropped for classifier-free guidance, with an EMA of the weights;
4. a small image encoder (a CNN classifying article type and colour): its penultimate layer
   is the demo's feature space for KID, FD and nearest-neighbour memorisation, where a random
   CLIP would be meaningless.

The category the demo's LoRA learns (`exclude_categories`, Casual Shoes) is left out, and a
seeded slice of every other category is held out for measuring the base model. Each stage
checkpoints atomically and a rerun resumes where it stopped; finished stages are skipped.
Writes `<out_dir>/<model_name>/` (the pipeline), `<out_dir>/<encoder_name>/`, and the work
folder `<work_dir>/` (checkpoints, loss curves, `pretrain_summary.json`).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from shoelib.captions import DEFAULT_TEMPLATE as DEFAULT_CAPTION_TEMPLATE
from shoelib.catalog import brands, read_styles
from shoelib.dataset import captions
from shoelib.images import letterbox, open_image
from shoelib.io import atomic_path, write_json
from shoelib.paths import resolve

ENCODER_WEIGHTS = "encoder.safetensors"
ENCODER_CONFIG = "encoder_config.json"
HOLDOUT_CSV = "holdout.csv"  # the held-out photos, in the model folder


class PretrainConfigError(ValueError):
    """A pretraining setting is invalid; the message names it."""


@dataclass(frozen=True)
class PretrainConfig:
    """Every pretraining setting (flat, each with its unit); see configs/pretrain/catalog-sd-64.yaml."""

    data_root: str                      # Kaggle layout: styles.csv + images/
    out_dir: str = "assets/models"      # the model and encoder folders go here
    work_dir: str = "data/pretrain"     # checkpoints, caches, curves
    model_name: str = "catalog-sd-64"
    encoder_name: str = "catalog-encoder"
    exclude_categories: tuple[str, ...] = ("Casual Shoes",)
    holdout_fraction: float = 0.05      # share of each pretraining article type held out
    min_rows_per_type: int = 10         # article types with fewer photos are left out
    caption_template: str = DEFAULT_CAPTION_TEMPLATE
    resolution: int = 64
    seed: int = 0
    threads: int = 0                    # torch CPU threads; 0 = torch default
    min_word_count: int = 3             # caption words seen this often get their own token
    # VAE
    vae_channels: tuple[int, ...] = (16, 32, 64)
    vae_steps: int = 500
    vae_batch: int = 32
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-6
    # text encoder + UNet
    text_hidden: int = 128
    text_layers: int = 4
    unet_channels: tuple[int, ...] = (64, 128, 192)
    unet_steps: int = 1500
    unet_batch: int = 32
    unet_lr: float = 4e-4
    unet_warmup: int = 100
    train_text_encoder: bool = True
    condition_dropout: float = 0.1
    ema_decay: float = 0.999
    # image encoder
    encoder_dim: int = 128
    encoder_steps: int = 800
    encoder_batch: int = 64
    encoder_lr: float = 2e-3
    checkpoint_every: int = 200

    def __post_init__(self) -> None:
        for name in ("vae_steps", "unet_steps", "encoder_steps", "vae_batch", "unet_batch",
                     "encoder_batch", "checkpoint_every", "resolution", "text_hidden",
                     "text_layers", "encoder_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise PretrainConfigError(f"{name}={value!r} must be a positive integer")
        if self.resolution % 2 ** (len(self.vae_channels) - 1):
            raise PretrainConfigError(
                f"resolution={self.resolution} must be divisible by the VAE's downsampling "
                f"{2 ** (len(self.vae_channels) - 1)}")
        if not 0 < self.holdout_fraction < 0.5:
            raise PretrainConfigError(
                f"holdout_fraction={self.holdout_fraction} must be between 0 and 0.5")
        if not 0 <= self.condition_dropout < 1:
            raise PretrainConfigError(f"condition_dropout={self.condition_dropout} must be in [0, 1)")

    @classmethod
    def from_dict(cls, values: dict) -> PretrainConfig:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise PretrainConfigError(f"unknown setting(s) {unknown}; known: {sorted(known)}")
        coerced = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        try:
            return cls(**coerced)
        except TypeError as err:
            raise PretrainConfigError(str(err)) from None

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# ---------------------------------------------------------------------------------------------
# Data


@dataclass
class PretrainData:
    """Rows with a readable photo, their captions, a train/holdout split and 64 px pixels."""

    rows: pd.DataFrame                  # id, articleType, baseColour, caption, split
    pixels: torch.Tensor                # uint8 (N, 3, R, R), rows' order
    skipped: dict = field(default_factory=dict)

    def split(self, name: str) -> np.ndarray:
        return np.flatnonzero(self.rows["split"].to_numpy() == name)


def select_rows(config: PretrainConfig) -> tuple[pd.DataFrame, dict]:
    """Catalogue rows with a photo on disk, minus the excluded categories and rare types."""
    root = resolve(config.data_root)
    read = read_styles(root / "styles.csv")
    frame = read.frame.copy()
    frame["brand"] = brands(frame)
    on_disk = {int(p.stem) for p in (root / "images").glob("*.jpg") if p.stem.isdigit()}
    with_photo = frame[frame["id"].isin(on_disk)].drop_duplicates("id")
    excluded = with_photo["articleType"].isin(config.exclude_categories)
    kept = with_photo[~excluded]
    counts = kept["articleType"].value_counts()
    rare = counts[counts < config.min_rows_per_type].index
    kept = kept[~kept["articleType"].isin(rare)].reset_index(drop=True)
    skipped = {"excluded_category_rows": int(excluded.sum()),
               "rare_type_rows": int(with_photo["articleType"].isin(rare).sum()),
               "rare_types": sorted(map(str, rare))}
    kept["caption"] = captions(kept, config.caption_template).to_numpy()
    rng = np.random.default_rng(config.seed)
    split = np.full(len(kept), "train", dtype=object)
    for _, index in kept.groupby("articleType").indices.items():
        n_hold = max(1, round(len(index) * config.holdout_fraction))
        split[rng.permutation(index)[:n_hold]] = "holdout"
    kept["split"] = split
    return kept[["id", "articleType", "baseColour", "gender", "season", "usage", "caption",
                 "split"]], skipped


def load_pixels(root: Path, ids: list[int], resolution: int) -> torch.Tensor:
    """Every photo letterboxed to resolution x resolution, as uint8 (N, 3, R, R)."""
    out = torch.empty((len(ids), 3, resolution, resolution), dtype=torch.uint8)
    for i, product_id in enumerate(tqdm(ids, desc="photos", mininterval=2)):
        img = letterbox(open_image(root / "images" / f"{product_id}.jpg", resolution),
                        resolution)
        out[i] = torch.from_numpy(np.array(img)).permute(2, 0, 1)
    return out


def prepare_data(config: PretrainConfig, work: Path) -> PretrainData:
    """Rows + pixels, cached in the work folder (photos are decoded once)."""
    rows, skipped = select_rows(config)
    cache = work / f"pixels_{config.resolution}.pt"
    if cache.exists():
        saved = torch.load(cache)
        if saved["ids"] == rows["id"].tolist():
            return PretrainData(rows, saved["pixels"], skipped)
    pixels = load_pixels(resolve(config.data_root), rows["id"].tolist(), config.resolution)
    with atomic_path(cache) as tmp:
        torch.save({"ids": rows["id"].tolist(), "pixels": pixels}, tmp)
    return PretrainData(rows, pixels, skipped)


def to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [-1, 1], as the VAE expects."""
    return pixels.float().div(127.5).sub(1.0)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


# ---------------------------------------------------------------------------------------------
# Tokenizer


def caption_words(texts: list[str], min_count: int) -> list[str]:
    """Lower-case words of the captions seen at least `min_count` times, most frequent first."""
    counts = Counter(w for t in texts for w in _words(t))
    return [w for w, n in counts.most_common() if n >= min_count]


def _words(text: str) -> list[str]:
    import re
    return re.findall(r"[a-z]+|[0-9]", text.lower())


def build_tokenizer(texts: list[str], min_count: int, folder: Path):
    """A CLIPTokenizer over bytes + one merge chain per frequent caption word."""
    from transformers import CLIPTokenizer

    from shoelib.tiny_sd import write_tokenizer_files

    write_tokenizer_files(folder, caption_words(texts, min_count))
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                              model_max_length=77)
    return tokenizer


def tokens_per_word(tokenizer, texts: list[str]) -> float:
    """Mean tokens per word over `texts`: 1.0 means every word is one token."""
    words = [w for t in texts for w in t.replace(",", " ").split()]
    ids = tokenizer(" ".join(words), add_special_tokens=False).input_ids
    return len(ids) / max(1, len(words))


# ---------------------------------------------------------------------------------------------
# Checkpoints: one folder per stage, replaced atomically


def save_stage_checkpoint(folder: Path, state: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "checkpoint.pt") as tmp:
        torch.save(state, tmp)


def load_stage_checkpoint(folder: Path) -> dict | None:
    path = folder / "checkpoint.pt"
    if not path.exists():
        return None
    try:
        return torch.load(path, weights_only=False)
    except Exception as err:  # a truncated file: start the stage again, say so
        print(f"pretrain: ignoring unreadable checkpoint {path} ({type(err).__name__}); "
              "the stage restarts", file=sys.stderr)
        return None


def save_curve(path: Path, losses: list[float], title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(losses, lw=0.6, alpha=0.5, label="step")
    if len(losses) >= 50:
        window = max(10, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(window - 1, len(losses)), smooth, lw=1.5, label=f"mean of {window}")
    ax.set(title=title, xlabel="step", ylabel="loss", yscale="log")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def stage_state(parts: dict, generator: torch.Generator, step: int, losses: list,
                seconds: float) -> dict:
    """A stage checkpoint: the state_dict of each part (models, optimizer, schedule, EMA), every
    random state, and the progress so far."""
    return {**{name: part.state_dict() for name, part in parts.items()},
            "rng": _rng_state(generator), "step": step, "losses": losses, "seconds": seconds}


def resume_stage(folder: Path, parts: dict, generator: torch.Generator) -> tuple[int, list, float]:
    """Restore `parts` and the random states from the stage's checkpoint, if it has one.
    Returns (step, losses, seconds) to continue from; (0, [], 0.0) for a fresh stage."""
    saved = load_stage_checkpoint(folder)
    if saved is None:
        return 0, [], 0.0
    for name, part in parts.items():
        part.load_state_dict(saved[name])
    _restore_rng(saved["rng"], generator)
    return saved["step"], saved["losses"], saved["seconds"]


def _rng_state(generator: torch.Generator) -> dict:
    return {"generator": generator.get_state(), "torch": torch.get_rng_state()}


def _restore_rng(state: dict, generator: torch.Generator) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])


# ---------------------------------------------------------------------------------------------
# Stage 1: the VAE


def build_vae(config: PretrainConfig):
    from diffusers import AutoencoderKL

    n = len(config.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=tuple(config.vae_channels),
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        norm_num_groups=min(32, config.vae_channels[0]), sample_size=config.resolution,
    )


def train_vae(config: PretrainConfig, data: PretrainData, work: Path):
    """Reconstruction MSE + kl_weight * KL, AdamW, cosine decay. Returns (vae, record)."""
    stage = work / "vae"
    torch.manual_seed(config.seed)  # initial weights from the seed, whatever ran before
    vae = build_vae(config)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, config.vae_steps) / config.vae_steps)))
    generator = torch.Generator().manual_seed(config.seed + 1)
    train_index = torch.from_numpy(data.split("train"))
    parts = {"model": vae, "optimizer": optimizer, "schedule": schedule}
    step, losses, seconds = resume_stage(stage, parts, generator)
    vae.train()
    bar = tqdm(total=config.vae_steps, initial=step, desc="VAE", mininterval=5)
    while step < config.vae_steps:
        start = time.perf_counter()
        pick = train_index[torch.randint(len(train_index), (config.vae_batch,), generator=generator)]
        x = random_flip(to_unit(data.pixels[pick]), generator)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        recon = vae.decode(z).sample
        mse = F.mse_loss(recon, x)
        kl = posterior.kl().mean() / x[0].numel()  # per pixel value, as the MSE is
        loss = mse + config.vae_kl_weight * kl * x[0].numel()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        step += 1
        losses.append(float(mse.detach()))
        seconds += time.perf_counter() - start
        bar.update(1)
        bar.set_postfix(mse=f"{np.mean(losses[-20:]):.4f}")
        if step % config.checkpoint_every == 0 or step == config.vae_steps:
            save_stage_checkpoint(stage, stage_state(parts, generator, step, losses, seconds))
    bar.close()
    vae.eval()
    save_curve(work / "vae_loss.png", losses, "VAE reconstruction MSE (train batches)")
    holdout = to_unit(data.pixels[torch.from_numpy(data.split("holdout"))])
    with torch.no_grad():
        recon = torch.cat([vae.decode(vae.encode(c).latent_dist.mean).sample
                           for c in holdout.split(64)])
    record = {"steps": step, "seconds": round(seconds, 1), "final_train_mse": float(np.mean(losses[-50:])),
              "holdout_mse": float(F.mse_loss(recon, holdout)),
              "parameters": sum(p.numel() for p in vae.parameters())}
    return vae, record


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, batch: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent mean and std (unscaled) of each image and of its mirror: (2N, 4, h, w) each."""
    means, stds = [], []
    for flip in (False, True):
        for chunk in tqdm(pixels.split(batch), desc=f"latents (flip={flip})", mininterval=5):
            x = to_unit(chunk)
            dist = vae.encode(x.flip(-1) if flip else x).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


# ---------------------------------------------------------------------------------------------
# Stage 2: text encoder + UNet


def build_text_encoder(config: PretrainConfig, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=config.text_hidden,
        intermediate_size=4 * config.text_hidden, num_hidden_layers=config.text_layers,
        num_attention_heads=max(1, config.text_hidden // 32), max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))


def build_unet(config: PretrainConfig):
    from diffusers import UNet2DConditionModel

    n = len(config.unet_channels)
    latent_side = config.resolution // 2 ** (len(config.vae_channels) - 1)
    return UNet2DConditionModel(
        sample_size=latent_side, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=tuple(config.unet_channels),
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=config.text_hidden, attention_head_dim=8, norm_num_groups=32)


def noise_scheduler():
    from diffusers import DDPMScheduler

    from shoelib.tiny_sd import SD15_SCHEDULER
    return DDPMScheduler.from_config(SD15_SCHEDULER)


def train_unet(config: PretrainConfig, data: PretrainData, latents: tuple[torch.Tensor, torch.Tensor],
               scaling_factor: float, tokenizer, work: Path):
    """Epsilon-prediction diffusion loss on cached latents, text encoder trained jointly
    (or frozen with `train_text_encoder: false`), EMA of both. Returns (unet, text, record)."""
    from diffusers.training_utils import EMAModel

    stage = work / "unet"
    torch.manual_seed(config.seed + 2)
    unet, text_encoder = build_unet(config), build_text_encoder(config, tokenizer)
    trainable = list(unet.parameters())
    if config.train_text_encoder:
        trainable += list(text_encoder.parameters())
    text_encoder.requires_grad_(config.train_text_encoder)
    ema = EMAModel(trainable, decay=config.ema_decay, use_ema_warmup=True)
    optimizer = torch.optim.AdamW(trainable, lr=config.unet_lr, weight_decay=1e-2)

    def lr_at(s: int) -> float:
        if s < config.unet_warmup:
            return (s + 1) / config.unet_warmup
        t = (s - config.unet_warmup) / max(1, config.unet_steps - config.unet_warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, t)))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    scheduler = noise_scheduler()
    generator = torch.Generator().manual_seed(config.seed + 3)
    train_index = data.split("train")
    n = len(data.rows)
    token_ids = tokenizer(data.rows["caption"].tolist() + [""], padding="max_length",
                          max_length=77, truncation=True, return_tensors="pt").input_ids
    empty_ids = token_ids[-1:]
    token_ids = token_ids[:-1]
    means, stds = latents
    parts = {"unet": unet, "text_encoder": text_encoder, "optimizer": optimizer,
             "schedule": schedule, "ema": ema}
    step, losses, seconds = resume_stage(stage, parts, generator)
    unet.train()
    text_encoder.train(config.train_text_encoder)
    bar = tqdm(total=config.unet_steps, initial=step, desc="UNet", mininterval=5)
    train_index_t = torch.from_numpy(train_index)
    while step < config.unet_steps:
        start = time.perf_counter()
        pick = train_index_t[torch.randint(len(train_index_t), (config.unet_batch,), generator=generator)]
        flip = torch.rand(config.unet_batch, generator=generator) < 0.5
        slot = pick + flip.long() * n  # mirrored latents sit after the originals
        z0 = (means[slot] + stds[slot] * torch.randn(means[slot].shape, generator=generator)) * scaling_factor
        ids = token_ids[pick].clone()
        drop = torch.rand(config.unet_batch, generator=generator) < config.condition_dropout
        ids[drop] = empty_ids
        noise = torch.randn(z0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (config.unet_batch,),
                          generator=generator)
        noisy = scheduler.add_noise(z0, noise, t)
        with torch.set_grad_enabled(config.train_text_encoder):
            states = text_encoder(ids).last_hidden_state
        pred = unet(noisy, t, encoder_hidden_states=states).sample
        loss = F.mse_loss(pred, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        ema.step(trainable)
        step += 1
        losses.append(float(loss))
        seconds += time.perf_counter() - start
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if step % config.checkpoint_every == 0 or step == config.unet_steps:
            save_stage_checkpoint(stage, stage_state(parts, generator, step, losses, seconds))
    bar.close()
    save_curve(work / "unet_loss.png", losses, "UNet noise-prediction MSE (train batches)")
    ema.copy_to(trainable)  # the shipped weights are the EMA
    unet.eval()
    text_encoder.eval()
    record = {"steps": step, "seconds": round(seconds, 1),
              "final_train_loss": float(np.mean(losses[-100:])),
              "unet_parameters": sum(p.numel() for p in unet.parameters()),
              "text_encoder_parameters": sum(p.numel() for p in text_encoder.parameters()),
              "text_encoder": "trained jointly" if config.train_text_encoder else "random, frozen"}
    record["holdout_loss"] = holdout_diffusion_loss(unet, text_encoder, data, latents,
                                                    scaling_factor, tokenizer)
    return unet, text_encoder, record


@torch.no_grad()
def holdout_diffusion_loss(unet, text_encoder, data: PretrainData, latents, scaling_factor: float,
                           tokenizer, seed: int = 1234) -> float:
    """Noise-prediction MSE on held-out photos with fixed noise and timesteps (comparable
    across runs and settings)."""
    index = torch.from_numpy(data.split("holdout"))
    generator = torch.Generator().manual_seed(seed)
    z0 = latents[0][index] * scaling_factor
    noise = torch.randn(z0.shape, generator=generator)
    scheduler = noise_scheduler()
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(index),), generator=generator)
    ids = tokenizer(data.rows["caption"].iloc[index.numpy()].tolist(), padding="max_length",
                    max_length=77, truncation=True, return_tensors="pt").input_ids
    total = 0.0
    for chunk in torch.arange(len(index)).split(128):
        states = text_encoder(ids[chunk]).last_hidden_state
        noisy = scheduler.add_noise(z0[chunk], noise[chunk], t[chunk])
        pred = unet(noisy, t[chunk], encoder_hidden_states=states).sample
        total += float(F.mse_loss(pred, noise[chunk], reduction="sum"))
    return total / noise.numel()


# ---------------------------------------------------------------------------------------------
# Stage 3: the image encoder (the demo's feature space)


class CatalogEncoder(torch.nn.Module):
    """A small CNN: image -> `dim`-d embedding (the features) -> article type and colour logits."""

    def __init__(self, n_types: int, n_colours: int, dim: int = 128, resolution: int = 64):
        super().__init__()
        self.resolution = resolution
        chans = (16, 32, 64, dim)  # few channels at full resolution: they dominate the cost
        layers, prev = [], 3
        for c in chans:
            layers += [torch.nn.Conv2d(prev, c, 3, padding=1), torch.nn.BatchNorm2d(c),
                       torch.nn.ReLU(inplace=True), torch.nn.Conv2d(c, c, 3, padding=1),
                       torch.nn.BatchNorm2d(c), torch.nn.ReLU(inplace=True),
                       torch.nn.MaxPool2d(2)]
            prev = c
        self.body = torch.nn.Sequential(*layers)
        self.type_head = torch.nn.Linear(dim, n_types)
        self.colour_head = torch.nn.Linear(dim, n_colours)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """x: float (B, 3, R, R) in [-1, 1] -> (B, dim) features (global average pool)."""
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(x)
        return self.type_head(h), self.colour_head(h)


def train_encoder(config: PretrainConfig, data: PretrainData, work: Path):
    """Cross-entropy on article type + colour. Returns (encoder, labels, record)."""
    types = sorted(data.rows["articleType"].astype(str).unique())
    colours = sorted(data.rows["baseColour"].fillna("Unknown").astype(str).unique())
    y_type = torch.tensor(data.rows["articleType"].astype(str).map(types.index).to_numpy())
    y_colour = torch.tensor(data.rows["baseColour"].fillna("Unknown").astype(str)
                            .map(colours.index).to_numpy())
    torch.manual_seed(config.seed + 4)
    encoder = CatalogEncoder(len(types), len(colours), config.encoder_dim, config.resolution)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=config.encoder_lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, config.encoder_steps) / config.encoder_steps)))
    generator = torch.Generator().manual_seed(config.seed + 5)
    train_index = torch.from_numpy(data.split("train"))
    stage = work / "encoder"
    parts = {"model": encoder, "optimizer": optimizer, "schedule": schedule}
    step, losses, seconds = resume_stage(stage, parts, generator)
    encoder.train()
    bar = tqdm(total=config.encoder_steps, initial=step, desc="encoder", mininterval=5)
    while step < config.encoder_steps:
        start = time.perf_counter()
        pick = train_index[torch.randint(len(train_index), (config.encoder_batch,), generator=generator)]
        x = random_flip(to_unit(data.pixels[pick]), generator)
        type_logits, colour_logits = encoder(x)
        loss = F.cross_entropy(type_logits, y_type[pick]) + F.cross_entropy(colour_logits, y_colour[pick])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        step += 1
        losses.append(float(loss))
        seconds += time.perf_counter() - start
        bar.update(1)
        if step % config.checkpoint_every == 0 or step == config.encoder_steps:
            save_stage_checkpoint(stage, stage_state(parts, generator, step, losses, seconds))
    bar.close()
    encoder.eval()
    save_curve(work / "encoder_loss.png", losses, "image encoder cross-entropy (type + colour)")
    holdout = torch.from_numpy(data.split("holdout"))
    with torch.no_grad():
        t_logits, c_logits = encoder(to_unit(data.pixels[holdout]))
    majority_type = float((y_type[holdout] == torch.mode(y_type[train_index]).values).float().mean())
    record = {"steps": step, "seconds": round(seconds, 1),
              "holdout_type_accuracy": float((t_logits.argmax(1) == y_type[holdout]).float().mean()),
              "holdout_colour_accuracy": float((c_logits.argmax(1) == y_colour[holdout]).float().mean()),
              "holdout_type_majority_baseline": majority_type,
              "parameters": sum(p.numel() for p in encoder.parameters())}
    return encoder, {"article_types": types, "colours": colours}, record


def save_encoder(encoder: CatalogEncoder, labels: dict, folder: Path) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in encoder.state_dict().items()}
    with atomic_path(folder / ENCODER_WEIGHTS) as tmp:
        save_file(state, str(tmp))
    write_json(folder / ENCODER_CONFIG, {"dim": encoder.type_head.in_features,
                                         "resolution": encoder.resolution, **labels})


def load_encoder(folder: str | Path) -> tuple[CatalogEncoder, dict]:
    """The shipped image encoder and its labels (article types, colours)."""
    from safetensors.torch import load_file

    folder = resolve(folder)
    cfg_path = folder / ENCODER_CONFIG
    if not cfg_path.exists():
        raise FileNotFoundError(f"{folder} holds no {ENCODER_CONFIG}: not an image encoder "
                                "folder written by `python -m shoelib.pretrain`")
    cfg = json.loads(cfg_path.read_text())
    encoder = CatalogEncoder(len(cfg["article_types"]), len(cfg["colours"]), cfg["dim"],
                             cfg["resolution"])
    state = {k: v.float() for k, v in load_file(str(folder / ENCODER_WEIGHTS)).items()}
    encoder.load_state_dict(state)
    return encoder.eval(), cfg


# ---------------------------------------------------------------------------------------------
# Saving the pipeline


def save_pipeline(folder: Path, vae, text_encoder, tokenizer, unet) -> None:
    """SD 1.5 folder layout, weights stored as float16 (loaded in any dtype)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from shoelib.tiny_sd import SD15_SCHEDULER

    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16)
    pipe.save_pretrained(staging, safe_serialization=True)
    pipe.to(torch.float32)
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)


def folder_megabytes(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2 ** 20


# ---------------------------------------------------------------------------------------------
# The whole run


def pretrain(config: PretrainConfig) -> dict:
    """Run every stage (skipping finished ones) and write the model, encoder and summary."""
    if config.threads:
        torch.set_num_threads(config.threads)
    work = resolve(config.work_dir)
    out = resolve(config.out_dir)
    work.mkdir(parents=True, exist_ok=True)
    write_json(work / "config.json", config.to_dict())
    started = time.perf_counter()
    data = prepare_data(config, work)
    train_captions = data.rows["caption"].iloc[data.split("train")].tolist()
    tokenizer = build_tokenizer(train_captions, config.min_word_count, work / "tokenizer_src")
    summary: dict = {"config": config.to_dict(), "hardware": _hardware(),
                     "data": {"photos": len(data.rows), "train": int(len(data.split("train"))),
                              "holdout": int(len(data.split("holdout"))),
                              "article_types": int(data.rows["articleType"].nunique()),
                              **data.skipped},
                     "tokenizer": {"vocab_size": len(tokenizer),
                                   "tokens_per_word_holdout": round(tokens_per_word(
                                       tokenizer, data.rows["caption"].iloc[
                                           data.split("holdout")].tolist()), 3)}}
    vae, summary["vae"] = train_vae(config, data, work)
    means, stds = encode_latents(vae, data.pixels)
    train_means = means[torch.from_numpy(data.split("train"))]
    scaling_factor = float(1.0 / train_means.std())
    vae.register_to_config(scaling_factor=scaling_factor)
    summary["vae"]["scaling_factor"] = scaling_factor
    unet, text_encoder, summary["unet"] = train_unet(config, data, (means, stds), scaling_factor,
                                                     tokenizer, work)
    model_dir = out / config.model_name
    save_pipeline(model_dir, vae, text_encoder, tokenizer, unet)
    encoder, labels, summary["encoder"] = train_encoder(config, data, work)
    save_encoder(encoder, labels, out / config.encoder_name)
    holdout = data.rows.iloc[data.split("holdout")]
    with atomic_path(model_dir / HOLDOUT_CSV) as tmp:  # 04 measures the base model on these
        holdout.to_csv(tmp, index=False)
    summary["size_mb"] = {"model": round(folder_megabytes(model_dir), 2),
                          "encoder": round(folder_megabytes(out / config.encoder_name), 2)}
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    write_json(work / "pretrain_summary.json", summary)
    write_model_card(model_dir, summary)
    for name in ("vae_loss.png", "unet_loss.png", "encoder_loss.png"):
        shutil.copyfile(work / name, model_dir / name)
    return summary


def write_model_card(model_dir: Path, summary: dict) -> Path:
    """README.md of the model folder: every figure comes from `summary` (this run's)."""
    c, d, v, u, e = (summary[k] for k in ("config", "data", "vae", "unet", "encoder"))
    hw = summary["hardware"]
    text = f"""# {c['model_name']}: a small Stable Diffusion-layout model pretrained on catalogue photos

Trained from scratch by `python -m shoelib.pretrain --config configs/pretrain/catalog-sd-64.yaml --set data_root <folder>`
where `<folder>` holds the Kaggle layout (`styles.csv` + `images/`). Folder layout and classes are
Stable Diffusion 1.5's (`AutoencoderKL`, `UNet2DConditionModel` with cross-attention on
to_q/to_k/to_v/to_out.0, `CLIPTextModel` + `CLIPTokenizer`, `PNDMScheduler` with SD 1.5's noise
schedule, `model_index.json`), so `shoelib.pipeline.load_pipeline`, LoRA training (05),
generation (06) and evaluation (07) use it unchanged. Weights are stored as float16.

## Data
- Source: the Kaggle dataset "Fashion Product Images" (paramaggarwal): {d['photos']:,} photos with a
  `styles.csv` row, resized to {c['resolution']} px (letterboxed on their own border colour).
- Left out: {', '.join(c['exclude_categories'])} ({d['excluded_category_rows']} photos: the concept the
  demo's LoRA learns), and {len(d['rare_types'])} article types with fewer than {c['min_rows_per_type']} photos
  ({d['rare_type_rows']} photos).
- {d['article_types']} article types; {d['train']:,} training photos, {d['holdout']:,} held out
  ({c['holdout_fraction']:.0%} of each type, seed {c['seed']}; listed in `holdout.csv`).
- Captions: 02's template, `{c['caption_template']}`.
- Licence and provenance: the photos and labels are the Kaggle dataset's; the licence stated on its
  Kaggle page applies to them and to these weights, which are derived from them. Check it before
  redistributing.

## Components and training
| part | size | training | result |
|---|---|---|---|
| tokenizer | {summary['tokenizer']['vocab_size']} tokens | BPE merges for every caption word seen ≥ {c['min_word_count']} times | {summary['tokenizer']['tokens_per_word_holdout']} tokens per word on held-out captions |
| VAE (`AutoencoderKL`, channels {c['vae_channels']}, 4 latent channels) | {v['parameters']:,} parameters | {v['steps']} steps, batch {c['vae_batch']}, lr {c['vae_lr']}, MSE + {c['vae_kl_weight']} KL, {v['seconds'] / 60:.1f} min | held-out reconstruction MSE {v['holdout_mse']:.4f} (pixels in [-1, 1]); scaling factor {v['scaling_factor']:.4f} (1 / std of the latents) |
| text encoder (`CLIPTextModel`, width {c['text_hidden']}, {c['text_layers']} layers) | {u['text_encoder_parameters']:,} parameters | {u['text_encoder']} with the UNet | |
| UNet (`UNet2DConditionModel`, channels {c['unet_channels']}) | {u['unet_parameters']:,} parameters | {u['steps']} steps, batch {c['unet_batch']}, lr {c['unet_lr']} cosine, {c['condition_dropout']:.0%} empty captions, EMA {c['ema_decay']}, {u['seconds'] / 60:.1f} min | final train loss {u['final_train_loss']:.4f}; held-out loss {u['holdout_loss']:.4f} (fixed noise and timesteps) |
| image encoder (CNN, {e['parameters']:,} parameters, `../{c['encoder_name']}`) | {c['encoder_dim']}-d features | {e['steps']} steps, batch {c['encoder_batch']}, article type + colour, {e['seconds'] / 60:.1f} min | held-out article type accuracy {e['holdout_type_accuracy']:.3f} (majority {e['holdout_type_majority_baseline']:.3f}), colour {e['holdout_colour_accuracy']:.3f} |

Hardware: {hw['machine']} CPU, {hw['cpu_threads']} torch threads, CUDA {'yes' if hw['cuda'] else 'no'},
torch {hw['torch']}; {summary['wall_seconds'] / 60:.0f} min in all. Size on disk: model
{summary['size_mb']['model']} MB, encoder {summary['size_mb']['encoder']} MB.
Loss curves: `vae_loss.png`, `unet_loss.png`, `encoder_loss.png`.

## Limits
{c['resolution']} px only; a few thousand photos; no perceptual or adversarial VAE loss, so images are
soft. It stands in for SD 1.5 so that the demo's numbers measure something real; it is not a
substitute for SD 1.5 on the real job.
"""
    path = model_dir / "README.md"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _hardware() -> dict:
    import platform
    return {"machine": platform.machine(), "processor": platform.processor() or "unknown",
            "cpu_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
            "torch": torch.__version__}


def read_config(path: str | Path) -> PretrainConfig:
    import yaml

    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except OSError as err:
        raise PretrainConfigError(f"cannot read --config {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise PretrainConfigError(f"--config {path} is not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise PretrainConfigError(f"--config {path} must hold a mapping of settings")
    return PretrainConfig.from_dict(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shoelib.pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file of PretrainConfig settings")
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="override one setting (YAML value), e.g. --set unet_steps 100")
    args = parser.parse_args(argv)
    import yaml
    try:
        config = read_config(args.config)
        if args.set:
            values = config.to_dict()
            values.update({k: yaml.safe_load(v) for k, v in args.set})
            config = PretrainConfig.from_dict(values)
        if not (resolve(config.data_root) / "styles.csv").exists():
            raise PretrainConfigError(f"data_root={config.data_root} holds no styles.csv; "
                                      "point it at the Kaggle dataset's folder")
    except PretrainConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = pretrain(config)
    print(json.dumps({k: summary[k] for k in ("data", "vae", "unet", "encoder", "size_mb",
                                              "wall_seconds")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
