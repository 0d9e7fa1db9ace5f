"""Synthetic generation: the prompt plan, LoRA lookup, checked PNGs, resuming, sharding."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from shoelib import generate as G
from shoelib.io import FolderInUseError
from shoelib.lora_io import LoraFileError
from shoelib.paths import CONFIGS_DIR, PROJECT_ROOT, RunPaths

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CATEGORY = "Casual Shoes"
DEMO_PROFILE = yaml.safe_load((CONFIGS_DIR / "demo.yaml").read_text())
SPLIT_ROWS = [("Black", "Men", "Summer"), ("Black", "Men", "Fall"), ("Black", "Women", "Summer"),
              ("Brown", "Men", "Winter"), ("Navy Blue", "Unisex", "Summer"), ("NA", "Men", "")]




@pytest.fixture(scope="module")
def output_root(tmp_path_factory) -> Path:
    """An output_root whose processed train split has six captioned images."""
    root = tmp_path_factory.mktemp("out")
    train = RunPaths(root).processed(CATEGORY) / "train"
    train.mkdir(parents=True)
    lines = []
    for i, (colour, gender, season) in enumerate(SPLIT_ROWS):
        Image.new("RGB", (64, 64), (255, 255, 255)).save(train / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": f"photo {i}", "colour": colour,
                                 "gender": gender, "season": season}))
    (train / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def plan_config(output_root) -> G.PromptPlanConfig:
    return G.plan_config_from_split(RunPaths(output_root).processed(CATEGORY) / "train",
                                    n_images=5, seed=7, article=CATEGORY)


def gen_config(tiny_sd_dir, lora=None, **kw) -> G.GenerateConfig:
    settings = dict(model=str(tiny_sd_dir), lora_path=lora, steps=2, resolution=64, batch_size=4,
                    device="cpu", scheduler="dpm++")
    return G.GenerateConfig(**{**settings, **kw})


def pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("[0-9]*.png"))


# --- the plan


def test_plan_is_deterministic_prefix_stable_and_follows_weights():
    config = G.PromptPlanConfig(n_images=2000, seed=3, colours=(("Black", 0.6), ("Red", 0.4)),
                                genders=(("Men", 1.0),), seasons=(("Summer", 0.5), ("Fall", 0.5)))
    plan = G.make_plan(config)
    assert plan == G.make_plan(config)
    assert G.make_plan(replace(config, n_images=10)) == plan[:10]
    assert G.make_plan(replace(config, seed=4))[:10] != plan[:10]
    share = np.mean([p.colour == "Black" for p in plan])
    assert share == pytest.approx(0.6, abs=0.03)
    assert len({p.seed for p in plan}) == len(plan)
    assert {p.view for p in plan} == set(G.VIEW_PHRASES)
    assert plan[0].file_name == "000000.png"
    first = plan[0]
    assert f"of {first.colour.lower()} casual shoes, {first.season} collection" in first.prompt


def test_plan_config_from_split_uses_real_or_uniform_colours(output_root, plan_config):
    assert plan_config.colours == (("Black", 0.6), ("Brown", 0.2), ("Navy Blue", 0.2))
    assert dict(plan_config.seasons) == {"Summer": 0.6, "Fall": 0.2, "Winter": 0.2}
    uniform = G.plan_config_from_split(RunPaths(output_root).processed(CATEGORY) / "train",
                                       n_images=3, seed=1, colour_distribution="uniform")
    assert [w for _, w in uniform.colours] == pytest.approx([1 / 3] * 3, abs=1e-5)
    with pytest.raises(G.GenerateConfigError, match="colour_distribution='balanced'"):
        G.attribute_weights(["Black"], "balanced")


@pytest.mark.parametrize("template, message", [
    ("{colour} shoes in {style}", "unknown placeholder"),
    ("casual shoes, {season}", "no {colour}"),
    ("{colour shoes", "malformed"),
])
def test_bad_prompt_template_is_named(template, message):
    config = G.PromptPlanConfig(n_images=1, seed=0, colours=(("Black", 1.0),), template=template)
    with pytest.raises(G.GenerateConfigError, match=message):
        config.check()


def test_bad_generation_settings_fail_before_loading(tiny_sd_dir):
    with pytest.raises(G.GenerateConfigError, match="scheduler='dpm'"):
        gen_config(tiny_sd_dir, scheduler="dpm").check()
    # Errors name 06's parameters, not the config's field names.
    with pytest.raises(ValueError, match="^generation_steps=0 must be a whole number >= 1"):
        gen_config(tiny_sd_dir, steps=0).check()
    with pytest.raises(G.GenerateConfigError, match="^generation_batch_size=0 must be"):
        gen_config(tiny_sd_dir, batch_size=0).check()
    with pytest.raises(G.GenerateConfigError, match="^lora_strength='abc'"):
        gen_config(tiny_sd_dir, lora_strength="abc").check()
    with pytest.raises(ValueError, match="resolution=500"):
        gen_config(tiny_sd_dir, resolution=500).check()
    with pytest.raises(G.LoraNotFoundError, match="05_train_lora"):
        gen_config(tiny_sd_dir, lora=Path("/nowhere/lora.safetensors")).check()


def _params_06(output_root, **overrides) -> dict:
    """Notebook 06's parameters cell, with `overrides` as papermill would inject them."""
    import ast

    import nbformat

    nb = nbformat.read(PROJECT_ROOT / "notebooks" / "06_generate.ipynb", as_version=4)
    params = {}
    for line in nb.cells[1].source.splitlines():
        code = line.partition("  #")[0]
        if "=" in code:
            name, _, value = code.partition("=")
            params[name.strip()] = ast.literal_eval(value.strip())
    return {**params, "output_root": str(output_root), "lora_path": "none", **overrides}


