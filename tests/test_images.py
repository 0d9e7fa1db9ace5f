"""shoelib.images: letterboxing, mode conversion, reduced-scale JPEG decoding, file preparation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from shoelib import images
from shoelib.images import PrepareConfig, letterbox, prepare_image, prepare_images, to_rgb

BEIGE = (240, 236, 228)


def product_photo(width: int, height: int, background=BEIGE, seed: int = 0) -> Image.Image:
    """A textured 'product' in the middle of a plain background, like a studio shot."""
    rng = np.random.default_rng(seed)
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[:] = background
    y0, y1, x0, x1 = height // 4, 3 * height // 4, width // 6, 5 * width // 6
    ramp = np.linspace(40, 200, x1 - x0)[None, :, None]
    texture = rng.normal(0, 12, (y1 - y0, x1 - x0, 3))
    pixels[y0:y1, x0:x1] = np.clip(ramp + texture + [30, 0, -20], 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).mean())


# ---------------------------------------------------------------------------------------------
# letterbox


def test_letterbox_keeps_aspect_centres_and_pads_with_the_background():
    photo = product_photo(200, 400)
    square = letterbox(photo, 64)
    assert square.size == (64, 64) and square.mode == "RGB"
    pixels = np.asarray(square)
    # 200x400 -> 32x64, centred: 16 px of padding left and right, in the photo's background
    assert (pixels[:, :16] == BEIGE).all() and (pixels[:, 48:] == BEIGE).all()
    reference = photo.resize((32, 64), Image.Resampling.LANCZOS)  # PIL's own LANCZOS
    assert np.array_equal(pixels[:, 16:48], np.asarray(reference))


def test_letterbox_landscape_and_upscaling():
    photo = product_photo(90, 60)  # smaller than the target: upscaled
    pixels = np.asarray(letterbox(photo, 120))
    # 90x60 -> 120x80: 20 px bands at top and bottom
    assert (pixels[:20] == BEIGE).all() and (pixels[100:] == BEIGE).all()
    assert not (pixels[20:100] == BEIGE).all()


def test_background_is_estimated_from_the_border_even_when_the_product_touches_it():
    photo = product_photo(100, 100, background=(200, 210, 220))
    pixels = np.asarray(photo).copy()
    pixels[60:, 30:70] = (10, 10, 10)  # the product reaches the bottom edge
    assert images.border_colour(Image.fromarray(pixels)) == (200, 210, 220)
    wide = product_photo(100, 50)
    assert letterbox(wide, 50, background=(1, 2, 3)).getpixel((0, 0)) == (1, 2, 3)


# ---------------------------------------------------------------------------------------------
# modes


def test_grayscale_becomes_equal_rgb_channels():
    grey = Image.fromarray(np.tile(np.arange(0, 250, 10, dtype=np.uint8), (10, 1)), "L")
    rgb = np.asarray(to_rgb(grey))
    assert rgb.shape == (10, 25, 3)
    assert (rgb[..., 0] == np.asarray(grey)).all() and (rgb[..., 0] == rgb[..., 2]).all()


def test_cmyk_round_trips_to_the_original_colours():
    photo = product_photo(60, 40)
    assert np.array_equal(np.asarray(to_rgb(photo.convert("CMYK"))), np.asarray(photo))


def test_rgba_transparency_becomes_white_not_black():
    rgba = Image.new("RGBA", (60, 30), (0, 0, 0, 0))  # transparent black, as cut-outs store it
    rgba.paste((200, 0, 0, 255), (20, 5, 40, 25))
    assert rgba.convert("RGB").getpixel((0, 0)) == (0, 0, 0)  # what a plain convert does
    square = letterbox(rgba, 60)
    assert square.getpixel((2, 2)) == (255, 255, 255)  # padding
    assert square.getpixel((5, 20)) == (255, 255, 255)  # transparent part of the photo
    assert square.getpixel((30, 30)) == (200, 0, 0)
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    assert to_rgb(half).getpixel((0, 0)) == (127, 127, 127)  # 50 % black over white


@pytest.mark.parametrize("mode", ["P", "LA", "L"])
def test_transparent_palette_and_grey_alpha_become_white(mode):
    if mode == "LA":
        img = Image.new("LA", (8, 8), (0, 0))
        img.putpixel((4, 4), (50, 255))
    else:
        img = Image.new(mode, (8, 8), 0)
        img.putpixel((4, 4), 1)
        img.info["transparency"] = 0
        if mode == "P":
            img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    rgb = to_rgb(img)
    assert rgb.getpixel((0, 0)) == (255, 255, 255)
    assert rgb.getpixel((4, 4)) != (255, 255, 255)


def test_sixteen_bit_grey_is_rescaled_not_clipped():
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    img = Image.fromarray(values)
    assert img.mode.startswith("I;16")
    assert [p[0] for p in np.asarray(to_rgb(img))[0]] == [0, 1, 128, 255]
    assert Image.fromarray(values).convert("L").getpixel((2, 0)) == 255  # PIL's own clips
    as_i = Image.fromarray(values.astype(np.int32), "I")
    assert np.asarray(to_rgb(as_i))[0, 2, 0] == 128
    as_f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert [p[0] for p in np.asarray(to_rgb(as_f))[0]] == [0, 128, 255]


def test_file_quirks_decode_by_content(tmp_path):
    """Grey and CMYK JPEGs, and an RGBA PNG saved under a .jpg name (all in the real data)."""
    photo = product_photo(120, 160)
    photo.convert("L").save(tmp_path / "grey.jpg", quality=95)
    photo.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.eval(photo.convert("L"), lambda v: 0 if v >= 230 else 255))
    rgba.save(tmp_path / "png.jpg", format="PNG")
    expected = letterbox(photo, 64)
    for name in ("grey", "cmyk", "png"):
        result = prepare_image(tmp_path / f"{name}.jpg", tmp_path / f"{name}.png",
                               PrepareConfig(size=64))
        assert result.status == "ok", result.error
        out = Image.open(tmp_path / f"{name}.png")
        assert out.size == (64, 64) and out.mode == "RGB"
        if name == "cmyk":
            assert result.source_mode == "CMYK"
            assert mean_abs_diff(out, expected) < 3  # JPEG loss only
    png = Image.open(tmp_path / "png.png")
    assert png.getpixel((0, 0)) == (255, 255, 255)  # transparent background -> white
    grey = np.asarray(Image.open(tmp_path / "grey.png"))
    assert (grey[..., 0] == grey[..., 1]).all()


def test_exif_orientation_is_applied(tmp_path):
    photo = product_photo(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    photo.save(tmp_path / "rotated.jpg", exif=exif)
    assert images.open_image(tmp_path / "rotated.jpg").size == (20, 40)


# ---------------------------------------------------------------------------------------------
# reduced-scale decoding


def test_draft_decoding_matches_full_decoding_within_one_grey_level(tmp_path):
    size = 256
    for seed, (w, h) in enumerate([(1200, 1600), (1600, 1200), (1000, 1000)]):
        path = tmp_path / f"{seed}.jpg"
        product_photo(w, h, seed=seed).save(path, quality=90)
        drafted = images.open_image(path, size)
        target = images.fit_size(w, h, size)
        # decoded at a DCT scale (1/4 here), still at least the target size
        assert drafted.width < w and drafted.width >= target[0] and drafted.height >= target[1]
        fast = prepare_image(path, tmp_path / f"{seed}_fast.png", PrepareConfig(size=size))
        slow = prepare_image(path, tmp_path / f"{seed}_full.png",
                             PrepareConfig(size=size, draft=False))
        assert fast.status == slow.status == "ok"
        assert fast.source_size == (w, h)
        diff = mean_abs_diff(Image.open(fast.dst), Image.open(slow.dst))
        assert diff < 1.0, f"{w}x{h}: mean difference {diff:.3f}/255"


# ---------------------------------------------------------------------------------------------
# files


def test_unreadable_sources_are_reported_not_raised(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    product_photo(300, 400).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("not an image")
    for name in ("zero", "truncated", "text", "absent"):
        result = prepare_image(tmp_path / f"{name}.jpg", tmp_path / "out" / f"{name}.png",
                               PrepareConfig(size=32))
        assert result.status == "unreadable" and result.error, name
        assert not (tmp_path / "out" / f"{name}.png").exists()
    assert "truncated" in prepare_image(tmp_path / "truncated.jpg", tmp_path / "t.png").error


def test_prepare_images_in_parallel_equals_serial_and_keeps_order(tmp_path):
    jobs = []
    for i in range(6):
        product_photo(150 + 10 * i, 200, seed=i).save(tmp_path / f"{i}.jpg", quality=90)
        jobs.append((tmp_path / f"{i}.jpg", tmp_path / "par" / f"{i}.png"))
    (tmp_path / "3.jpg").write_bytes(b"broken")
    config = PrepareConfig(size=48)
    parallel = list(prepare_images(jobs, config, workers=2, progress=False))
    serial = list(prepare_images([(s, d.parent.with_name("ser") / d.name) for s, d in jobs],
                                 config, workers=1, progress=False))
    assert [r.src for r in parallel] == [str(s) for s, _ in jobs]
    assert [r.status for r in parallel] == ["ok"] * 3 + ["unreadable"] + ["ok"] * 2
    for p, s in zip(parallel, serial, strict=True):
        if p.status == "ok":
            assert np.array_equal(np.asarray(Image.open(p.dst)), np.asarray(Image.open(s.dst)))
    leftovers = [p.name for p in (tmp_path / "par").iterdir() if ".tmp" in p.name]
    assert leftovers == []  # atomic writes: no temporary file survives


def test_png_level_changes_size_not_pixels(tmp_path):
    product_photo(400, 600).save(tmp_path / "a.jpg", quality=90)
    fast = prepare_image(tmp_path / "a.jpg", tmp_path / "1.png", PrepareConfig(64, 1))
    small = prepare_image(tmp_path / "a.jpg", tmp_path / "9.png", PrepareConfig(64, 9))
    assert np.array_equal(np.asarray(Image.open(fast.dst)), np.asarray(Image.open(small.dst)))
    assert (tmp_path / "9.png").stat().st_size <= (tmp_path / "1.png").stat().st_size


def test_bad_settings_name_the_value_and_the_fix():
    with pytest.raises(ValueError, match=r"image_size=4 .*512"):
        PrepareConfig(size=4)
    with pytest.raises(ValueError, match=r"png_compress_level=12 is not 0-9"):
        PrepareConfig(compress_level=12)


def test_a_photo_below_min_side_is_refused_with_the_reason(tmp_path):
    for side in (1, 31, 32):
        Image.new("RGB", (side, 40), (200, 30, 30)).save(tmp_path / f"{side}.png")
    tiny = prepare_image(tmp_path / "1.png", tmp_path / "out" / "1.png", PrepareConfig(size=64))
    assert tiny.status == "unreadable" and not (tmp_path / "out" / "1.png").exists()
    assert tiny.error == "too small: 1x40 px, below min_image_side=32"
    assert prepare_image(tmp_path / "31.png", tmp_path / "out" / "31.png").status == "unreadable"
    assert prepare_image(tmp_path / "32.png", tmp_path / "out" / "32.png").status == "ok"
    lenient = PrepareConfig(size=64, min_side=1)
    assert prepare_image(tmp_path / "1.png", tmp_path / "out" / "1.png", lenient).status == "ok"


@pytest.mark.parametrize("value", [0, -1, 2.5, "32", True])
def test_min_image_side_must_be_a_whole_number_of_pixels(value):
    with pytest.raises(images.ImageConfigError, match=rf"^min_image_side={value!r} must be a whole"):
        PrepareConfig(min_side=value)


def test_open_rgb_is_upright_rgb_with_transparency_on_white(tmp_path):
    from shoelib.images import open_rgb

    photo = Image.new("RGB", (40, 20), (200, 30, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    photo.save(tmp_path / "turned.jpg", exif=exif)
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    turned = open_rgb(tmp_path / "turned.jpg")
    assert (turned.mode, turned.size) == ("RGB", (20, 40))
    assert open_rgb(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)


# ---------------------------------------------------------------------------------------------
# aspect buckets


def test_buckets_keep_the_area_in_64_px_steps_and_put_3_4_at_448x576():
    buckets = images.bucket_sizes(512)
    assert buckets[0] == (512, 512)
    assert set(buckets) == {(512, 512), (448, 576), (576, 448), (384, 640), (640, 384)}
    for w, h in buckets:
        assert w % 64 == 0 and h % 64 == 0
        assert 0.9 * 512 * 512 <= w * h <= 512 * 512  # about 512² pixels, never more
        assert max(w, h) / min(w, h) <= images.MAX_BUCKET_RATIO
    assert images.nearest_bucket(1800, 2400, buckets) == (448, 576)  # the catalogue's 3:4
    assert images.nearest_bucket(2400, 1800, buckets) == (576, 448)
    assert images.nearest_bucket(1000, 1000, buckets) == (512, 512)
    assert images.nearest_bucket(100, 1000, buckets) == (384, 640)  # beyond 1:2: the longest
    # the buckets of another area are the same shapes scaled, in steps of 8 at 64 px
    assert images.bucket_step(64) == 8 and images.bucket_step(512) == 64
    assert images.bucket_sizes(64) == [(w // 8, h // 8) for w, h in buckets]


def test_a_photo_is_fitted_into_its_bucket_whole_with_a_few_px_of_pad():
    photo = product_photo(300, 400)  # 3:4
    box = images.prepare_box(300, 400, 64, buckets=True)
    assert box == (56, 72)
    out = images.letterbox_box(photo, box)
    assert out.size == (56, 72)
    pixels = np.asarray(out)
    # 300x400 -> 54x72: one column of the photo's background on each side, nothing cut
    assert (pixels[:, 0] == BEIGE).all() and (pixels[:, -1] == BEIGE).all()
    whole = photo.resize((54, 72), Image.Resampling.LANCZOS)
    assert np.array_equal(pixels[:, 1:55], np.asarray(whole))
    assert images.prepare_box(300, 400, 64, buckets=False) == (64, 64)


def test_padding_share_of_the_letterbox_against_the_buckets():
    # 3:4 in a square: a quarter of the pixels are padding; in 448x576, 16 of 448 columns
    assert images.padding_share([(1800, 2400)], 512, buckets=False) == pytest.approx(0.25)
    assert images.padding_share([(1800, 2400)], 512, buckets=True) == pytest.approx(16 / 448)
    assert images.padding_share([(500, 500), (1800, 2400)], 512, False) == pytest.approx(0.125)
    assert images.padding_share([], 512, True) == 0.0


def test_prepare_image_at_buckets_writes_the_bucket_size(tmp_path):
    src = tmp_path / "photo.jpg"
    product_photo(300, 400).save(src, quality=95)
    square = prepare_image(src, tmp_path / "square.png", PrepareConfig(size=64, masks=True))
    bucket = prepare_image(src, tmp_path / "bucket.png",
                           PrepareConfig(size=64, masks=True, buckets=True))
    assert square.size == (64, 64) and Image.open(tmp_path / "square.png").size == (64, 64)
    assert bucket.size == (56, 72) and Image.open(tmp_path / "bucket.png").size == (56, 72)
    assert Image.open(images.mask_path(tmp_path / "bucket.png")).size == (56, 72)


def test_aspect_buckets_must_be_true_or_false():
    with pytest.raises(images.ImageConfigError, match=r"^aspect_buckets='yes' must be true or"):
        PrepareConfig(buckets="yes")
