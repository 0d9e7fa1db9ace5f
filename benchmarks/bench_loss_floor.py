"""How much of 05's validation loss can a LoRA remove on the demo model?

    .venv/bin/python benchmarks/bench_loss_floor.py --catalog <Kaggle-layout folder>
        [--category "Casual Shoes"] [--similar "Sports Shoes,Formal Shoes,..."] [--n 200]
        [--repeats 4] [--model assets/models/catalog-sd-64]

The base model's fixed-noise diffusion loss (epsilon MSE, uniform timesteps, the same noise and
timesteps for every set; photos letterboxed to the model's resolution as its pretraining did):
- on its held-out photos (`holdout.csv`: article types it was trained on, photos it never saw),
  all of them and those of the types most like the category (`--similar`, the demo's other
  footwear by default: shoes are simpler images than clothes worn by a model);
- on photos of the category left out of its pretraining (the concept the demo's LoRA learns),
  captioned with the same template.
A LoRA teaches the left-out category; at best it brings that loss down to the held-out level of
the types the model did learn, so the gap between the two is the loss it can remove. Each loss
is measured twice: with the latents at the VAE posterior mean, and at a posterior sample, as 05
trains and validates. Prints each mean with its standard error, and the gap as a share.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from shoelib.device import choose_policy
from shoelib.paths import PROJECT_ROOT
from shoelib.pipeline import load_pipeline
from shoelib.pretrain import (
    HOLDOUT_CSV,
    PretrainConfig,
    load_pixels,
    noise_scheduler,
    select_rows,
    to_unit,
)


@torch.no_grad()
def losses(pipe, pixels: torch.Tensor, captions: list[str], repeats: int,
           seed: int = 0) -> dict[str, np.ndarray]:
    """Per-image epsilon MSE, `repeats` noise draws each, for posterior means and samples."""
    ids = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    states = pipe.text_encoder(ids).last_hidden_state
    dist = pipe.vae.encode(to_unit(pixels)).latent_dist
    scale = pipe.vae.config.scaling_factor
    scheduler = noise_scheduler()
    generator = torch.Generator().manual_seed(seed)
    out = {"posterior mean": [], "posterior sample": []}
    for _ in range(repeats):
        eps = torch.randn(dist.mean.shape, generator=generator)
        noise = torch.randn(dist.mean.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(captions),),
                          generator=generator)
        for name, z0 in (("posterior mean", dist.mean * scale),
                         ("posterior sample", (dist.mean + dist.std * eps) * scale)):
            pred = pipe.unet(scheduler.add_noise(z0, noise, t), t,
                             encoder_hidden_states=states).sample
            out[name].append(((pred - noise) ** 2).mean((1, 2, 3)).numpy())
    return {name: np.concatenate(v) for name, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--catalog", required=True, help="Kaggle-layout folder (styles.csv + images/)")
    parser.add_argument("--category", default="Casual Shoes", help="the category left out of pretraining")
    parser.add_argument("--similar", default="Sports Shoes,Formal Shoes,Sandals,Flip Flops,Heels,Flats",
                        help="comma-separated article types most like the category")
    parser.add_argument("--model", default=str(PROJECT_ROOT / "assets/models/catalog-sd-64"))
    parser.add_argument("--n", type=int, default=200, help="photos of the left-out category")
    parser.add_argument("--repeats", type=int, default=4, help="noise draws per photo")
    args = parser.parse_args()
    catalog, model = Path(args.catalog), Path(args.model)
    if not (catalog / "styles.csv").exists():
        raise SystemExit(f"--catalog {catalog}: no styles.csv there; pass a Kaggle-layout folder")
    if not (model / HOLDOUT_CSV).exists():
        raise SystemExit(f"--model {model}: no {HOLDOUT_CSV}; pass a model from shoelib.pretrain")

    pipe = load_pipeline(str(model), choose_policy("cpu", "float32"))
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    holdout = pd.read_csv(model / HOLDOUT_CSV)
    rows, _ = select_rows(PretrainConfig(data_root=str(catalog), exclude_categories=()))
    left_out = rows[rows["articleType"] == args.category].head(args.n)
    if left_out.empty:
        raise SystemExit(f"--category {args.category!r}: no photos of it in {catalog}")
    similar = holdout[holdout["articleType"].isin([t.strip() for t in args.similar.split(",")])]
    if similar.empty:
        raise SystemExit(f"--similar {args.similar!r}: none of these types is in {HOLDOUT_CSV}")
    sets = {"held-out photos, all pretraining types": holdout,
            "held-out photos, similar types": similar,
            f"{args.category} (left out of pretraining)": left_out}
    print(f"model {model.name} at {resolution} px; {args.repeats} noise draws per photo")
    results = {}
    for name, frame in sets.items():
        pixels = load_pixels(catalog, frame["id"].tolist(), resolution)
        results[name] = losses(pipe, pixels, frame["caption"].tolist(), args.repeats)
        for latents, values in results[name].items():
            print(f"{name}, n={len(frame)}, {latents}: loss {values.mean():.4f} "
                  f"± {values.std(ddof=1) / np.sqrt(len(values)):.4f}")
    *seen_sets, unseen = results.values()
    for name, seen in zip(list(sets)[:-1], seen_sets, strict=True):
        for latents in seen:
            gap = unseen[latents].mean() - seen[latents].mean()
            error = np.hypot(*(v[latents].std(ddof=1) / np.sqrt(len(v[latents]))
                               for v in (seen, unseen)))
            print(f"{latents}: left-out minus {name}: {gap:+.4f} ± {error:.4f}, "
                  f"{100 * gap / unseen[latents].mean():+.1f} % of the left-out category's loss")
    mean, sample = (seen_sets[0][latents].mean() for latents in ("posterior mean", "posterior sample"))
    print(f"a posterior sample instead of the mean raises the held-out loss by "
          f"{100 * (sample / mean - 1):.0f} % ({mean:.4f} -> {sample:.4f})")


if __name__ == "__main__":
    main()
