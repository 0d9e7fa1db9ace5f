"""Evaluation measures on constructed cases with known answers, and against torchmetrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw

from shoelib import metrics as M

RNG = np.random.default_rng(0)


def product_photo(colour=(200, 30, 40), size=128, box=None, background=(255, 255, 255),
                  outline=None) -> Image.Image:
    """A 'shoe' (rounded rectangle) on a plain background; box in fractions of the side."""
    im = Image.new("RGB", (size, size), background)
    x0, y0, x1, y1 = box or (0.2, 0.35, 0.8, 0.65)
    ImageDraw.Draw(im).rounded_rectangle(
        [x0 * size, y0 * size, x1 * size - 1, y1 * size - 1], radius=size // 12, fill=colour,
        outline=outline, width=2 if outline else 0)
    return im


# --- fidelity


class _Given(torch.nn.Module):
    """A 'feature extractor' that returns its input: feeds our feature matrices to torchmetrics."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_polynomial_mmd_matches_torchmetrics_kid():
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = RNG.normal(size=(60, 8)), RNG.normal(0.3, 1.0, size=(60, 8))
    ref = KernelInceptionDistance(feature=_Given(8), subsets=1, subset_size=60)
    ref.update(torch.from_numpy(real), real=True)
    ref.update(torch.from_numpy(fake), real=False)
    ref_mean, _ = ref.compute()
    assert M.polynomial_mmd(real, fake) == pytest.approx(float(ref_mean), rel=1e-6)


def test_frechet_distance_matches_torchmetrics_fid():
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = RNG.normal(size=(80, 6)), RNG.normal(0.5, 1.5, size=(80, 6))
    ref = FrechetInceptionDistance(feature=_Given(6))
    ref.update(torch.from_numpy(real), real=True)
    ref.update(torch.from_numpy(fake), real=False)
    ours = M.fid(real, fake)
    assert ours.value == pytest.approx(float(ref.compute()), rel=1e-5)
    assert ours.n_real == 80 and ours.n_synthetic == 80 and "biased" in ours.note


def test_kid_near_zero_for_same_distribution_and_clearly_positive_when_shifted():
    a, b = RNG.normal(size=(300, 16)), RNG.normal(size=(300, 16))
    same = M.kid(a, b, subsets=50, seed=1)
    identical = M.kid(a, a.copy(), subsets=50, seed=1)
    shifted = M.kid(a, b + 1.0, subsets=50, seed=1)
    assert abs(same.value) < 0.02
    # The very same images in both sets are not independent samples: the unbiased estimator
    # then dips slightly below 0 (by ~2/m of the kernel's diagonal excess), still ~0 next to a shift.
    assert abs(identical.value) < 0.1 * shifted.value
    assert shifted.value > 0.5 and shifted.value > 20 * abs(same.value)
    assert shifted.std is not None and same.n_real == 300 and same.n_synthetic == 300
    assert M.kid(a, b, subsets=5, seed=3).value == M.kid(a, b, subsets=5, seed=3).value


def test_metrics_refuse_too_few_images_and_say_how_many():
    a = RNG.normal(size=(12, 16))
    kid = M.kid(a, a, min_images=20)
    assert kid.value is None and "needs at least 20" in kid.note and "got 12" in kid.note
    fid = M.fid(a, RNG.normal(size=(40, 16)))
    assert fid.value is None and "needs at least 17 real images" in fid.note
    assert M.cmmd(a, a, min_images=20).value is None
    with pytest.raises(M.TooFewImagesError, match="needs at least 5 synthetic images; got 2"):
        M.require_images("KID", "synthetic", 2, 5)


def test_cmmd_zero_for_identical_sets_and_matches_a_direct_sum():
    a, b = RNG.normal(size=(30, 5)), RNG.normal(1.0, 1.0, size=(25, 5))
    assert M.cmmd(a, a.copy()).value == pytest.approx(0.0, abs=1e-9)
    x, y = M._l2(a), M._l2(b)

    def k(u, v):
        return np.exp(-np.sum((u - v) ** 2) / (2 * 10.0**2))

    direct = 1000 * (np.mean([[k(u, v) for v in x] for u in x])
                     + np.mean([[k(u, v) for v in y] for u in y])
                     - 2 * np.mean([[k(u, v) for v in y] for u in x]))
    assert M.cmmd(a, b).value == pytest.approx(direct, rel=1e-9)
    assert M.cmmd(a, b).value > 0


def test_pixel_features_see_colour_shifts():
    reds = [product_photo((200, 30, 40)) for _ in range(3)]
    blues = [product_photo((40, 90, 190))]
    feats = M.PixelFeatures()(reds + blues)
    assert feats.shape == (4, M.PixelFeatures().dim)
    assert np.allclose(feats[0], feats[1]) and not np.allclose(feats[0], feats[3])
    assert M.PixelFeatures().describe()["versions"]["torchmetrics"]


