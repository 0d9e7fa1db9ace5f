"""Does the base model work? Prompt it with the captions of photos held out from its
pretraining, and measure its images and those photos the same way (notebook 04).

A model pretrained by `python -m shoelib.pretrain` ships `holdout.csv` (the held-out photos'
ids, article types, colours and captions). The measures:
- the weight-free photo checks of 07 (white background, centred, in frame, plausible size);
- colour faithfulness (dominant foreground colour = the colour asked for / labelled);
- article type: the image encoder's type head (trained on real photos) names the type asked for;
  as a share of all prompts, and as the mean of the per-type shares. The holdout holds each
  type in proportion to the catalogue, so a model that draws only the commonest type (T-shirts)
  scores the majority share on the first; on the second it scores 1 / number of types, chance.
Each is a share with its 95 % interval (Wilson; for the mean over types, a bootstrap over
types and then prompts), for the generated images, for the real photos, and for the real photos
through the model's VAE (encoded and decoded): the ceiling of any image the model makes, so the
gap splits into what the autoencoder loses and what the UNet has not learnt.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from shoelib.paths import resolve
from shoelib.pretrain import HOLDOUT_CSV


@dataclass(frozen=True)
class BaseCheck:
    table: pd.DataFrame      # measure, generated, real, ratio, n
    frame: pd.DataFrame      # one row per prompt: caption, asked type/colour, paths, verdicts
    chance: float            # 1 / number of article types asked for
    majority: float          # share of the commonest asked type


def holdout_prompts(model: str | Path, data_root: str | Path, n: int, seed: int = 0) -> pd.DataFrame | None:
    """Up to `n` held-out rows whose photo is in `data_root/images`, spread over article types
    (round robin over types in a seeded order). None when the model has no holdout.csv."""
    csv = resolve(model) / HOLDOUT_CSV
    if not csv.exists():
        return None
    rows = pd.read_csv(csv)
    images = resolve(data_root) / "images"
    rows = rows[[(images / f"{i}.jpg").exists() for i in rows["id"]]].copy()
    rows["image_path"] = [str(images / f"{i}.jpg") for i in rows["id"]]
    rng = np.random.default_rng(seed)
    rows = rows.iloc[rng.permutation(len(rows))]
    rows["_rank"] = rows.groupby("articleType").cumcount()
    return rows.sort_values(["_rank", "articleType"]).head(n).drop(columns="_rank").reset_index(drop=True)


def _write_missing(prompts: pd.DataFrame, out_dir: str | Path, batch_size: int, desc: str,
                   make) -> list[str]:
    """`out_dir/<id>.png` for every prompt row, in row order: `make(rows)` gives the images of
    up to `batch_size` rows not yet written. Images already written are kept, so a rerun
    resumes."""
    from tqdm.auto import tqdm

    from shoelib.io import atomic_path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{i}.png" for i in prompts["id"]]
    todo = [i for i, p in enumerate(paths) if not p.exists()]
    with tqdm(total=len(paths), initial=len(paths) - len(todo), desc=desc) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            for i, image in zip(chunk, make(chunk), strict=True):
                with atomic_path(paths[i]) as tmp:
                    image.save(tmp, format="PNG")
            bar.update(len(chunk))
    return [str(p) for p in paths]


def render(pipe, prompts: pd.DataFrame, out_dir: str | Path, *, seed: int, steps: int,
           resolution: int, guidance_scale: float, policy, batch_size: int = 8) -> list[str]:
    """Generate one image per prompt row (seed `seed + i` for row i) into `out_dir/<id>.png`.

    Rendered in batches through 06's render path (`pipeline.generate_checked_batch`): the
    tiny model's images are the same alone or batched, and a batch of 8 costs a fraction of
    8 calls. Images already written are kept, so a rerun resumes.
    """
    from shoelib.pipeline import generate_checked_batch

    def make(rows: list[int]) -> list[Image.Image]:
        results = generate_checked_batch(
            pipe, [prompts["caption"].iloc[i] for i in rows], [seed + i for i in rows],
            steps=steps, resolution=resolution, guidance_scale=guidance_scale, policy=policy)
        return [r.image for r in results]

    return _write_missing(prompts, out_dir, policy.batch_size(batch_size), "base-model check", make)


def vae_round_trip(pipe, prompts: pd.DataFrame, out_dir: str | Path, *, resolution: int,
                   batch_size: int = 2) -> list[str]:
    """Each row's real photo letterboxed to `resolution` (as pretraining and 02 fit photos),
    encoded by the pipeline's VAE (posterior mean), decoded, written to `out_dir/<id>.png`.

    The best any image of the model can do once it has passed through its autoencoder: the
    photos measured this way separate what the VAE loses from what the UNet does not learn.
    Images already written are kept, so a rerun resumes. Batches are small for the reason
    diffusers' VAE slicing decodes one image at a time: the VAE at 512 px is memory-hungry.
    """
    import torch

    from shoelib.images import letterbox, open_image
    from shoelib.pretrain import to_unit

    vae = pipe.vae

    def make(rows: list[int]) -> list[Image.Image]:
        photos = [letterbox(open_image(prompts["image_path"].iloc[i], resolution), resolution)
                  for i in rows]
        x = torch.stack([torch.from_numpy(np.array(p)).permute(2, 0, 1) for p in photos])
        with torch.no_grad():
            decoded = vae.decode(vae.encode(to_unit(x).to(vae.device, vae.dtype))
                                 .latent_dist.mode()).sample
        pixels = ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return [Image.fromarray(a) for a in pixels.permute(0, 2, 3, 1).cpu().numpy()]

    return _write_missing(prompts, out_dir, batch_size, "through the VAE", make)


def type_predictions(paths: list[str], encoder_dir: str | Path) -> list[str]:
    """The article type the encoder's head names for each image."""
    import torch

    from shoelib.images import open_rgb
    from shoelib.metrics import EncoderFeatures

    features = EncoderFeatures(resolve(encoder_dir))
    out = []
    for start in range(0, len(paths), 64):
        x = features.tensor([open_rgb(p) for p in paths[start:start + 64]])
        with torch.no_grad():
            logits, _ = features.model(x)
        out += [features.labels["article_types"][i] for i in logits.argmax(1).tolist()]
    return out