def test_06_and_the_command_line_share_one_parameter_mapping_without_defaults(output_root):
    source = (PROJECT_ROOT / "notebooks" / "06_generate.ipynb").read_text()
    assert "G.configs_from_params(" in source and "GenerateConfig(" not in source
    params = _params_06(output_root)
    plan_config, gen, out_dir = G.configs_from_params(params)
    assert gen.batch_size == params["generation_batch_size"] == 8  # the notebook's, not 4
    assert (gen.steps, plan_config.seed) == (params["generation_steps"], params["generation_seed"])
    assert out_dir == RunPaths(output_root).synthetic / "demo"
    del params["generation_batch_size"]
    with pytest.raises(G.GenerateConfigError, match="generation_batch_size are not set"):
        G.configs_from_params(params)


def test_06_values_are_checked_before_any_file_is_read(tmp_path):
    # output_root has no train split and no LoRA: a bad value must be named first.
    for name, value in (("n_images", 0), ("generation_seed", "abc"), ("view_phrases", "side"),
                        ("generation_steps", 0)):
        with pytest.raises(ValueError, match=f"^{name}="):
            G.configs_from_params(_params_06(tmp_path, **{name: value}))
    with pytest.raises(FileNotFoundError):
        G.configs_from_params(_params_06(tmp_path))


@pytest.mark.parametrize("name, cls", [("dpm++", "DPMSolverMultistepScheduler"),
                                       ("euler", "EulerDiscreteScheduler"),
                                       ("ddim", "DDIMScheduler"), ("model", "PNDMScheduler")])
def test_scheduler_names_keep_the_model_noise_schedule(name, cls):
    from types import SimpleNamespace

    from diffusers import PNDMScheduler

    from shoelib.tiny_sd import SD15_SCHEDULER

    pipe = SimpleNamespace(scheduler=PNDMScheduler.from_config(SD15_SCHEDULER))
    G.set_scheduler(pipe, name)
    assert type(pipe.scheduler).__name__ == cls
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert pipe.scheduler.config.beta_end == SD15_SCHEDULER["beta_end"]


