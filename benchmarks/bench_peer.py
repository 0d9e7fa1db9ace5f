"""shoelib's LoRA trainer against diffusers' own train_text_to_image_lora.py, on the same work.

    bash benchmarks/bench_peer.sh          # once: .peer-venv/ with torchvision + datasets
    .peer-venv/bin/python benchmarks/bench_peer.py --repeats 2 [--peer-script PATH] [--json out.json]

The peer is diffusers' examples/text_to_image/train_text_to_image_lora.py at the tag of our
diffusers pin (downloaded from GitHub unless --peer-script names a copy). Both trainers run as
command-line programs under this interpreter (so the same torch), each run in its own process,
on the same work:
- SD 1.5-size UNet/VAE/CLIP with random weights in diffusers layout (built once under --work by
  benchmarks/bench_train.py's builder);
- the same photos: the first --n-images of a prepared split (default: the demo's train split,
  data/demo/processed/casual_shoes/train, made by 02_prepare_dataset), copied with their
  captions into an imagefolder (metadata.jsonl), which both read;
- the same recipe: resolution, batch, LoRA rank with alpha = rank (the peer's script fixes
  alpha to the rank), AdamW at the same constant learning rate, no warm-up, gradient clipping
  at 1.0, random flips, float32 on CPU (bf16 on CUDA), with and without gradient
  checkpointing; the same thread count (OMP_NUM_THREADS) for both.

Figures (medians over --repeats; the runs alternate, so a busy spell hits both trainers):
- steady seconds per step = (t(N2) - t(N1)) / (N2 - N1), t the wall time of a whole run of
  N steps: loading, caching, data set preparation and the final save cancel;
- time to the first step: from launch to the first step on the trainer's progress bar. Each
  trainer keeps its cache of prepared inputs across runs (ours: latents and caption states;
  the peer's: the datasets arrow files of the imagefolder), as a second run on the same photos
  does; one extra first run per trainer starts with an empty cache and gives the cold figure;
- peak RSS of each run's process (its rusage), and ratios ours/peer.
Both trainers inherit this process's environment, so glibc's allocator settings apply to both
alike: `MALLOC_MMAP_THRESHOLD_=1048576 .peer-venv/bin/python benchmarks/bench_peer.py ...`
serves every allocation of 1 MB or more from its own mapping, returned to the system when
freed, instead of from the heap, where freed activations fragment it (the setting is printed
and recorded).
shoelib's own in-loop step times (from its last checkpoint) are shown beside, as a check of
the difference method.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PEER_TAG = "v0.42.1"  # the tag of diffusers==0.42.1 (pyproject.toml)
PEER_URL = ("https://raw.githubusercontent.com/huggingface/diffusers/"
            f"{PEER_TAG}/examples/text_to_image/train_text_to_image_lora.py")
DEFAULT_IMAGES = PROJECT_ROOT / "data" / "demo" / "processed" / "casual_shoes" / "train"
# Each trainer's progress bar (tqdm: "<desc>: 12%|##  | 1/8 [...]"): the first step is done
# when it reads 1/N.
STEP_BARS = {"ours": "LoRA steps", "peer": "Steps"}
TRAINERS = {"ours": "shoelib", "peer": "diffusers script"}
SPEED_TARGET, MEMORY_TARGET = 1.3, 0.85  # peer s/step over ours; ours peak RSS over the peer's


class BenchError(RuntimeError):
    """A trainer run failed; the message holds its command and the end of its output."""


@dataclass(frozen=True)
class Recipe:
    """What both trainers are told to do."""

    resolution: int = 256
    batch_size: int = 1
    rank: int = 8           # LoRA alpha = rank on both sides (the peer's script fixes it so)
    learning_rate: float = 1e-4
    gradient_checkpointing: bool = False
    device: str = "cpu"     # cpu: float32; cuda: bf16 mixed precision (our policy's choice)
    seed: int = 42
    torch_compile: bool = False  # ours only, where TrainConfig has the switch

    @property
    def mixed_precision(self) -> str:
        return "bf16" if self.device == "cuda" else "no"


def ours_config(recipe: Recipe, model: Path, data: Path, out: Path, steps: int,
                cache: Path) -> dict:
    """shoelib.train.TrainConfig fields for `recipe`: no validation, no warm-up, no accumulation."""
    compile_field = {"torch_compile": True} if recipe.torch_compile else {}
    return {"model": str(model), "train_dir": str(data), "output_dir": str(out),
            "cache_dir": str(cache), "resolution": recipe.resolution,
            "max_train_steps": steps, "lora_rank": recipe.rank,
            "lora_alpha": float(recipe.rank), "learning_rate": recipe.learning_rate,
            "lr_scheduler": "constant", "lr_warmup_steps": 0,
            "train_batch_size": recipe.batch_size, "gradient_accumulation_steps": 1,
            "max_grad_norm": 1.0, "random_flip": True,
            "gradient_checkpointing": recipe.gradient_checkpointing, "validation_every": 0,
            "checkpoint_every": 0, "checkpoints_to_keep": 1, "device": recipe.device,
            "seed": recipe.seed, **compile_field}


def ours_command(config_file: Path) -> list[str]:
    return ["-m", "shoelib.train", "--config", str(config_file)]


def peer_command(script: Path, recipe: Recipe, model: Path, data: Path, out: Path,
                 steps: int, cache: Path) -> list[str]:
    """The peer's command line for `recipe` (its defaults: AdamW, weight decay 1e-2 as
    torch's, eps 1e-8, clipping at 1.0; checkpoints pushed past the run)."""
    cmd = [str(script), "--pretrained_model_name_or_path", str(model),
           "--train_data_dir", str(data), "--image_column", "image", "--caption_column", "text",
           "--resolution", str(recipe.resolution), "--train_batch_size", str(recipe.batch_size),
           "--gradient_accumulation_steps", "1", "--max_train_steps", str(steps),
           "--learning_rate", repr(recipe.learning_rate), "--lr_scheduler", "constant",
           "--lr_warmup_steps", "0", "--rank", str(recipe.rank), "--max_grad_norm", "1.0",
           "--random_flip", "--seed", str(recipe.seed), "--dataloader_num_workers", "0",
           "--checkpointing_steps", str(steps + 1), "--mixed_precision", recipe.mixed_precision,
           "--output_dir", str(out), "--cache_dir", str(cache)]
    if recipe.gradient_checkpointing:
        cmd.append("--gradient_checkpointing")
    return cmd