def test_extract_features_reads_paths_in_batches(tmp_path):
    paths = []
    for i, colour in enumerate([(200, 30, 40), (40, 90, 190), (40, 135, 60)]):
        paths.append(tmp_path / f"{i}.png")
        product_photo(colour).save(paths[-1])
    feats = M.extract_features(paths, M.PixelFeatures(), batch_size=2)
    assert feats.shape == (3, M.PixelFeatures().dim)
    assert np.allclose(feats[1], M.PixelFeatures()([Image.open(paths[1])])[0])


def test_inception_needs_torch_fidelity_and_says_so(monkeypatch):
    import importlib.util

    from shoelib import evaluation as E

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",  # as on a machine without it
                        lambda name, *a: None if name == "torch_fidelity" else real_find_spec(name, *a))
    for make in (M.inception_features, lambda: E.feature_extractor("inception", None)):
        with pytest.raises(ModuleNotFoundError, match="needs torch-fidelity .*fidelity_features='clip'"):
            make()


class MeanColourNet:
    """A stand-in for the FID Inception: the batch it got, and each image's mean RGB as features."""

    def __init__(self) -> None:
        self.inputs: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x)
        return x.float().mean(dim=(2, 3))


def test_inception_features_feed_uint8_batches_of_one_size_and_return_float64(tmp_path):
    net = MeanColourNet()
    extractor = M.inception_features(net=net)
    paths = []
    for i, (colour, size) in enumerate([((200, 30, 40), 64), ((40, 90, 190), 64),
                                        ((40, 135, 60), 48)]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (size, size), colour).save(paths[-1])
    feats = M.extract_features(paths, extractor, batch_size=3)
    (batch,) = net.inputs
    assert batch.dtype == torch.uint8 and tuple(batch.shape) == (3, 3, 64, 64)  # resized to the first
    assert feats.dtype == np.float64
    np.testing.assert_allclose(feats, [[200, 30, 40], [40, 90, 190], [40, 135, 60]])
    described = extractor.describe()
    assert described["dim"] == 2048 and "torch-fidelity" in described["extractor"]


# --- CLIP


@pytest.fixture(scope="module")
def clip():
    return M.tiny_random_clip(seed=0)


