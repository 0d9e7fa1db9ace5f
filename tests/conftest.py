"""Fixtures shared across test modules."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from shoelib import generate
from shoelib.paths import PROJECT_ROOT, RunPaths


@pytest.fixture(scope="session")
def real_sample_dir() -> Path:
    """../shared/real-sample: real styles.csv + 900 photos. Read-only: copy what you modify."""
    path = Path(os.environ.get("SHOELIB_REAL_SAMPLE", PROJECT_ROOT.parent / "shared" / "real-sample"))
    if not (path / "styles.csv").exists():
        pytest.skip(f"real sample not found at {path} (set SHOELIB_REAL_SAMPLE)")
    return path


@pytest.fixture(scope="session")
def real_catalog_dir() -> Path:
    """../shared/real-catalog: real styles.csv + 9,286 photos at 224 px. Read-only."""
    path = Path(os.environ.get("SHOELIB_REAL_CATALOG",
                               PROJECT_ROOT.parent / "shared" / "real-catalog"))
    if not (path / "styles.csv").exists():
        pytest.skip(f"real catalogue not found at {path} (set SHOELIB_REAL_CATALOG)")
    return path


@pytest.fixture(scope="session")
def tiny_dinov2(tmp_path_factory):
    """A random 2-layer Dinov2Model and a model-card-style image processor saved to a folder."""
    import torch
    from transformers import BitImageProcessorPil, Dinov2Config, Dinov2Model

    folder = tmp_path_factory.mktemp("dinov2")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, image_size=28, patch_size=14)).save_pretrained(folder)
    BitImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28},
                         resample=Image.Resampling.BICUBIC, image_mean=[0.485, 0.456, 0.406],
                         image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    """The tiny offline SD pipeline in diffusers folder layout, built once per test session."""
    from shoelib.tiny_sd import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_lora(tiny_sd_dir, tmp_path_factory) -> Path:
    """A rank-4 LoRA on the tiny UNet's attention, saved by shoelib.lora_io."""
    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    from shoelib.lora_io import LORA_TARGET_MODULES, save_diffusers_lora

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_dir, subfolder="unet")
    unet.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian",
                                target_modules=list(LORA_TARGET_MODULES)))
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.02)
    return save_diffusers_lora(unet, tmp_path_factory.mktemp("lora") / "pytorch_lora_weights.safetensors")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: the tiny model's tensors are too small to split, and on
    a busy 2-core machine a second OpenMP thread spin-waiting made each step several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- human evaluation: a real test split and two synthetic runs of flat-coloured images

RATING_COLOURS = ["Red", "Blue", "Green"]
RATING_RGB = {"Red": (200, 20, 20), "Blue": (20, 20, 200), "Green": (20, 160, 20)}


def write_test_split(folder: Path, n_each: int) -> None:
    folder.mkdir(parents=True)
    rows = []
    for colour in RATING_COLOURS:
        for k in range(n_each):
            name = f"{colour.lower()}_{k}.png"
            Image.new("RGB", (96, 96), RATING_RGB[colour]).save(folder / name)
            rows.append({"file_name": name, "id": len(rows), "colour": colour, "gender": "Men",
                         "season": "Summer",
                         "text": f"A photo of {colour.lower()} casual shoes, Summer, Men, Brand X"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_run(folder: Path, n_images: int, seed: int) -> None:
    folder.mkdir(parents=True)
    plan = generate.make_plan(generate.PromptPlanConfig(
        n_images=n_images, seed=seed, colours=tuple((c, 1.0) for c in RATING_COLOURS)))
    gen = generate.GenerateConfig(model="tiny", lora_path=None, resolution=64)
    for item in plan:
        record = generate.image_record(item, gen, seed=item.seed, attempts=1, failures=[],
                                       fp32_retry=False, seconds=0.1, dtype="float32")
        generate.write_png(Image.new("RGB", (64, 64), RATING_RGB[item.colour]),
                           folder / item.file_name, record)
    generate.rebuild_manifest(folder, plan)


@pytest.fixture()
def rating_root(tmp_path) -> Path:
    """Real test split (4 images per colour) and two synthetic runs, 'lora' and 'base'."""
    paths = RunPaths(tmp_path)
    write_test_split(paths.processed("Casual Shoes") / "test", 4)
    write_run(paths.synthetic / "lora", 30, 0)
    write_run(paths.synthetic / "base", 30, 1)
    return tmp_path


HOLD_LOCK = """
import sys, time
from shoelib.io import folder_lock
with folder_lock(sys.argv[1]):
    print("LOCKED", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def lock_in_other_process():
    """Call with a folder: another real process takes its lock (shoelib.io.folder_lock) and
    holds it until the test ends; returns that process (a Popen)."""
    import subprocess
    import sys

    held = []

    def hold(folder: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)],
                                stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
        held.append(proc)
        assert proc.stdout.readline().strip() == "LOCKED"
        return proc

    yield hold
    for proc in held:
        proc.kill()
        proc.wait()