def steady_seconds_per_step(short: tuple[int, float], long: tuple[int, float]) -> float:
    """Seconds per step from two whole runs (steps, wall seconds): what the longer run spent
    on its extra steps. Loading, caching and saving, the same in both runs, cancel."""
    (n1, t1), (n2, t2) = short, long
    if n2 <= n1:
        raise ValueError(f"the longer run must have more steps ({n1} then {n2})")
    return (t2 - t1) / (n2 - n1)


def step_counts(text: str) -> tuple[int, int]:
    """--steps 'N1,N2': two whole numbers, 1 <= N1 < N2."""
    try:
        n1, n2 = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--steps {text!r} must be two step counts, e.g. 2,8") from None
    if not 1 <= n1 < n2:
        raise argparse.ArgumentTypeError(
            f"--steps {text!r} needs 1 <= N1 < N2 (the difference of the two runs is timed), "
            "e.g. 2,8")
    return n1, n2


def child_env(threads: int, work: Path) -> dict[str, str]:
    """Both trainers' environment: the same threads, offline, our shoelib first on the path."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(PROJECT_ROOT),
                "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "HF_HOME": str(work / "hf-home"), "TOKENIZERS_PARALLELISM": "false"})
    return env


def launch(target: list[str], env: dict[str, str], bar: str) -> dict:
    """Run `target` (a script and its arguments, or -m module ...) under this interpreter in a
    child process; its wall time, time to the first step on progress bar `bar`, peak RSS and
    peak CUDA memory.

    Raises:
        BenchError: the run failed (the message ends with its last output lines).
    """
    first_step = re.compile(rb"(?:^|[\r\n])" + re.escape(bar.encode()) + rb": +\d+%\|[^|\r\n]*\| *1/\d+ ")
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", *target], env=env,
                            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log, first = bytearray(), None
    while chunk := os.read(proc.stdout.fileno(), 1 << 16):
        log += chunk
        if first is None and first_step.search(log):
            first = time.perf_counter() - started
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.stdout.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.decode(errors="replace")
    if proc.returncode:
        tail = "\n".join(text.replace("\r", "\n").splitlines()[-25:])
        raise BenchError(f"{' '.join(target)} exited with {proc.returncode}:\n{tail}")
    child = [json.loads(line.removeprefix("CHILD ")) for line in text.splitlines()
             if line.startswith("CHILD ")]
    return {"wall_seconds": wall, "first_step_seconds": first,
            "peak_rss_bytes": usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024),
            "peak_cuda_bytes": child[-1]["peak_cuda_bytes"] if child else None}


def child(target: list[str]) -> int:
    """Run a trainer in this process, then print its peak CUDA memory (no other process can
    read it)."""
    import runpy

    code = 0
    try:
        if target[0] == "-m":
            sys.argv = [target[1], *target[2:]]
            runpy.run_module(target[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(target)
            runpy.run_path(target[0], run_name="__main__")
    except SystemExit as done:  # as the interpreter would: a text code is printed, exit 1
        if done.code is not None and not isinstance(done.code, int):
            print(done.code, file=sys.stderr)
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    torch = sys.modules.get("torch")  # every trainer imports it; importing it here would cost
    cuda = torch.cuda.max_memory_allocated() if torch and torch.cuda.is_available() else None
    print("CHILD " + json.dumps({"peak_cuda_bytes": cuda}), flush=True)
    return code


def child_profile(config_file: str) -> int:
    """Our trainer in this process under torch.profiler: where CPU time and memory go, against
    the UNet's weights (the floor of any float32 trainer)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from shoelib.train import TrainConfig, train

    config = TrainConfig.from_json(Path(config_file))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        train(config, progress=False)
    ops = prof.key_averages()
    print(ops.table(sort_by="self_cpu_time_total", row_limit=12))
    print(ops.table(sort_by="self_cpu_memory_usage", row_limit=12))
    weights = sum(f.stat().st_size for f in (Path(config.model) / "unet").glob("*.safetensors"))
    peak = resource_peak_rss()
    print(f"peak RSS {peak / 1e9:.2f} GB, of which the UNet's float32 weights {weights / 1e9:.2f} "
          f"GB; the rest ({(peak - weights) / 1e9:.2f} GB): torch and the libraries, "
          f"activations kept for the backward pass, the LoRA's gradients and AdamW state; "
          f"torch {torch.__version__}")
    return 0