class _TensorCLIP(torch.nn.Module):
    """torchmetrics 1.9 expects get_*_features to return tensors; transformers 5 returns
    model outputs (its CLIPScore fails with AttributeError) - so the reference gets an adapter."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model, self.config = model, model.config

    def get_image_features(self, *args, **kwargs):
        return self.model.get_image_features(*args, **kwargs).pooler_output

    def get_text_features(self, *args, **kwargs):
        return self.model.get_text_features(*args, **kwargs).pooler_output


def test_clip_score_is_torchmetrics_definition_per_image(clip):
    from torchmetrics.functional.multimodal import clip_score

    images = [product_photo((200, 30, 40), size=48), product_photo((40, 90, 190), size=48)]
    prompts = ["a photo of red casual shoes", "a photo of blue casual shoes"]
    ours = M.clip_scores(clip, images, prompts)
    assert ours.shape == (2,) and np.all((ours >= 0) & (ours <= 100))
    tensors = [torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images]
    ref = clip_score(tensors, prompts,
                     model_name_or_path=lambda: (_TensorCLIP(clip.model), clip.processor))
    assert float(np.mean(ours)) == pytest.approx(float(ref), abs=1e-3)


def test_clip_features_are_raw_embeddings_and_describe_resize(clip):
    images = [product_photo(size=40), product_photo((40, 90, 190), size=64)]
    feats = M.ClipFeatures(clip)(images)
    unit = M.clip_image_embeddings(clip, images)
    assert feats.shape == (2, 32) and np.allclose(np.linalg.norm(unit, axis=1), 1.0)
    assert np.allclose(feats / np.linalg.norm(feats, axis=1, keepdims=True), unit, atol=1e-6)
    info = M.ClipFeatures(clip).describe()
    assert "random" in info["weights"] and "bicubic, shortest edge 32" in info["resize"]


def test_load_clip_none_and_missing_folder(tmp_path):
    assert M.load_clip("none") is None
    with pytest.raises(M.ClipUnavailableError, match="clip_model=.*'none' to skip"):
        M.load_clip(str(tmp_path / "no-such-clip"))


# --- colour, conformity


@pytest.mark.parametrize("name", ["Red", "Blue", "Green", "Yellow", "Black", "Navy Blue", "Brown"])
def test_dominant_colour_of_a_plain_object(name):
    measures = M.photo_measures(product_photo(M.PALETTE[name]))
    assert measures["dominant_colour"] == name and measures["colour_share"] > 0.8


def test_white_object_with_outline_is_white_not_background():
    im = product_photo((246, 246, 246), outline=(120, 120, 120))
    measures = M.photo_measures(im)
    assert measures["dominant_colour"] == "White" and measures["foreground"] > 0.1


def test_conformity_centred_vs_off_centre_vs_cut_vs_grey_background():
    centred = M.photo_measures(product_photo())
    off = M.photo_measures(product_photo(box=(0.02, 0.05, 0.4, 0.35)))
    cut = M.photo_measures(product_photo(box=(0.5, 0.35, 1.2, 0.65)))
    grey = M.photo_measures(product_photo(background=(150, 150, 150)))
    assert centred["conforming"] and centred["centre_offset"] < 0.02 and centred["whiteness"] == 1.0
    assert off["centre_offset"] > 0.3 and not off["conforming"]
    assert cut["edge_foreground"] > 0.05 and not cut["conforming"]
    assert grey["whiteness"] < 0.1 and not grey["conforming"]


def test_colour_faithfulness_accuracy_confusion_and_left_out_colours():
    asked = ["Red", "Red", "navy blue", "Multi", "Off White"]
    found = ["Red", "Maroon", "Navy Blue", "Black", "White"]
    result, confusion = M.colour_faithfulness(asked, found)
    assert result.value == pytest.approx(3 / 4) and result.n_synthetic == 4
    assert "1 images with no palette colour" in result.note
    assert confusion.loc["Red", "Maroon"] == 1 and confusion.loc["Red", "Red"] == 1
    assert confusion.values.sum() == 4


def test_measure_photos_on_real_sample_agrees_with_labels_above_chance(real_sample_dir):
    root = real_sample_dir
    styles = pd.read_csv(root / "styles.csv", on_bad_lines="skip", keep_default_na=False)
    shoes = styles[styles["articleType"] == "Casual Shoes"]
    shoes = shoes[[(root / "images" / f"{i}.jpg").exists() for i in shoes["id"]]].head(80)
    measures = M.measure_photos([root / "images" / f"{i}.jpg" for i in shoes["id"]])
    result, _ = M.colour_faithfulness(list(shoes["baseColour"]), list(measures["dominant_colour"]), "real")
    assert result.value > 0.4  # label noise + shading cap it (benchmarks/bench_photo_checks.py); chance ~0.1
    assert measures["conforming"].mean() > 0.9  # catalogue photos: white, centred, in frame


# --- hashes, diversity, memorisation


def test_hashes_find_near_duplicates_but_not_different_images():
    a = product_photo((200, 30, 40), size=256)
    a_copy = a.resize((200, 200)).resize((256, 256))  # resampled: same picture, other pixels
    b = product_photo((40, 90, 190), size=256, box=(0.1, 0.1, 0.5, 0.9))
    for fn in (M.dhash, M.phash):
        assert fn(a).shape == (64,)
        assert M.hamming_matrix(fn(a)[None], fn(a_copy)[None])[0, 0] <= 4
        assert M.hamming_matrix(fn(a)[None], fn(b)[None])[0, 0] > 10
    bits = np.stack([M.phash(a), M.phash(a_copy), M.phash(b)])
    rate, pairs = M.near_duplicates(bits, threshold=6)
    assert rate == pytest.approx(2 / 3) and list(pairs[["i", "j"]].iloc[0]) == [0, 1]
    assert np.array_equal(M.hash_bits([M.hash_hex(bits[2])])[0], bits[2])


def test_diversity_results_and_pairwise_distance():
    same = np.ones((4, 3))
    spread = np.eye(3)
    assert M.mean_pairwise_cosine_distance(same) == pytest.approx(0.0)
    assert M.mean_pairwise_cosine_distance(spread) == pytest.approx(1.0)
    bits = np.zeros((4, 64), dtype=bool)
    rows = {r.name: r for r in M.diversity_results(bits, same, "synthetic")}
    assert rows["near-duplicate rate (synthetic)"].value == 1.0
    assert M.diversity_results(bits[:1], same[:1], "synthetic")[0].value is None


def test_memorisation_flags_a_copied_training_image():
    train = RNG.normal(size=(50, 8))
    test = RNG.normal(size=(30, 8))
    synthetic = np.vstack([RNG.normal(size=(9, 8)), train[17] + 1e-6])
    report = M.memorisation(synthetic, train, test, top_k=3)
    top = report.closest.iloc[0]
    assert (top.synthetic_index, top.train_index) == (9, 17) and top.similarity > 0.999
    share = {r.name: r for r in report.results}["memorisation: share closer than real"]
    assert share.value == pytest.approx(0.1) and share.n_synthetic == 10
    few = M.memorisation(synthetic, train, test[:3])
    assert few.results[-1].value is None and "at least 10" in few.results[-1].note


def test_results_table_has_every_field():
    table = M.results_table([M.MetricResult("KID", 0.1, 0.01, 10, 20, "n", "lower")])
    assert list(table.columns) == ["name", "value", "std", "n_real", "n_synthetic", "note", "better"]


def test_results_table_keeps_counts_integer_when_some_are_missing():
    table = M.results_table([M.MetricResult("KID", 0.1, 0.01, 20, None, "n", "lower"),
                             M.MetricResult("FID", None, None, 20, 32, "n", "lower")])
    assert table.to_csv(index=False).splitlines()[1:] == ["KID,0.1,0.01,20,,n,lower",
                                                          "FID,,,20,32,n,lower"]
