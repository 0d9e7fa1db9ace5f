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


def test_inception_says_in_one_line_why_it_cannot_run_here():
    from shoelib import evaluation as E

    why = M.inception_unavailable()
    try:
        import torch_fidelity  # noqa: F401
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - this machine: torchvision does not import beside the pinned torch
        assert why is not None and "\n" not in why
        assert why.startswith("fidelity_features='inception' ")
        assert "[inception]" in why and "fidelity_features='dinov2'" in why
        for make in (M.inception_features, lambda: E.feature_extractor("inception", None)):
            with pytest.raises(M.FeatureModelUnavailableError) as err:
                make()
            assert str(err.value) == why
    else:
        assert why is None


def test_inception_missing_torch_fidelity_is_named(monkeypatch):
    import importlib.util
    import sys
    import types

    real_find_spec = importlib.util.find_spec
    monkeypatch.setitem(sys.modules, "torchvision", types.ModuleType("torchvision"))
    monkeypatch.setattr(importlib.util, "find_spec",  # as on a machine with torchvision only
                        lambda name, *a: None if name == "torch_fidelity" else real_find_spec(name, *a))
    with pytest.raises(M.FeatureModelUnavailableError, match="needs torch-fidelity .*'.\\[inception\\]'"):
        M.inception_features()


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
    assert "interpolate_bilinear_2d_like_tensorflow1x to 299x299" in described["resize"]
    assert "torch-fidelity" in described["versions"]


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
    with pytest.raises(M.ClipUnavailableError, match="clip_model=.*'none' to skip") as err:
        M.load_clip(str(tmp_path / "no-such-clip"))
    assert "\n" not in str(err.value)
    assert f"hf download {tmp_path / 'no-such-clip'} --local-dir models/no-such-clip" in str(err.value)


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
    assert list(table.columns) == ["name", "value", "std", "n_real", "n_synthetic", "note", "better",
                                   "ci_low", "ci_high"]


def test_results_table_keeps_counts_integer_when_some_are_missing():
    table = M.results_table([M.MetricResult("KID", 0.1, 0.01, 20, None, "n", "lower"),
                             M.MetricResult("FID", None, None, 20, 32, "n", "lower")])
    assert table.to_csv(index=False).splitlines()[1:] == ["KID,0.1,0.01,20,,n,lower,,",
                                                          "FID,,,20,32,n,lower,,"]


# --- precision / recall / density / coverage


def brute_force_prdc(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """Naeem et al. 2020, eq. 1-4, one loop per image (no shared code with shoelib or prdc)."""
    def dist(a, b):
        return float(np.sqrt(np.sum((a - b) ** 2)))

    def radius(points, i):
        return sorted(dist(points[i], points[j]) for j in range(len(points)) if j != i)[k - 1]

    r_real = [radius(real, i) for i in range(len(real))]
    r_fake = [radius(fake, j) for j in range(len(fake))]
    precision = np.mean([any(dist(y, real[i]) < r_real[i] for i in range(len(real))) for y in fake])
    recall = np.mean([any(dist(x, fake[j]) < r_fake[j] for j in range(len(fake))) for x in real])
    density = np.mean([sum(dist(y, real[i]) < r_real[i] for i in range(len(real))) / k for y in fake])
    coverage = np.mean([min(dist(real[i], y) for y in fake) < r_real[i] for i in range(len(real))])
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


@pytest.mark.parametrize("k", [1, 3, 5])
def test_prdc_matches_a_brute_force_reference(k):
    rng = np.random.default_rng(k)
    real, fake = rng.normal(size=(40, 4)), rng.normal(0.7, 1.3, size=(30, 4))
    expected = brute_force_prdc(real, fake, k)
    assert M.prdc(real, fake, k) == pytest.approx(expected, abs=1e-12)
    terms = M.prdc_per_image(real, fake, k)
    assert {m: terms[m].mean() for m in terms} == pytest.approx(expected, abs=1e-12)
    rows = {r.name: r for r in M.prdc_results(real, fake, k=k, n_boot=200)}
    for name, value in expected.items():
        row = rows[f"{name} (synthetic)"]
        assert row.value == pytest.approx(value) and row.n_real == 40 and row.n_synthetic == 30
        assert row.ci_low <= row.value <= row.ci_high


def test_prdc_separates_fidelity_from_diversity_and_needs_k_plus_two_images():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 2))
    collapsed = rng.normal(0, 0.05, size=(200, 2))  # good images of one kind
    off = rng.normal(6.0, 1.0, size=(200, 2))         # varied images off the real manifold
    c, o = M.prdc(real, collapsed), M.prdc(real, off)
    assert c["precision"] > 0.95 and c["coverage"] < 0.2 and c["recall"] < 0.2
    assert o["precision"] < 0.05 and o["coverage"] < 0.05
    # k + 1 images used to pass the check and then fail inside prdc (argpartition kth=k+1)
    few = M.prdc_results(real, collapsed[:6], k=5)
    assert few[0].value is None and "needs at least 7 synthetic images; got 6" in few[0].note
    assert M.prdc_results(real, collapsed[:7], k=5)[0].value is not None