@pytest.mark.parametrize("source", ["embedded model", "tiny model"])
def test_ddim_keeps_predicted_latents_beyond_one(source):
    """SD 1.5's scheduler config sets clip_sample false. Without it DDIM's default clips every
    step's predicted latents to [-1, 1], although scaled latents reach beyond that: the
    embedded model's images then lose their white background."""
    from types import SimpleNamespace

    import torch
    from diffusers import PNDMScheduler

    from shoelib.demo import MODEL_DIR
    from shoelib.tiny_sd import SD15_SCHEDULER

    config = (PNDMScheduler.load_config(MODEL_DIR / "scheduler") if source == "embedded model"
              else SD15_SCHEDULER)
    pipe = SimpleNamespace(scheduler=PNDMScheduler.from_config(config))
    G.set_scheduler(pipe, "ddim")
    scheduler = pipe.scheduler
    scheduler.set_timesteps(25)
    t = scheduler.timesteps[0]
    alpha = scheduler.alphas_cumprod[t]
    x0 = torch.full((1, 4, 2, 2), 2.5)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    step = scheduler.step(noise, t, alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise)
    torch.testing.assert_close(step.pred_original_sample, x0)


# --- finding and applying the LoRA


def test_find_lora_says_to_run_05_or_set_lora_path(tmp_path, tiny_lora):
    with pytest.raises(G.LoraNotFoundError, match="Run 05_train_lora first.*lora_path"):
        G.find_lora(tmp_path, "")
    assert G.find_lora(tmp_path, "none") is None
    assert G.find_lora(tmp_path, str(tiny_lora.parent)) == tiny_lora
    with pytest.raises(G.LoraNotFoundError, match="does not exist"):
        G.find_lora(tmp_path, str(tmp_path / "missing.safetensors"))
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "summary.json").write_text(json.dumps({"lora_diffusers": str(tiny_lora)}))
    assert G.find_lora(tmp_path, "") == tiny_lora
    # Not a LoRA at all: said when the settings are read, before any model is loaded.
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_text("not a lora\n" * 50)
    with pytest.raises(LoraFileError, match=f"^{garbage} is not a LoRA"):
        G.find_lora(tmp_path, str(garbage))


def test_lora_of_another_base_model_is_refused_clearly(tiny_sd_dir, tmp_path):
    import torch
    from safetensors.torch import save_file

    from shoelib.device import choose_policy
    from shoelib.lora_io import LoraMismatchError

    key = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora"
    path = tmp_path / "sd15_lora.safetensors"  # SD 1.5 shapes: cross-attention from 768 features
    save_file({f"{key}.down.weight": torch.zeros(8, 768), f"{key}.up.weight": torch.zeros(32, 8)},
              str(path))
    with pytest.raises(LoraMismatchError, match="different base model"):
        G.load_generation_pipeline(gen_config(tiny_sd_dir, lora=path), choose_policy("cpu"))


# --- generating


def test_generate_writes_checked_pngs_manifest_and_summary(tiny_sd_dir, tiny_lora, plan_config, tmp_path):
    out = tmp_path / "run"
    result = G.generate(plan_config, gen_config(tiny_sd_dir, tiny_lora), out, progress=False)
    plan = G.make_plan(plan_config)
    assert pngs(out) == [p.file_name for p in plan] and not list(out.glob("*.jp*g"))
    manifest = [json.loads(line) for line in (out / G.MANIFEST).read_text().splitlines()]
    assert [m["file_name"] for m in manifest] == [p.file_name for p in plan]
    for row, item in zip(manifest, plan, strict=True):
        with Image.open(out / row["file_name"]) as im:
            assert im.format == "PNG" and im.size == (64, 64)
            assert im.info["prompt"] == item.prompt and im.info["seed"] == str(item.seed)
            assert f"Seed: {item.seed}" in im.info["parameters"]
        assert G.read_png_record(out / row["file_name"]) == {k: v for k, v in row.items()
                                                             if k != "file_name"}
        assert (row["text"], row["colour"], row["seed"]) == (item.prompt, item.colour, item.seed)
        assert row["lora"] == str(tiny_lora) and row["attempts"] == 1
    summary = json.loads((out / G.SUMMARY).read_text())
    assert summary["n_images"] == summary["n_planned"] == 5 and summary["complete"]
    assert summary["n_regenerated"] == 0 and summary["lora"] == str(tiny_lora)
    assert summary["seconds_per_image"] > 0 and result.counts["saved"] == 5
    # the folder is directly a training set for 05 / imagefolder
    from shoelib.dataset import read_split

    assert list(read_split(out)["file_name"]) == [p.file_name for p in plan]