def resource_peak_rss() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


# --- the work both trainers get

def check_interpreter() -> None:
    """The peer's script imports torchvision and datasets; say how to get them if absent."""
    absent = [m for m in ("torchvision", "datasets") if importlib.util.find_spec(m) is None]
    if absent:
        raise SystemExit(
            f"this interpreter ({sys.executable}) has no {' or '.join(absent)}, which diffusers' "
            "script needs: build the peer venv with `bash benchmarks/bench_peer.sh` and run "
            "`.peer-venv/bin/python benchmarks/bench_peer.py`")


def peer_script(path: Path | None, work: Path) -> Path:
    """--peer-script, or the script downloaded at PEER_TAG into --work (once)."""
    if path is not None:
        if not path.is_file():
            raise SystemExit(f"--peer-script {path} is not a file; pass the path of diffusers' "
                             "examples/text_to_image/train_text_to_image_lora.py")
        return path.resolve()
    target = work / "peer" / "train_text_to_image_lora.py"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with urllib.request.urlopen(PEER_URL, timeout=60) as response:
                body = response.read()
        except (urllib.error.URLError, OSError) as err:
            raise SystemExit(f"cannot download {PEER_URL} ({getattr(err, 'reason', err)}); "
                             "download it where there is network and pass --peer-script PATH") from None
        target.write_bytes(body)
    return target