# --- Vendi score


def test_vendi_score_is_the_eigenvalue_definition_and_counts_distinct_images():
    rng = np.random.default_rng(0)
    def by_eigenvalues(x):
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        eig = np.linalg.eigvalsh(unit @ unit.T / len(x))
        eig = eig[eig > 1e-12]
        return float(np.exp(-np.sum(eig * np.log(eig))))

    x = rng.normal(size=(30, 50))
    assert M.vendi_score(x) == pytest.approx(by_eigenvalues(x), rel=1e-9)
    # d < N: computed from the d x d matrix, the same value
    assert M.vendi_score(x[:, :10]) == pytest.approx(by_eigenvalues(x[:, :10]), rel=1e-9)
    assert M.vendi_score(np.tile(x[:1], (8, 1))) == pytest.approx(1.0)
    assert M.vendi_score(np.eye(6)) == pytest.approx(6.0)
    two_kinds = np.repeat(np.eye(2), 10, axis=0)
    assert M.vendi_score(two_kinds) == pytest.approx(2.0)


def test_vendi_results_compare_sets_at_the_same_n_with_a_jackknife_ci():
    rng = np.random.default_rng(1)
    varied, copies = rng.normal(size=(60, 40)), np.repeat(np.eye(40)[:3], 8, axis=0)
    rows = {r.name: r for r in M.vendi_results({"synthetic": copies, "real test": varied}, "x")}
    syn, real = rows["Vendi score (synthetic, x)"], rows["Vendi score (real test, x)"]
    assert syn.n_synthetic == real.n_real == 24  # the larger set subsampled to the smaller's N
    assert syn.value == pytest.approx(3.0, rel=1e-6) and real.value > 15
    assert real.ci_low < real.value < real.ci_high and syn.ci_high < real.ci_low


# --- confidence intervals


def test_mean_ci_covers_the_mean_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.normal(size=20), rng.normal(size=2000)
    lo_s, hi_s = M.mean_ci(small, seed=1)
    lo_l, hi_l = M.mean_ci(large, seed=1)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < 0.3 * (hi_s - lo_s)
    assert (hi_l - lo_l) == pytest.approx(2 * 1.96 / np.sqrt(2000), rel=0.15)
    assert M.mean_ci(np.array([1.0]))[0] != M.mean_ci(np.array([1.0]))[0]  # nan below 2


def test_kid_fid_cmmd_carry_95_percent_cis():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(120, 6)), rng.normal(0.4, 1.0, size=(120, 6))
    kid = M.kid(a, b, subsets=50, seed=0)
    fid = M.fid(a, b, n_boot=50)
    cmmd = M.cmmd(a, b, n_boot=50)
    for r in (kid, fid, cmmd):
        assert r.ci_low < r.value < r.ci_high, r
    assert fid.ci_low > 0 and "bootstrap" in fid.note
    assert M.kid(a[:5], b, min_images=20).ci_low is None


def test_verdict_calls_a_difference_only_when_the_ci_excludes_zero():
    assert M.verdict((0.1, 0.3), "a", "b") == "a higher"
    assert M.verdict((-0.3, -0.01), "a", "b") == "b higher"
    assert M.verdict((-0.1, 0.2), "a", "b").startswith("no difference")