def test_batched_images_match_single_renders(tiny_sd_dir, plan_config):
    from shoelib.device import choose_policy

    policy = choose_policy("cpu")
    gen = gen_config(tiny_sd_dir)
    pipe = G.load_generation_pipeline(gen, policy)
    plan = G.make_plan(plan_config)[:3]
    batch = G.render(pipe, [p.prompt for p in plan], [p.seed for p in plan], gen, policy)
    single = G.render(pipe, [plan[1].prompt], [plan[1].seed], gen, policy)[0]
    diff = np.abs(np.asarray(batch[1].image, float) - np.asarray(single.image, float))
    assert diff.max() <= 2 and all(r.verdict.ok for r in batch)


def _nan_unet_in_half(module, args, output):
    """UNet forward hook: NaN noise predictions whenever the UNet runs in half precision."""
    import torch

    if module.dtype in (torch.float16, torch.bfloat16):
        return (torch.full_like(output[0], float("nan")),)
    return output


def test_batched_half_precision_failures_are_retried_in_float32_from_the_same_seed(
        tiny_sd_dir, plan_config, tmp_path, monkeypatch):
    real_load = G.load_generation_pipeline

    def load_with_nan_in_half(gen, policy):
        pipe = real_load(gen, policy)
        pipe.unet.register_forward_hook(_nan_unet_in_half)
        return pipe

    monkeypatch.setattr(G, "load_generation_pipeline", load_with_nan_in_half)
    out = tmp_path / "bf16"
    with pytest.warns(UserWarning, match="bfloat16 on CPU"):
        result = G.generate(plan_config, gen_config(tiny_sd_dir, dtype="bfloat16", batch_size=4),
                            out, progress=False)
    plan = G.make_plan(plan_config)
    records = [G.read_png_record(out / p.file_name) for p in plan]
    # Every image of the first batch (4) failed in bfloat16 and was made again in float32
    # from its planned seed, not given up for the next seed; the pipeline then stayed in
    # float32, so the second batch needed no retry.
    assert [r["seed"] for r in records] == [p.seed for p in plan]
    assert [r["fp32_retry"] for r in records] == [True] * 4 + [False]
    assert all(r["attempts"] == 1 and r["failures"] == [] for r in records)
    assert {r["dtype"] for r in records} == {"float32"}
    assert result.counts["fp32_retries"] == 4 and result.summary["n_regenerated"] == 0
    assert result.summary["n_fp32_retries"] == 4