def prepare_images(source: Path, dest: Path, n: int) -> Path:
    """The first `n` photos of a prepared split, with their captions, as an imagefolder both
    trainers read (metadata.jsonl with file_name and text only)."""
    from shoelib.dataset import DatasetError, MissingInputError, read_split

    try:
        rows = read_split(source)
    except (MissingInputError, DatasetError) as err:
        raise SystemExit(f"--images {source}: {err}; or pass --images DIR (a split folder "
                         "with metadata.jsonl, as 02_prepare_dataset writes)") from None
    if len(rows) < n:
        raise SystemExit(f"--images {source} holds {len(rows)} photos; --n-images {n} needs "
                         f"{n}: lower --n-images or pass a larger split")
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    lines = []
    for _, row in rows.head(n).iterrows():
        shutil.copyfile(row["image_path"], dest / row["file_name"])
        lines.append(json.dumps({"file_name": row["file_name"], "text": row["text"]}) + "\n")
    (dest / "metadata.jsonl").write_text("".join(lines), encoding="utf-8")
    return dest


# --- running and combining

def run_once(trainer: str, recipe: Recipe, steps: int, model: Path, data: Path, script: Path,
             work: Path, threads: int) -> dict:
    """One whole training run of `steps` steps in a fresh output folder; the trainer's cache
    (work/cache/<trainer>) is kept."""
    out = work / "runs" / f"{trainer}-{steps}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cache = work / "cache" / trainer
    if trainer == "ours":
        config_file = out.with_suffix(".json")
        config_file.write_text(json.dumps(ours_config(recipe, model, data, out, steps, cache)))
        target = ours_command(config_file)
    else:
        target = peer_command(script, recipe, model, data, out, steps, cache)
    run = launch(target, child_env(threads, work), STEP_BARS[trainer])
    run["steps"] = steps
    if trainer == "ours":  # its own clock, for comparison with the difference method
        state = json.loads((out / "checkpoints" / f"step_{steps:06d}" / "state.json").read_text())
        run["in_loop_step_seconds"] = state["history"]["step_seconds"]
    shutil.rmtree(out, ignore_errors=True)
    return run


def combine(runs: list[dict], counts: tuple[int, int]) -> dict:
    """Medians over repeats: steady s/step (difference of each repeat's two runs), time to
    the first step, peak RSS and peak CUDA memory over all runs."""
    n1, n2 = counts
    short = [r for r in runs if r["steps"] == n1]
    long = [r for r in runs if r["steps"] == n2]
    steady = [steady_seconds_per_step((n1, a["wall_seconds"]), (n2, b["wall_seconds"]))
              for a, b in zip(short, long, strict=True)]
    firsts = [r["first_step_seconds"] for r in runs if r["first_step_seconds"] is not None]
    cuda = [r["peak_cuda_bytes"] for r in runs if r["peak_cuda_bytes"] is not None]
    out = {"seconds_per_step": statistics.median(steady), "seconds_per_step_repeats": steady,
           "first_step_seconds": statistics.median(firsts) if firsts else None,
           "peak_rss_bytes": int(statistics.median(r["peak_rss_bytes"] for r in runs)),
           "peak_cuda_bytes": int(statistics.median(cuda)) if cuda else None, "runs": runs}
    in_loop = [s for r in long for s in r.get("in_loop_step_seconds", [])[n1:]]
    if in_loop:  # the long runs' steps after the short run's count: the same steady steps
        out["in_loop_seconds_per_step"] = statistics.median(in_loop)
    return out


def compare(ours: dict, peer: dict) -> dict:
    """ours/peer ratios, and the peer's s/step over ours (the speed-up)."""
    ratios = {"speedup": peer["seconds_per_step"] / ours["seconds_per_step"],
              "peak_rss": ours["peak_rss_bytes"] / peer["peak_rss_bytes"]}
    if ours["first_step_seconds"] and peer["first_step_seconds"]:
        ratios["first_step"] = ours["first_step_seconds"] / peer["first_step_seconds"]
    if ours["peak_cuda_bytes"] and peer["peak_cuda_bytes"]:
        ratios["peak_cuda"] = ours["peak_cuda_bytes"] / peer["peak_cuda_bytes"]
    return ratios


def report_run(run: dict) -> None:
    """One run's raw figures as they come (stderr), so a long benchmark shows its progress."""
    first = run["first_step_seconds"]
    print(f"    {run['wall_seconds']:.1f} s in all, first step at "
          f"{f'{first:.1f} s' if first else '-'}, peak RSS {run['peak_rss_bytes'] / 1e9:.2f} GB",
          file=sys.stderr, flush=True)


