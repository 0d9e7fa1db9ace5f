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
types and then prompts), for the generated images and for the real photos.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

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


def render(pipe, prompts: pd.DataFrame, out_dir: str | Path, *, seed: int, steps: int,
           resolution: int, guidance_scale: float, policy, batch_size: int = 8) -> list[str]:
    """Generate one image per prompt row (seed `seed + i` for row i) into `out_dir/<id>.png`.

    Rendered in batches through 06's render path (`pipeline.generate_checked_batch`): the
    tiny model's images are the same alone or batched, and a batch of 8 costs a fraction of
    8 calls. Images already written are kept, so a rerun resumes.
    """
    from tqdm.auto import tqdm

    from shoelib.io import atomic_path
    from shoelib.pipeline import generate_checked_batch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{i}.png" for i in prompts["id"]]
    todo = [i for i, p in enumerate(paths) if not p.exists()]
    step = policy.batch_size(batch_size)
    with tqdm(total=len(paths), initial=len(paths) - len(todo), desc="base-model check") as bar:
        for start in range(0, len(todo), step):
            chunk = todo[start:start + step]
            results = generate_checked_batch(
                pipe, [prompts["caption"].iloc[i] for i in chunk], [seed + i for i in chunk],
                steps=steps, resolution=resolution, guidance_scale=guidance_scale, policy=policy)
            for i, result in zip(chunk, results, strict=True):
                with atomic_path(paths[i]) as tmp:
                    result.image.save(tmp, format="PNG")
            bar.update(len(chunk))
    return [str(p) for p in paths]


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


def measure(prompts: pd.DataFrame, generated_paths: list[str], encoder_dir: str | Path) -> BaseCheck:
    """Generated images (one per prompt row, same order) and the real photos, measured alike."""
    from shoelib.evaluation import photo_check_table, wilson_interval

    real = prompts.assign(colour=prompts["baseColour"])
    fake = real.assign(image_path=generated_paths)
    frame = prompts[["id", "articleType", "baseColour", "caption"]].copy()
    frame["generated_path"] = generated_paths
    rows = []
    checks_fake = photo_check_table(fake, desc="generated checks")
    checks_real = photo_check_table(real, desc="real checks")
    for label, column in (("passes photo checks", "conforms"), ("colour as asked", "colour_match")):
        frame[f"{column} (generated)"] = checks_fake[column].to_numpy()
        frame[f"{column} (real)"] = checks_real[column].to_numpy()
        rows.append((label, checks_fake[column].dropna(), checks_real[column].dropna()))
    asked = list(prompts["articleType"])
    found_fake = type_predictions(generated_paths, encoder_dir)
    found_real = type_predictions(list(prompts["image_path"]), encoder_dir)
    frame["type found (generated)"], frame["type found (real)"] = found_fake, found_real
    type_fake = pd.Series([float(a == f) for a, f in zip(asked, found_fake, strict=True)])
    type_real = pd.Series([float(a == f) for a, f in zip(asked, found_real, strict=True)])
    rows.append(("article type recognised", type_fake, type_real))
    table = []
    for label, fake_values, real_values in rows:
        shares = [(float(v.mean()), wilson_interval(float(v.mean()), len(v)))
                  for v in (fake_values, real_values)]
        table.append(_row(label, *shares, f"{len(fake_values)} / {len(real_values)}"))
    shares = [mean_over_types(asked, hits.to_numpy()) for hits in (type_fake, type_real)]
    table.append(_row("article type recognised, mean over types", *shares,
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


def _row(label: str, generated: tuple[float, tuple[float, float]],
         real: tuple[float, tuple[float, float]], n: str) -> dict:
    (g, (g_lo, g_hi)), (r, (r_lo, r_hi)) = generated, real
    return {"measure": label, "generated": f"{g:.2f} [{g_lo:.2f}, {g_hi:.2f}]",
            "real photos": f"{r:.2f} [{r_lo:.2f}, {r_hi:.2f}]",
            "generated / real": round(g / r, 2) if r else None, "n": n,
            "generated_value": g, "real_value": r}