def test_killed_run_resumes_without_duplicates(tiny_sd_dir, plan_config, tmp_path, monkeypatch):
    out = tmp_path / "run"
    gen = gen_config(tiny_sd_dir, batch_size=2)
    real_write = G.write_png
    written = []

    def dies_after_two(image, path, record):
        if len(written) == 2:
            (path.parent / f".{path.stem}.x1y2.tmp.png").write_bytes(b"half a png")  # a torn write
            raise KeyboardInterrupt  # the process is killed here
        written.append(path.name)
        return real_write(image, path, record)

    monkeypatch.setattr(G, "write_png", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        G.generate(plan_config, gen, out, progress=False)
    assert pngs(out) == written == ["000000.png", "000001.png"]
    before = {name: (out / name).stat().st_mtime_ns for name in written}
    monkeypatch.setattr(G, "write_png", real_write)
    result = G.generate(plan_config, gen, out, progress=False)
    assert result.already_done == 2 and result.counts["saved"] == 3
    assert pngs(out) == [f"{i:06d}.png" for i in range(5)] and not list(out.glob(".*"))
    assert {name: (out / name).stat().st_mtime_ns for name in written} == before
    rows = (out / G.MANIFEST).read_text().splitlines()
    assert len(rows) == 5 == len({json.loads(r)["file_name"] for r in rows})
    again = G.generate(plan_config, gen, out, progress=False)  # nothing left: no model loaded
    assert again.counts == {} and again.summary["n_images"] == 5

    longer = G.generate(replace(plan_config, n_images=7), gen, out, progress=False)
    assert longer.counts["saved"] == 2 and len(pngs(out)) == 7
    with pytest.raises(G.RunMismatchError, match="lora_strength: 1.0 -> 0.5.*new run_name"):
        G.generate(plan_config, replace(gen, lora_strength=0.5), out, progress=False)


def test_failed_images_are_regenerated_with_the_next_seed_and_counted(
        tiny_sd_dir, plan_config, tmp_path, monkeypatch):
    plan = G.make_plan(plan_config)
    real_render = G.render

    def black_for_item_1(pipe, prompts, seeds, gen, policy):
        out = real_render(pipe, prompts, seeds, gen, policy)
        return [replace(r, verdict=replace(r.verdict, ok=False, problem="black"))
                if s == plan[1].seed else r for r, s in zip(out, seeds, strict=True)]

    monkeypatch.setattr(G, "render", black_for_item_1)
    out = tmp_path / "retry"
    result = G.generate(plan_config, gen_config(tiny_sd_dir), out, progress=False)
    record = G.read_png_record(out / plan[1].file_name)
    assert record["seed"] == plan[1].seed + 1 and record["planned_seed"] == plan[1].seed
    assert record["attempts"] == 2 and record["failures"] == ["black"]
    assert result.summary["n_regenerated"] == 1 and result.summary["n_images"] == 5

    given_up = tmp_path / "given_up"
    result = G.generate(plan_config, gen_config(tiny_sd_dir, max_attempts=1), given_up,
                        progress=False)
    assert not (given_up / plan[1].file_name).exists()
    assert json.loads((given_up / "000001.failed.json").read_text())["failures"] == ["black"]
    assert result.summary["n_failed"] == 1 and result.summary["failed_indices"] == [1]
    assert result.summary["n_images"] == 4 and result.summary["complete"]
    assert any("given up" in n for n in G.read_run(given_up).notes)


def test_read_run_bad_inputs(tmp_path, tiny_sd_dir, plan_config):
    with pytest.raises(G.EmptyRunError, match="run 06_generate"):
        G.read_run(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(G.EmptyRunError, match="holds no generated PNG"):
        G.read_run(tmp_path / "empty")
    out = tmp_path / "run"
    G.generate(replace(plan_config, n_images=2), gen_config(tiny_sd_dir), out, progress=False)
    assert G.read_run(out).notes == ()
    (out / G.MANIFEST).unlink()
    (out / "000001.png").unlink()
    run = G.read_run(out)
    assert list(run.frame["file_name"]) == ["000000.png"]
    assert any("metadata.jsonl lists 0 images but 1 PNGs" in n for n in run.notes)
    assert any("partial run: 1 of 2" in n for n in run.notes)


def test_a_failed_start_does_not_block_the_corrected_rerun(tiny_sd_dir, plan_config, tmp_path):
    from shoelib.pipeline import ModelNotFoundError

    out = tmp_path / "run"
    with pytest.raises(ModelNotFoundError):
        G.generate(plan_config, gen_config(tmp_path / "no-such-model"), out, progress=False)
    assert (out / G.RUN_FILE).is_file() and not pngs(out)  # run.json alone, no image
    result = G.generate(replace(plan_config, n_images=2), gen_config(tiny_sd_dir), out,
                        progress=False)
    assert result.counts["saved"] == 2
    assert json.loads((out / G.RUN_FILE).read_text())["model"] == str(tiny_sd_dir)
    with pytest.raises(G.RunMismatchError, match="holds images made with other settings"):
        G.generate(plan_config, gen_config(tmp_path / "no-such-model"), out, progress=False)


def test_a_moved_output_root_finds_its_lora_and_resumes_its_run(tiny_sd_dir, tiny_lora,
                                                                 plan_config, tmp_path):
    first = RunPaths(tmp_path / "first")
    first.lora.mkdir(parents=True)
    shutil.copy(tiny_lora, first.lora / tiny_lora.name)
    # 05's summary names its LoRA relative to output_root
    stored = first.relative(first.lora / tiny_lora.name)
    assert stored == f"lora/{tiny_lora.name}"
    (first.lora / "summary.json").write_text(json.dumps({"lora_diffusers": stored}))
    plan = replace(plan_config, n_images=2)
    G.generate(plan, gen_config(tiny_sd_dir, G.find_lora(first.root)), first.synthetic / "r",
               progress=False)

    moved = RunPaths(tmp_path / "moved")
    shutil.move(first.root, moved.root)
    lora = G.find_lora(moved.root)
    assert lora == moved.lora / tiny_lora.name
    again = G.generate(plan, gen_config(tiny_sd_dir, lora), moved.synthetic / "r", progress=False)
    assert again.already_done == 2 and again.counts == {}


def test_a_folder_in_use_is_refused_before_any_work(tiny_sd_dir, plan_config, tmp_path,
                                                     lock_in_other_process):
    holder = lock_in_other_process(tmp_path / "run")
    with pytest.raises(FolderInUseError, match=f"in use by pid {holder.pid} "):
        G.generate(plan_config, gen_config(tiny_sd_dir), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_share_the_plan_under_accelerate(tiny_sd_dir, output_root, tmp_path):
    root = tmp_path / "out"
    shutil.copytree(output_root, root)
    config = {**DEMO_PROFILE, "output_root": str(root), "generation_seed": 5, "model": str(tiny_sd_dir),
              "resolution": 64, "device": "cpu", "lora_path": "none", "run_name": "sharded",
              "n_images": 6, "generation_steps": 2, "generation_batch_size": 2}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    # --multi_gpu is accelerate's torchrun launcher: without GPUs it starts gloo CPU processes
    # (--cpu alone starts one process unless MPI is set up).
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu",
           "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "shoelib.generate",
           "--config", str(tmp_path / "cfg.yaml"), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = RunPaths(root).synthetic / "sharded"
    rows = [json.loads(line) for line in (out / G.MANIFEST).read_text().splitlines()]
    assert [r["file_name"] for r in rows] == [f"{i:06d}.png" for i in range(6)]
    assert {r["process"] for r in rows} == {0, 1}  # each process rendered its share
    summary = json.loads((out / G.SUMMARY).read_text())
    assert summary["processes"] == 2 and summary["n_images"] == 6
    single = G.generate(*G.configs_from_params({**config, "run_name": "single"})[:2],
                        RunPaths(root).synthetic / "single", progress=False)
    assert list(single.manifest["seed"]) == [r["seed"] for r in rows]


@pytest.mark.slow
def test_sigkilled_command_line_run_resumes_to_the_exact_count(tiny_sd_dir, output_root, tmp_path):
    import signal
    import time

    root = tmp_path / "out"
    shutil.copytree(output_root, root)
    config = {**DEMO_PROFILE, "output_root": str(root), "generation_seed": 9, "model": str(tiny_sd_dir),
              "resolution": 64, "device": "cpu", "lora_path": "none", "run_name": "killed",
              "n_images": 12, "generation_steps": 4, "generation_batch_size": 1}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "shoelib.generate", "--config", str(tmp_path / "cfg.yaml"),
           "--no-progress"]
    out = RunPaths(root).synthetic / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(pngs(out)) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = pngs(out)
    assert 3 <= len(first) < 12, "the run was not killed mid-way"
    done = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert pngs(out) == [f"{i:06d}.png" for i in range(12)] and not list(out.glob(".*"))
    rows = [json.loads(line) for line in (out / G.MANIFEST).read_text().splitlines()]
    assert len(rows) == 12 == len({r["file_name"] for r in rows})
    assert json.loads(done.stdout)["n_images"] == 12


@pytest.mark.slow
def test_a_second_run_into_the_same_folder_is_refused_while_the_first_renders(
        tiny_sd_dir, output_root, tmp_path):
    import signal
    import time

    root = tmp_path / "out"
    shutil.copytree(output_root, root)
    config = {**DEMO_PROFILE, "output_root": str(root), "generation_seed": 4, "category": CATEGORY,
              "model": str(tiny_sd_dir),
              "resolution": 64, "device": "cpu", "lora_path": "none", "run_name": "busy",
              "n_images": 10, "generation_steps": 4, "generation_batch_size": 1}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "shoelib.generate", "--config", str(tmp_path / "cfg.yaml"),
           "--no-progress"]
    out = RunPaths(root).synthetic / "busy"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not pngs(out) and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.05)
    # Paused mid-run, so the second run surely starts while the first is at work.
    first.send_signal(signal.SIGSTOP)
    try:
        assert 1 <= len(pngs(out)) < 10, "the first run was not caught mid-way"
        second = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True,
                                text=True, timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 1
    assert second.stderr.strip() == (f"error: {out} is in use by pid {first.pid} on "
                                     f"{socket.gethostname()} (started "
                                     f"{second.stderr.split('(started ')[1].split(')')[0]}); "
                                     "wait for it or stop it")
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-3000:]
    assert json.loads(stdout)["n_images"] == 10
    assert pngs(out) == [f"{i:06d}.png" for i in range(10)] and not list(out.glob(".*"))
    rows = [json.loads(line) for line in (out / G.MANIFEST).read_text().splitlines()]
    assert len(rows) == 10 == len({r["file_name"] for r in rows})