def test_memorisation_flags_pairs_above_a_fixed_copy_threshold():
    train = RNG.normal(size=(50, 8))
    test = RNG.normal(size=(30, 8))
    synthetic = np.vstack([RNG.normal(size=(9, 8)), train[[3, 17]] + 1e-6])
    report = M.memorisation(synthetic, train, test, threshold=0.99)
    assert report.threshold == 0.99
    assert sorted(report.flagged["train_index"]) == [3, 17]
    share = {r.name: r for r in report.results}["memorisation: share closer than real"]
    assert share.value == pytest.approx(2 / 11) and "copy threshold" in share.note
    assert share.ci_low < share.value < share.ci_high


# --- hub-loaded models: DINOv2 and SSCD, offline with tiny random weights


def test_dinov2_loads_from_a_folder_and_preprocesses_as_its_processor_says(tiny_dinov2):
    from shoelib import evaluation as E

    extractor, note = E.feature_extractor("dinov2", None, dinov2_model=str(tiny_dinov2))
    images = [product_photo(size=64), product_photo((40, 90, 190), size=50)]
    feats = extractor(images)
    assert feats.shape == (2, 32) and feats.dtype == np.float64 and "DINOv2" in note
    pixels = extractor.processor(images=images, return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (2, 3, 28, 28)
    corner = (np.array([255, 255, 255]) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(pixels[0, :, 0, 0].numpy(), corner, rtol=1e-4)  # white, normalised
    with torch.inference_mode():
        direct = extractor.model(pixel_values=pixels).pooler_output.numpy()
    np.testing.assert_allclose(feats, direct, rtol=1e-5)
    info = extractor.describe()
    assert info["dim"] == 32 and "bicubic shortest edge 32, centre crop 28x28" in info["resize"]


def test_dinov2_missing_model_is_one_line_with_the_download_command(tmp_path):
    with pytest.raises(M.FeatureModelUnavailableError) as err:
        M.DinoFeatures(str(tmp_path / "dinov2-large"))
    message = str(err.value)
    assert "\n" not in message and "dinov2_model=" in message
    assert f"hf download {tmp_path / 'dinov2-large'} --local-dir models/dinov2-large" in message


class _TinyDescriptor(torch.nn.Module):
    """A stand-in for the SSCD TorchScript: mean colour and size of the input, as 5 numbers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = torch.tensor([[float(x.shape[2]), float(x.shape[3])]]).repeat(x.shape[0], 1)
        return torch.cat([x.mean(dim=(2, 3)), size], dim=1)


def test_sscd_torchscript_by_path_preprocessing_and_normalised_descriptors(tmp_path):
    path = tmp_path / "sscd_disc_mixup.torchscript.pt"
    torch.jit.save(torch.jit.script(_TinyDescriptor()), str(path))
    sscd = M.SscdFeatures(path)
    red, wide = product_photo(size=64), product_photo((40, 90, 190), size=100).resize((200, 100))
    x = sscd.tensor(red)
    assert tuple(x.shape) == (1, 3, 288, 288)  # shortest edge to 288
    assert tuple(sscd.tensor(wide).shape) == (1, 3, 288, 576)  # aspect ratio kept
    white = (1.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(x[0, :, 0, 0].numpy(), white, rtol=1e-5)
    feats = sscd([red, wide])
    assert feats.shape == (2, 5) and np.allclose(np.linalg.norm(feats, axis=1), 1.0)
    assert M.SSCD_COPY_THRESHOLD == 0.75 and sscd.describe()["copy_threshold"] == 0.75


def test_sscd_missing_file_is_one_line_with_the_download_command(tmp_path):
    path = tmp_path / "sscd_disc_mixup.torchscript.pt"
    with pytest.raises(M.FeatureModelUnavailableError) as err:
        M.SscdFeatures(path)
    message = str(err.value)
    assert "\n" not in message and f"curl -L -o {path} " in message
    assert message.endswith("sscd_disc_mixup.torchscript.pt")


def test_library_versions_are_read_without_importing_the_libraries():
    """Each feature space records the versions; importing transformers and torchmetrics just
    for that cost 07 seconds. The figures must still be the libraries' own versions."""
    import subprocess
    import sys

    code = ("import sys, json; from shoelib.metrics.features import library_versions; "
            "v = library_versions(); print(json.dumps([v, sorted(m for m in "
            "('transformers', 'torchmetrics') if m in sys.modules)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    import json

    import PIL
    import transformers

    versions, imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert imported == []
    assert versions["transformers"] == transformers.__version__
    assert versions["torch"] == torch.__version__ and versions["pillow"] == PIL.__version__
