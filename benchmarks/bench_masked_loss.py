"""Masked loss on the demo: the same LoRA run at several background_loss_weight values, compared
on the validation loss of the product's pixels alone.

    .venv/bin/python -m shoelib.run --profile demo --only 01,02 -p output_root /tmp/masked
    .venv/bin/python benchmarks/bench_masked_loss.py --output-root /tmp/masked
    .venv/bin/python benchmarks/bench_masked_loss.py --output-root /tmp/masked --weights 1 0.1 0 --seeds 42 1 2

Every run takes 05's settings from the profile (configs/<profile>.yaml: model, steps, rate,
batch, seed, ...) and trains on the train split 02 wrote under --output-root, with its masks;
only background_loss_weight differs, so the same seed draws the same data order, latents,
noise and timesteps in every run (--seeds repeats the comparison with other train seeds).
Validation images are not drawn (loss only). Each run writes under
<output-root>/masked_loss/w<weight>_s<seed>/ and resumes from there when rerun.

Printed per run and validation step: the validation loss on every pixel (`val_loss`) and on
the product alone (`val_loss_foreground`, each latent pixel weighted by its share of product in
02's mask). Both use the same fixed latents, noise and timesteps in every run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from shoelib.device import choose_policy, set_cpu_threads
from shoelib.paths import PROJECT_ROOT, RunPaths
from shoelib.train import MIXED_PRECISION_DTYPES, NOTEBOOK_PARAMETERS, TrainConfig, train


def profile_config(profile: str, output_root: Path, weight: float, seed: int | None,
                   steps: int | None) -> TrainConfig:
    """05's TrainConfig as the profile sets it, on the splits under output_root."""
    params = yaml.safe_load((PROJECT_ROOT / "configs" / f"{profile}.yaml").read_text())
    values = {name: params[NOTEBOOK_PARAMETERS.get(name, name)]
              for name in TrainConfig.field_defaults()
              if NOTEBOOK_PARAMETERS.get(name, name) in params}
    paths = RunPaths.from_param(output_root)
    split = paths.processed(params["category"])
    seed = values["seed"] if seed is None else seed
    out = paths.root / "masked_loss" / f"w{weight:g}_s{seed}"
    values.update(model=params["model"], train_dir=split / "train", val_dir=split / "val",
                  output_dir=out, cache_dir=paths.root / "masked_loss" / "cache",
                  background_loss_weight=weight, seed=seed, num_validation_prompts=0,
                  mixed_precision="no")
    if steps is not None:
        values.update(max_train_steps=steps, validation_every=max(1, steps // 4),
                      checkpoint_every=steps, lr_warmup_steps=min(values["lr_warmup_steps"],
                                                                  steps - 1))
    return TrainConfig(**values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-root", type=Path, required=True,
                        help="an output_root where 02_prepare_dataset ran (with masks)")
    parser.add_argument("--profile", default="demo", help="configs/<profile>.yaml (05's settings)")
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0, 0.1],
                        help="background_loss_weight values to compare")
    parser.add_argument("--seeds", type=int, nargs="+", default=[None],
                        help="train seeds (default: the profile's train_seed)")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps (default: the profile's max_train_steps)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    params = yaml.safe_load((PROJECT_ROOT / "configs" / f"{args.profile}.yaml").read_text())
    set_cpu_threads(params.get("cpu_threads", 0))
    policy = choose_policy(params.get("device", "auto"), MIXED_PRECISION_DTYPES["no"])
    rows = []
    for seed in args.seeds:
        for weight in args.weights:
            config = profile_config(args.profile, args.output_root, weight, seed, args.steps)
            result = train(config, policy, progress=False)
            if not result.val_loss_foreground:
                raise SystemExit(f"{config.val_dir} has no masks: rerun 02_prepare_dataset")
            for (step, loss), (_, foreground) in zip(result.val_loss,
                                                     result.val_loss_foreground, strict=True):
                rows.append({"seed": config.seed, "background_loss_weight": weight,
                             "step": step, "val_loss": loss, "val_loss_foreground": foreground})
    print(f"{args.profile} profile, {policy.device} float32, {config.max_train_steps} steps of "
          f"{config.train_batch_size} x {config.gradient_accumulation_steps} images")
    print(f"{'seed':>5} {'background_loss_weight':>22} {'step':>5} {'val_loss':>10} "
          f"{'val_loss_foreground':>20}")
    for row in rows:
        print(f"{row['seed']:>5} {row['background_loss_weight']:>22g} {row['step']:>5} "
              f"{row['val_loss']:>10.5f} {row['val_loss_foreground']:>20.5f}")
    if len(args.seeds) > 1:  # the change from step 0 to the last step, averaged over seeds
        print("mean change over seeds, step 0 -> last")
        for weight in args.weights:
            runs = [[r for r in rows if r["seed"] == s and r["background_loss_weight"] == weight]
                    for s in {r["seed"] for r in rows}]
            for key in ("val_loss", "val_loss_foreground"):
                change = sum(run[-1][key] - run[0][key] for run in runs) / len(runs)
                print(f"  background_loss_weight {weight:g}: {key} {change:+.5f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