# --- aspect ratio


def test_aspect_ratio_gives_the_bucket_of_the_resolutions_area():
    assert G.generation_size(512, "3:4") == (448, 576)  # the catalogue's, as 02's buckets
    assert G.generation_size(512, "4:3") == (576, 448)
    assert G.generation_size(64, "3:4") == (56, 72)
    assert G.generation_size(512, "1:1") == G.generation_size(512, "2:2") == (512, 512)
    assert G.generation_size(104, "1:1") == (104, 104)  # the square is the resolution itself


@pytest.mark.parametrize("value", ["3x4", "3:", "0:1", "-3:4", 0.75, "1:3", "3:4:5"])
def test_a_bad_aspect_ratio_is_one_line_naming_it(tiny_sd_dir, output_root, value):
    with pytest.raises(G.GenerateConfigError, match=rf"^aspect_ratio={value!r} .*\"3:4\""):
        gen_config(tiny_sd_dir, aspect_ratio=value).check()
    with pytest.raises(G.GenerateConfigError) as err:  # 06's parameters, before any file
        G.configs_from_params(_params_06(output_root / "nowhere", aspect_ratio=value))
    assert str(err.value).startswith("aspect_ratio=") and "\n" not in str(err.value)


def test_generate_at_an_aspect_ratio_writes_that_size_and_records_it(tiny_sd_dir, plan_config,
                                                                      tmp_path):
    out = tmp_path / "run"
    plan = replace(plan_config, n_images=2)
    G.generate(plan, gen_config(tiny_sd_dir, aspect_ratio="3:4"), out, progress=False)
    for name in pngs(out):
        with Image.open(out / name) as im:
            assert im.size == (56, 72)
            assert "Size: 56x72" in im.info["parameters"]
        record = G.read_png_record(out / name)
        assert (record["width"], record["height"]) == (56, 72)
    summary = json.loads((out / G.SUMMARY).read_text())
    assert (summary["aspect_ratio"], summary["width"], summary["height"]) == ("3:4", 56, 72)
    assert json.loads((out / G.RUN_FILE).read_text())["height"] == 72
    # a resume at another shape is another run: refused, naming what changed
    with pytest.raises(G.RunMismatchError, match="height: 72 -> null"):
        G.generate(plan, gen_config(tiny_sd_dir), out, progress=False)
    # the square records what it did before aspect ratios existed
    square = tmp_path / "square"
    G.generate(plan, gen_config(tiny_sd_dir), square, progress=False)
    assert "width" not in json.loads((square / G.RUN_FILE).read_text())
    assert "width" not in G.read_png_record(square / pngs(square)[0])


def test_an_unquoted_yaml_ratio_is_named_with_the_quoting_fix(tiny_sd_dir):
    with pytest.raises(G.GenerateConfigError,
                       match=r'^aspect_ratio=184 is not a ratio; quote it in YAML \("3:4"\)'):
        gen_config(tiny_sd_dir, aspect_ratio=yaml.safe_load("3:4")).check()