def benchmark(recipe: Recipe, counts: tuple[int, int], repeats: int, model: Path, data: Path,
              script: Path | None, work: Path, threads: int, cold: bool = False) -> dict:
    """Both trainers (ours alone when `script` is None) at both step counts, `repeats` times,
    alternating; their combined figures and ratios. `cold`: first empty the caches and run
    each trainer once more at the short count, for its time to the first step from nothing."""
    trainers = ("ours", "peer") if script is not None else ("ours",)
    colds = {}
    if cold:
        shutil.rmtree(work / "cache", ignore_errors=True)
        for trainer in trainers:
            print(f"  {TRAINERS[trainer]}: {counts[0]} steps, empty cache", file=sys.stderr,
                  flush=True)
            colds[trainer] = run_once(trainer, recipe, counts[0], model, data, script, work,
                                      threads)
            report_run(colds[trainer])
    runs: dict[str, list[dict]] = {t: [] for t in trainers}
    for _ in range(repeats):
        for steps in counts:
            for trainer in trainers:
                print(f"  {TRAINERS[trainer]}: {steps} steps, gradient checkpointing "
                      f"{'on' if recipe.gradient_checkpointing else 'off'}", file=sys.stderr, flush=True)
                runs[trainer].append(run_once(trainer, recipe, steps, model, data, script,
                                              work, threads))
                report_run(runs[trainer][-1])
    result = {t: combine(runs[t], counts) for t in trainers}
    for trainer, run in colds.items():
        result[trainer]["cold_run"] = run
    if script is not None:
        result["ours_over_peer"] = compare(result["ours"], result["peer"])
    return result


def print_table(summary: dict) -> None:
    r, (n1, n2) = summary["recipe"], summary["steps"]
    print(f"\nLoRA training, SD 1.5 architecture (random weights), {r['resolution']} px, batch "
          f"{r['batch_size']}, rank {r['rank']} (alpha {r['rank']}), AdamW lr "
          f"{r['learning_rate']:g}, {summary['precision']} on {r['device']}, "
          f"{summary['threads']} threads, {summary['n_images']} photos; steady s/step = "
          f"(t({n2}) - t({n1})) / {n2 - n1}; medians of {summary['repeats']} repeat(s); "
          f"allocator: {' '.join(f'{k}={v}' for k, v in summary['allocator'].items()) or 'glibc defaults'}")
    print(f"{'grad ckpt':<11}{'trainer':<19}{'s/step':>8}{'in-loop':>9}{'first step s':>14}"
          f"{'(cold)':>8}{'peak RSS GB':>13}")
    for tag, result in summary["results"].items():
        for trainer in ("ours", "peer"):
            if trainer not in result:
                continue
            x = result[trainer]
            in_loop = x.get("in_loop_seconds_per_step")
            first = x["first_step_seconds"]
            cold = x.get("cold_run", {}).get("first_step_seconds")
            print(f"{tag:<11}{TRAINERS[trainer]:<19}{x['seconds_per_step']:>8.2f}"
                  f"{f'{in_loop:.2f}' if in_loop else '-':>9}"
                  f"{f'{first:.1f}' if first else '-':>14}{f'{cold:.1f}' if cold else '':>8}"
                  f"{x['peak_rss_bytes'] / 1e9:>13.2f}")
        if "ours_over_peer" in result:
            q = result["ours_over_peer"]
            first = q.get("first_step")
            print(f"{tag:<11}{'ours/peer':<19}{1 / q['speedup']:>8.2f}{'':>9}"
                  f"{f'{first:.2f}' if first else '-':>14}{'':>8}{q['peak_rss']:>13.2f}")
    for tag, result in summary["results"].items():
        if "ours_over_peer" not in result:
            continue
        q = result["ours_over_peer"]
        print(f"gradient checkpointing {tag}: {q['speedup']:.2f}x faster per steady step "
              f"(target >= {SPEED_TARGET}x: {'met' if q['speedup'] >= SPEED_TARGET else 'missed'}), "
              f"peak RSS {q['peak_rss']:.2f}x the peer's (target <= {MEMORY_TARGET}: "
              f"{'met' if q['peak_rss'] <= MEMORY_TARGET else 'missed'})")