def measure(prompts: pd.DataFrame, generated_paths: list[str], encoder_dir: str | Path,
            round_trip_paths: list[str] | None = None) -> BaseCheck:
    """Generated images (one per prompt row, same order) and the real photos, measured alike;
    with `round_trip_paths` (`vae_round_trip`) also the real photos through the model's VAE."""
    from shoelib.evaluation import photo_check_table, wilson_interval

    real = prompts.assign(colour=prompts["baseColour"])
    sets = {"generated": list(generated_paths), "real": list(prompts["image_path"])}
    if round_trip_paths is not None:
        sets["vae"] = list(round_trip_paths)
    frame = prompts[["id", "articleType", "baseColour", "caption"]].copy()
    frame["generated_path"] = generated_paths
    if round_trip_paths is not None:
        frame["vae_path"] = round_trip_paths
    asked = list(prompts["articleType"])
    hits: dict[str, dict[str, pd.Series]] = {}
    for name, paths in sets.items():
        checks = photo_check_table(real.assign(image_path=paths), desc=f"{name} checks")
        found = type_predictions(paths, encoder_dir)
        hits[name] = {"passes photo checks": checks["conforms"],
                      "colour as asked": checks["colour_match"],
                      "article type recognised": pd.Series(
                          [float(a == f) for a, f in zip(asked, found, strict=True)])}
        frame[f"conforms ({name})"] = checks["conforms"].to_numpy()
        frame[f"colour_match ({name})"] = checks["colour_match"].to_numpy()
        frame[f"type found ({name})"] = found
    table = []
    for label in hits["generated"]:
        shares, counts = {}, {}
        for name in sets:
            values = hits[name][label].dropna()
            share, counts[name] = float(values.mean()), len(values)
            shares[name] = (share, wilson_interval(share, len(values)))
        table.append(_row(label, shares, f"{counts['generated']} / {counts['real']}"))
    shares = {name: mean_over_types(asked, hits[name]["article type recognised"].to_numpy())
              for name in sets}
    table.append(_row("article type recognised, mean over types", shares,
                      f"{len(set(asked))} types"))
    counts = pd.Series(asked).value_counts(normalize=True)
    return BaseCheck(pd.DataFrame(table), frame, 1.0 / len(counts), float(counts.iloc[0]))


def mean_over_types(types: list[str], hits: np.ndarray, n_boot: int = 200,
                    seed: int = 0) -> tuple[float, tuple[float, float]]:
    """The mean over types of each type's share of hits, and its 95 % two-stage bootstrap
    interval: the types resampled, then each drawn type's prompts. Resampling prompts within
    types alone would give a type with one prompt no variance, and the demo's check asks for
    most types once."""
    from shoelib.metrics import percentile_interval

    groups = [hits[np.asarray(types) == t] for t in dict.fromkeys(types)]
    rng = np.random.default_rng(seed)
    replicates = []
    for _ in range(n_boot):
        drawn = [groups[i] for i in rng.integers(0, len(groups), len(groups))]
        replicates.append(np.mean([g[rng.integers(0, len(g), len(g))].mean() for g in drawn]))
    return float(np.mean([g.mean() for g in groups])), percentile_interval(np.array(replicates))


COLUMNS = {"generated": "generated", "real": "real photos", "vae": "real photos through the VAE"}


def _row(label: str, shares: dict[str, tuple[float, tuple[float, float]]], n: str) -> dict:
    """One measure: each set's share with its interval, generated / real, and the raw shares
    (`<set>_value`) for code that reads them."""
    row: dict = {"measure": label}
    for name, (value, (lo, hi)) in shares.items():
        row[COLUMNS[name]] = f"{value:.2f} [{lo:.2f}, {hi:.2f}]"
    g, r = shares["generated"][0], shares["real"][0]
    row["generated / real"] = round(g / r, 2) if r else None
    row["n"] = n
    row.update({f"{name}_value": value for name, (value, _) in shares.items()})
    return row
