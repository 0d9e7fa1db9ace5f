"""shoelib.pretrain on a few shipped photos at toy sizes: every stage runs, the result loads
through the same code as SD 1.5, the LoRA category stays out, and an interrupted run resumes
to the same weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from shoelib import demo, pretrain
from shoelib.pretrain import PretrainConfig, PretrainConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TYPES = ("Casual Shoes", "Sports Shoes", "Heels", "Flip Flops")


@pytest.fixture(scope="module")
def kaggle_folder(tmp_path_factory) -> Path:
    """A Kaggle-layout folder with 12 shipped photos of each of TYPES."""
    root = tmp_path_factory.mktemp("kaggle")
    (root / "images").mkdir()
    lines = (demo.PHOTOS_DIR / "styles.csv").read_text(encoding="utf-8").splitlines()
    kept = [lines[0]]
    for article_type in TYPES:
        rows = [line for line in lines[1:] if line.split(",")[4] == article_type][:12]
        kept += rows
        for line in rows:
            name = f"{line.split(',')[0]}.jpg"
            shutil.copyfile(demo.PHOTOS_DIR / "images" / name, root / "images" / name)
    (root / "styles.csv").write_text("\n".join(kept) + "\n", encoding="utf-8")
    return root


def toy_config(kaggle_folder: Path, work: Path, **overrides) -> PretrainConfig:
    values = dict(data_root=str(kaggle_folder), out_dir=str(work / "out"), work_dir=str(work / "work"),
                  resolution=32, vae_channels=(8, 16), vae_steps=3, vae_batch=4, text_hidden=32,
                  text_layers=1, unet_channels=(32, 64), unet_steps=4, unet_batch=4, unet_warmup=1,
                  encoder_dim=32, encoder_steps=3, encoder_batch=4, checkpoint_every=2,
                  min_rows_per_type=5, holdout_fraction=0.2, min_word_count=2, threads=1)
    return PretrainConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def finished(kaggle_folder, tmp_path_factory):
    work = tmp_path_factory.mktemp("pretrain")
    config = toy_config(kaggle_folder, work)
    return config, pretrain.pretrain(config)


def test_result_loads_as_a_stable_diffusion_pipeline(finished):
    from shoelib.device import choose_policy
    from shoelib.pipeline import generate_checked, load_pipeline

    config, summary = finished
    model_dir = Path(config.out_dir) / config.model_name
    index = json.loads((model_dir / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    policy = choose_policy("cpu")
    pipe = load_pipeline(str(model_dir), policy)
    assert pipe.vae.config.scaling_factor == pytest.approx(summary["vae"]["scaling_factor"])
    assert pipe.tokenizer.model_max_length == 77
    attn = {n.rsplit(".", 1)[-1] for n, _ in pipe.unet.named_modules() if ".attn2." in n}
    assert {"to_q", "to_k", "to_v"} <= attn
    image = generate_checked(pipe, "a professional product photo of black heels", 0, steps=2,
                             resolution=32, guidance_scale=3.0, policy=policy)
    assert image.image.size == (32, 32)
    # stored as float16 (the size budget); loaded in the policy's float32
    stored = load_file(str(model_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.float16}
    assert pipe.unet.dtype == torch.float32


def test_lora_category_is_left_out_and_a_holdout_is_kept(finished):
    config, summary = finished
    model_dir = Path(config.out_dir) / config.model_name
    import pandas as pd

    holdout = pd.read_csv(model_dir / "holdout.csv")
    assert summary["data"]["excluded_category_rows"] == 12
    assert summary["data"]["photos"] == 36 and summary["data"]["holdout"] == len(holdout)
    assert set(holdout["articleType"]) == {"Sports Shoes", "Heels", "Flip Flops"}
    assert not holdout["caption"].str.contains("casual shoes").any()
    card = (model_dir / "README.md").read_text()
    assert f"{summary['data']['train']:,} training photos" in card
    assert f"{summary['vae']['holdout_mse']:.4f}" in card


def test_tokenizer_makes_caption_words_single_tokens(tmp_path):
    texts = ["a professional product photo of navy blue heels, Summer collection, Women"] * 3
    tokenizer = pretrain.build_tokenizer(texts, 2, tmp_path / "tok")
    assert pretrain.tokens_per_word(tokenizer, texts) == 1.0
    assert pretrain.tokens_per_word(tokenizer, ["zebra xylophone"]) > 3  # unseen words: bytes


def test_encoder_loads_and_gives_features(finished):
    from PIL import Image

    from shoelib.metrics import EncoderFeatures

    config, _ = finished
    features = EncoderFeatures(Path(config.out_dir) / config.encoder_name)
    out = features([Image.new("RGB", (50, 70), (200, 30, 30))] * 2)
    assert out.shape == (2, config.encoder_dim)
    assert set(features.labels["article_types"]) == {"Sports Shoes", "Heels", "Flip Flops"}


def test_interrupted_run_resumes_to_the_same_weights(kaggle_folder, finished, tmp_path, monkeypatch):
    config, _ = finished
    interrupted = toy_config(kaggle_folder, tmp_path)
    real_save = pretrain.save_stage_checkpoint

    def save_then_die(folder, state):
        real_save(folder, state)
        if folder.name == "unet" and state["step"] == 2:
            raise KeyboardInterrupt  # as a kill right after the step-2 checkpoint

    monkeypatch.setattr(pretrain, "save_stage_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretrain.pretrain(interrupted)
    monkeypatch.setattr(pretrain, "save_stage_checkpoint", real_save)
    pretrain.pretrain(interrupted)
    name = "unet/diffusion_pytorch_model.safetensors"
    resumed = load_file(str(Path(interrupted.out_dir) / interrupted.model_name / name))
    clean = load_file(str(Path(config.out_dir) / config.model_name / name))
    assert resumed.keys() == clean.keys()
    assert all(torch.equal(resumed[k], clean[k]) for k in clean)


def test_bad_settings_name_themselves(kaggle_folder, tmp_path, capsys):
    with pytest.raises(PretrainConfigError, match="resolution=33"):
        toy_config(kaggle_folder, tmp_path, resolution=33)
    with pytest.raises(PretrainConfigError, match="unknown setting"):
        PretrainConfig.from_dict({"data_root": "x", "unet_stepz": 3})
    bad = tmp_path / "bad.yaml"
    bad.write_text("data_root: [unclosed\n")
    assert pretrain.main(["--config", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    missing = tmp_path / "ok.yaml"
    missing.write_text(f"data_root: {tmp_path / 'nowhere'}\n")
    assert pretrain.main(["--config", str(missing)]) == 2
    assert "holds no styles.csv" in capsys.readouterr().err