def allocator_settings() -> dict[str, str]:
    """glibc malloc tunables in this environment (both trainers inherit them)."""
    return {k: v for k, v in sorted(os.environ.items())
            if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"}


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer-script", type=Path,
                        help="diffusers' train_text_to_image_lora.py (default: download the "
                             f"{PEER_TAG} copy into --work)")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES,
                        help="a prepared split (metadata.jsonl + images); default: the demo's "
                             "train split")
    parser.add_argument("--n-images", type=int, default=32, help="photos trained on")
    parser.add_argument("--steps", type=step_counts, default=(2, 8),
                        help="N1,N2: step counts of the two runs whose difference is timed")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each count per trainer")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (alpha = rank)")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--checkpointing", choices=("off", "on", "both"), default="both",
                        help="gradient checkpointing in both trainers")
    parser.add_argument("--threads", type=int, default=2,
                        help="OMP/MKL threads of both trainers")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cpu: float32; cuda: bf16 mixed precision")
    parser.add_argument("--work", type=Path, default=Path("/tmp/shoelib-bench-peer"),
                        help="model (4.3 GB, built once), photos, runs")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--skip-cold", action="store_true",
                        help="keep the trainers' input caches: no empty-cache first runs")
    parser.add_argument("--profile", action="store_true",
                        help="instead: our trainer once (--steps N2) under torch.profiler, "
                             "where its time and memory go")
    args = parser.parse_args(argv)
    for name in ("n_images", "repeats", "resolution", "batch_size", "rank", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.learning_rate <= 0:
        parser.error("--learning-rate must be > 0, e.g. 1e-4")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_interpreter()
    import diffusers
    import torch
    from bench_train import build_sd15_random

    args.work.mkdir(parents=True, exist_ok=True)
    data = prepare_images(args.images, args.work / "train", args.n_images)
    model = build_sd15_random(args.work / "sd15-random")
    tags = {"off": (False,), "on": (True,), "both": (False, True)}[args.checkpointing]
    base = Recipe(resolution=args.resolution, batch_size=args.batch_size, rank=args.rank,
                  learning_rate=args.learning_rate, device=args.device)
    if args.profile:
        for checkpointing in tags:
            recipe = Recipe(**{**asdict(base), "gradient_checkpointing": checkpointing})
            out = args.work / "runs" / "profile"
            shutil.rmtree(out, ignore_errors=True)
            config_file = args.work / "runs" / "profile.json"
            config_file.parent.mkdir(parents=True, exist_ok=True)
            config_file.write_text(json.dumps(ours_config(
                recipe, model, data, out, args.steps[1], args.work / "cache" / "ours")))
            print(f"\nshoelib, gradient checkpointing {'on' if checkpointing else 'off'}, "
                  f"{args.steps[1]} steps under torch.profiler:", flush=True)
            subprocess.run([sys.executable, __file__, "--child-profile", str(config_file)],
                           env=child_env(args.threads, args.work), cwd=PROJECT_ROOT, check=True)
        return 0
    script = peer_script(args.peer_script, args.work)
    results = {}
    summary = {"recipe": asdict(base), "steps": list(args.steps), "repeats": args.repeats,
               "threads": args.threads, "n_images": args.n_images,
               "precision": "bf16" if args.device == "cuda" else "float32",
               "torch": torch.__version__, "diffusers": diffusers.__version__,
               "peer_script": {"path": str(script), "sha256": file_sha256(script)},
               "allocator": allocator_settings(), "results": results}
    for checkpointing in tags:
        recipe = Recipe(**{**asdict(base), "gradient_checkpointing": checkpointing})
        results["on" if checkpointing else "off"] = benchmark(
            recipe, args.steps, args.repeats, model, data, script, args.work, args.threads,
            cold=not results and not args.skip_cold)
        if args.json:  # after each setting: a long benchmark cut short keeps what it measured
            args.json.write_text(json.dumps(summary, indent=2))
    print_table(summary)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.exit(child(sys.argv[2:]))
    if sys.argv[1:2] == ["--child-profile"]:
        sys.exit(child_profile(sys.argv[2]))
    try:
        sys.exit(main())
    except BenchError as err:
        sys.exit(f"error: {err}")
