"""Decode product photos and letterbox them into square (or aspect-bucket) training images.

A product photo (1800x2400 in the Kaggle set) becomes a `size`x`size` RGB PNG: the whole
photo kept (no crop, aspect unchanged), resized with LANCZOS and centred on a square filled
with the photo's own background colour, so the padding does not show as a seam.

Aspect buckets (`PrepareConfig.buckets`): instead of the square, the photo is fitted into the
bucket nearest its aspect ratio (`bucket_sizes`: about size² pixels, sides in steps of
`bucket_step(size)`, 64 px at 512; a 3:4 photo goes to 448x576) and padded the same way. The
pad is then a few pixels instead of a quarter of the square; fitting (not kohya's
resize-to-cover and crop) keeps the whole product, toes and heel included.

Speed: JPEGs are decoded at reduced scale (`Image.draft`: libjpeg's DCT scaling decodes
1/2, 1/4 or 1/8 of each side at a fraction of the cost) to the smallest scale that is still
at least the target size, so LANCZOS then downsamples by less than 2x and the result stays
within a fraction of a grey level of a full decode. Files are spread over processes.

Beside each prepared image, `write_mask` can store its foreground mask (`foreground_mask`:
everything but the near-white background connected to the border; 255 = product) as
masks/<same name>, for a training loss weighted towards the product.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from scipy import ndimage

from shoelib.io import atomic_path
from shoelib.processes import die_with_parent

# Bump when a change here would change the pixels of a prepared image: the dataset manifest
# records it, so a rerun redoes the images instead of keeping stale ones.
PREPARATION_VERSION = 1
WHITE = (255, 255, 255)
BORDER_WIDTH = 2  # px of the photo's edge that estimate its background colour
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
# A pixel within this CIELAB distance of pure white is "near white" (background candidate).
BACKGROUND_DELTA_E = 12.0
MASKS_DIR = "masks"  # a prepared image's foreground mask: <split>/masks/<same file name>


class ImageConfigError(ValueError):
    """An invalid preparation setting (size, compression level)."""


# A photo whose shorter side is below this is a placeholder or a broken thumbnail, not a
# product: a 1x1 pixel would become a flat 512x512 square captioned as a shoe.
MIN_IMAGE_SIDE = 32


def check_min_side(min_side: object) -> int:
    """`min_image_side` as given, or ImageConfigError naming it and the fix."""
    if isinstance(min_side, bool) or not isinstance(min_side, int) or min_side < 1:
        raise ImageConfigError(f"min_image_side={min_side!r} must be a whole number of pixels "
                               f">= 1; use e.g. {MIN_IMAGE_SIDE}")
    return min_side


def size_problem(width: int, height: int, min_side: int) -> str | None:
    """Why a width x height photo is too small to use, or None. The one rule for 01 and 02."""
    if min(width, height) < min_side:
        return f"too small: {width}x{height} px, below min_image_side={min_side}"
    return None


# ---------------------------------------------------------------------------------------------
# Aspect buckets

MAX_BUCKET_RATIO = 2.0  # the longer bucket side is at most this many times the shorter


def bucket_step(area_side: int) -> int:
    """The side step of the buckets of an area_side² area: 1/8 of the side in multiples of 8
    (64 px at 512, 8 px at 64), so the buckets of every area are the same shapes scaled."""
    return max(8, 8 * round(area_side / 64))


def bucket_sizes(area_side: int = 512, step: int | None = None,
                 max_ratio: float = MAX_BUCKET_RATIO) -> list[tuple[int, int]]:
    """The (width, height) buckets of about area_side² pixels, squarest first.

    kohya-ss's bucket rule: for every width in steps of `step`, the largest height in steps
    of `step` with width * height <= area_side²; both orientations; limited here to aspect
    ratios up to `max_ratio` (kohya limits the sides instead). At 512 with step 64:
    512x512, 448x576, 576x448, 384x640, 640x384.

    Args:
        area_side: the side of the square whose area the buckets keep (px).
        step: side step (px); None = `bucket_step(area_side)`.
        max_ratio: the largest long/short side ratio.
    """
    step = bucket_step(area_side) if step is None else step
    area = area_side * area_side
    found = {(area_side // step * step,) * 2}
    for width in range(step, area_side + 1, step):
        height = area // width // step * step
        if height >= width and height / width <= max_ratio:
            found |= {(width, height), (height, width)}
    return sorted(found, key=lambda wh: (max(wh) / min(wh), -wh[0]))


def nearest_bucket(width: int, height: int,
                   buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest a width x height image's (compared as log
    ratios, so 1:2 and 2:1 are equally far from 1:1; ties go to the earlier, squarer one)."""
    target = np.log(width / height)
    return min(buckets, key=lambda wh: abs(np.log(wh[0] / wh[1]) - target))


def padding_share(sizes: Sequence[tuple[int, int]], size: int,
                  buckets: bool) -> float:
    """The share of the prepared pixels that are padding, not photo, over all `sizes`.

    Args:
        sizes: the photos' own (width, height).
        size: the square side (the letterbox) or the buckets' area side.
        buckets: measure the aspect buckets (`prepare_box` with buckets) instead of the square.
    Returns:
        padded pixels / all pixels, in [0, 1); 0.0 for no photo.
    """
    photo = total = 0
    for width, height in sizes:
        box = prepare_box(width, height, size, buckets)
        fitted = fit_box(width, height, box)
        photo += fitted[0] * fitted[1]
        total += box[0] * box[1]
    return 1 - photo / total if total else 0.0


def prepare_box(width: int, height: int, size: int, buckets: bool) -> tuple[int, int]:
    """The (width, height) a width x height photo is prepared at: the size x size square, or
    with `buckets` its `nearest_bucket` of about size² pixels."""
    if not buckets:
        return size, size
    return nearest_bucket(width, height, bucket_sizes(size))


@dataclass(frozen=True)
class PrepareConfig:
    """How a photo becomes a training image.

    size: side of the square output (px).
    compress_level: PNG zlib level 0-9. Pixels are identical at every level; 1 writes
        several times faster than Pillow's default 6 for files about 10-20 % larger, and
        decoding speed hardly depends on it (see benchmarks/bench_prepare.py).
    draft: decode JPEGs at reduced scale (see module docstring); False = full decode.
    min_side: photos whose shorter side is below this are refused as unreadable.
    masks: also write each image's foreground mask to `mask_path(dst)` (`write_mask`).
    buckets: fit each photo into its aspect bucket of about size² pixels (`prepare_box`)
        instead of the size x size square.
    """

    size: int = 512
    compress_level: int = 1
    draft: bool = True
    min_side: int = MIN_IMAGE_SIDE
    masks: bool = False
    buckets: bool = False

    def __post_init__(self) -> None:
        check_min_side(self.min_side)
        if not isinstance(self.buckets, bool):
            raise ImageConfigError(f"aspect_buckets={self.buckets!r} must be true or false "
                                   "(true: each photo at its aspect bucket; false: the square)")
        if not isinstance(self.size, int) or self.size < 8:
            raise ImageConfigError(f"image_size={self.size!r} is too small; use e.g. 512")
        if self.compress_level not in range(10):
            raise ImageConfigError(
                f"png_compress_level={self.compress_level!r} is not 0-9; use 1 (fast) or 6 (small)")


@dataclass(frozen=True)
class PreparedImage:
    """The outcome for one photo.

    status: 'ok' (dst written) or 'unreadable' (the source could not be decoded; dst untouched).
    error: "<ExceptionType>: <message>" when unreadable.
    source_size/source_mode: the file's own width x height and PIL mode (None if undecodable).
    size: the written image's width x height (None unless ok).
    """

    src: str
    dst: str
    status: str
    error: str | None = None
    source_size: tuple[int, int] | None = None
    source_mode: str | None = None
    size: tuple[int, int] | None = None


# ---------------------------------------------------------------------------------------------
# Pixels


def fit_size(width: int, height: int, size: int) -> tuple[int, int]:
    """The size a width x height image takes inside a size x size square, aspect kept.

    Args:
        width, height: source size (px).
        size: side of the square.
    Returns:
        (w, h) with max(w, h) == size and both >= 1.
    """
    return fit_box(width, height, (size, size))


def fit_box(width: int, height: int, box: tuple[int, int]) -> tuple[int, int]:
    """The size a width x height image takes inside a box (width, height), aspect kept: it
    touches the box on at least one side; both sides >= 1."""
    scale = min(box[0] / width, box[1] / height)
    return (min(box[0], max(1, round(width * scale))),
            min(box[1], max(1, round(height * scale))))


def to_rgb(img: Image.Image, matte: tuple[int, int, int] = WHITE) -> Image.Image:
    """Any PIL image as 8-bit RGB.

    Transparent pixels are composited onto `matte` (white: a cut-out product photo has a
    white studio background; a plain convert("RGB") would reveal whatever colour the
    transparent pixels happen to hold, often black). 16-bit and 32-bit grey levels are
    rescaled, not clipped (PIL's convert("L") clips I;16 values above 255 to white).

    Args:
        img: a loaded image of any mode.
        matte: colour behind transparent pixels.
    Returns:
        A new or the same RGB image.
    """
    if img.mode == "RGB":
        return img
    if img.mode in ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        backdrop = Image.new("RGBA", rgba.size, (*matte, 255))
        return Image.alpha_composite(backdrop, rgba).convert("RGB")
    if img.mode in HIGH_BIT_MODES:
        return _high_bit_to_grey(img).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, RGBX, HSV


def _high_bit_to_grey(img: Image.Image) -> Image.Image:
    """16-bit grey (I;16*, or I holding 16-bit data) -> /257; float in 0..1 -> *255."""
    values = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
    elif img.mode.startswith("I;16") or (values.size and values.max() > 255):
        scale = 1 / 257  # 65535 -> 255
    else:
        scale = 1.0
    return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8), "L")


def border_colour(img: Image.Image, width: int = BORDER_WIDTH) -> tuple[int, int, int]:
    """The background colour of a photo: the per-channel median of its outer `width` px.

    The median ignores the part of the edge that a product touches, as long as the
    background holds most of the border (true for studio product shots).

    Args:
        img: an RGB image.
        width: ring width (px).
    Returns:
        (r, g, b).
    """
    pixels = np.asarray(img)
    w = max(1, min(width, pixels.shape[0] // 2, pixels.shape[1] // 2))
    ring = np.concatenate([
        pixels[:w].reshape(-1, 3), pixels[-w:].reshape(-1, 3),
        pixels[w:-w, :w].reshape(-1, 3), pixels[w:-w, -w:].reshape(-1, 3),
    ])
    return tuple(int(v) for v in np.median(ring, axis=0))


def letterbox(img: Image.Image, size: int = 512, background: tuple[int, int, int] | None = None,
              resample: Image.Resampling = Image.Resampling.LANCZOS) -> Image.Image:
    """Fit a photo into a size x size square: aspect kept, centred, padded.

    Args:
        img: any mode (converted with `to_rgb`, transparency onto white).
        size: side of the square (px). Smaller photos are upscaled.
        background: padding colour; None = the photo's own (`border_colour`).
        resample: PIL filter for the resize.
    Returns:
        A new RGB image of size x size.
    """
    return letterbox_box(img, (size, size), background, resample)


def letterbox_box(img: Image.Image, box: tuple[int, int],
                  background: tuple[int, int, int] | None = None,
                  resample: Image.Resampling = Image.Resampling.LANCZOS) -> Image.Image:
    """`letterbox` into a box of (width, height) instead of a square (an aspect bucket)."""
    rgb = to_rgb(img)
    fill = background if background is not None else border_colour(rgb)
    target = fit_box(rgb.width, rgb.height, box)
    resized = rgb if rgb.size == target else rgb.resize(target, resample)
    canvas = Image.new("RGB", tuple(box), fill)
    canvas.paste(resized, ((box[0] - target[0]) // 2, (box[1] - target[1]) // 2))
    return canvas


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB values in [0, 1] -> linear light (the sRGB transfer function inverted)."""
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


# The transfer function of every 8-bit value: indexing it gives the same numbers as computing
# the power per pixel, in a fraction of the time.
_LINEAR_8BIT = _srgb_to_linear(np.arange(256) / 255.0)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of uint8 sRGB values, shape (..., 3) -> (..., 3)."""
    rgb = np.asarray(rgb)
    linear = (_LINEAR_8BIT[rgb] if rgb.dtype == np.uint8
              else _srgb_to_linear(rgb.astype(np.float64) / 255.0))
    m = np.array([[0.4124564, 0.3575761, 0.1804375],
                  [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = linear @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], axis=-1)


def foreground_mask(rgb: np.ndarray, background_delta_e: float = BACKGROUND_DELTA_E) -> np.ndarray:
    """Object pixels: everything except near-white regions that touch the image border.

    The white inside a white shoe is enclosed by its outline, so it stays foreground. The one
    definition of "the product" for 02's training masks and 07's photo checks.

    Args:
        rgb: uint8 sRGB, shape (h, w, 3).
        background_delta_e: a pixel within this CIELAB distance of pure white is near white.
    Returns:
        bool array (h, w), True on the object.
    """
    rgb = np.asarray(rgb, dtype=np.uint8)
    # Each distinct colour is converted once: a photo has far fewer colours than pixels.
    packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    colours, index = np.unique(packed.ravel(), return_inverse=True)
    lab = srgb_to_lab(np.stack([colours >> 16, (colours >> 8) & 255, colours & 255],
                               axis=-1).astype(np.uint8))
    white = np.linalg.norm(lab - np.array([100.0, 0.0, 0.0]), axis=-1) < background_delta_e
    near_white = white[index].reshape(rgb.shape[:2])
    labels, _ = ndimage.label(near_white)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    background = np.isin(labels, border[border > 0])
    return ~background


def mask_path(png: str | Path) -> Path:
    """Where the foreground mask of a prepared image lives: <its folder>/masks/<its name>."""
    png = Path(png)
    return png.parent / MASKS_DIR / png.name


def write_mask(square: Image.Image, path: str | Path) -> Path:
    """The foreground mask of a prepared image as an 8-bit PNG (255 = product), atomically."""
    mask = foreground_mask(np.asarray(square.convert("RGB")))
    with atomic_path(path) as tmp:
        Image.fromarray(mask.astype(np.uint8) * 255, "L").save(tmp, format="PNG")
    return Path(path)


def open_image(path: str | Path, size: int | None = None) -> Image.Image:
    """Decode an image file, upright (EXIF orientation applied).

    Args:
        path: image file (format from its content, not its name: a PNG named .jpg works).
        size: if given and the file is a JPEG, decode at the smallest DCT scale (1/1, 1/2,
            1/4, 1/8) whose result is still at least `fit_size(..., size)`, so a later
            resize to that size only ever downsamples.
    Returns:
        A loaded image (mode as decoded).
    Raises:
        OSError/ValueError/...: whatever Pillow raises for an undecodable file.
    """
    return _decode(path, None if size is None else (size, size))[0]


def open_rgb(path: str | Path) -> Image.Image:
    """An image file as upright 8-bit RGB, transparency composited on white (`to_rgb`)."""
    return to_rgb(open_image(path))


def _decode(path: str | Path, box: tuple[int, int] | Callable | None
            ) -> tuple[Image.Image, tuple[int, int], str]:
    """`open_image`, plus the file's own size and mode (before draft scaling). `box`: the
    (width, height) the image will be fitted into, or a function of the file's own size
    giving it (the aspect bucket depends on the photo), or None (no draft decoding)."""
    img = Image.open(path)
    try:
        source_size, source_mode = img.size, img.mode
        if callable(box):
            box = box(*source_size)
        if box is not None and img.format == "JPEG":
            img.draft(img.mode, fit_box(img.width, img.height, box))
        img.load()  # closes the file of a single-frame image
    except BaseException:
        img.close()
        raise
    ImageOps.exif_transpose(img, in_place=True)
    return img, source_size, source_mode


# ---------------------------------------------------------------------------------------------
# Files


def prepare_image(src: str | Path, dst: str | Path,
                  config: PrepareConfig = PrepareConfig()) -> PreparedImage:
    """Letterbox one photo into a PNG, written atomically.

    Args:
        src: source photo.
        dst: output .png (its folder is created).
        config: size, PNG level, draft decoding, whether to write the mask too.
    Returns:
        PreparedImage; status 'unreadable' (with the error) for a file that cannot be
        decoded or is below `config.min_side`, in which case nothing is written. Write errors (disk full) do raise.
    """
    try:
        # The box is chosen from the upright photo (EXIF orientation applied after decoding
        # can swap its sides); the draft only needs a box at least as large on both sides.
        draft = (lambda w, h: _draft_box(w, h, config)) if config.draft else None
        img, source_size, source_mode = _decode(src, draft)
        if problem := size_problem(*source_size, config.min_side):
            return PreparedImage(str(src), str(dst), "unreadable", problem, source_size, source_mode)
        box = prepare_box(img.width, img.height, config.size, config.buckets)
        square = letterbox_box(img, box)
    except Exception as err:  # any decoder failure is a property of the data, not a crash
        return PreparedImage(str(src), str(dst), "unreadable", f"{type(err).__name__}: {err}")
    if config.masks:  # before the image: a finished image always has its mask
        write_mask(square, mask_path(dst))
    with atomic_path(dst) as tmp:
        square.save(tmp, format="PNG", compress_level=config.compress_level)
    return PreparedImage(str(src), str(dst), "ok", None, source_size, source_mode, square.size)


def _draft_box(width: int, height: int, config: PrepareConfig) -> tuple[int, int]:
    """A box the draft-decoded photo must still cover: the square, or with buckets the
    larger sides of the photo's bucket in either orientation (EXIF may turn it)."""
    if not config.buckets:
        return config.size, config.size
    w, h = prepare_box(width, height, config.size, True)
    return max(w, h), max(w, h)


def resolve_workers(workers: int | None) -> int:
    """0 or None -> the CPUs this process may use; otherwise `workers` (at least 1)."""
    if workers:
        return max(1, int(workers))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _prepare_job(job: tuple[str, str, PrepareConfig]) -> PreparedImage:
    return prepare_image(*job)


def prepare_images(jobs: Sequence[tuple[str | Path, str | Path]],
                   config: PrepareConfig = PrepareConfig(), workers: int | None = 0,
                   progress: bool = True) -> Iterator[PreparedImage]:
    """Prepare many photos, spread over processes; results come in the order of `jobs`.

    Args:
        jobs: (src, dst) pairs.
        config: preparation settings.
        workers: processes; 0/None = one per usable CPU; 1 = in this process (no pool).
        progress: show a tqdm bar.
    Yields:
        One PreparedImage per job, as soon as it (and every job before it) is done, so a
        caller can record progress and an interrupted run loses at most the jobs in flight.
    """
    from tqdm.auto import tqdm

    tasks = [(str(src), str(dst), config) for src, dst in jobs]
    n_workers = min(resolve_workers(workers), max(1, len(tasks)))
    bar = tqdm(total=len(tasks), desc="letterboxing", unit="img", disable=not progress)
    try:
        if n_workers == 1:
            for task in tasks:
                yield _prepare_job(task)
                bar.update()
            return
        # Small chunks keep results flowing in order; large enough to amortise the IPC.
        chunksize = max(1, min(8, len(tasks) // (n_workers * 4)))
        # Workers die with this process: a killed run must not leave them writing images.
        pool = ProcessPoolExecutor(max_workers=n_workers, initializer=die_with_parent,
                                   initargs=(os.getpid(),))
        try:
            for result in pool.map(_prepare_job, tasks, chunksize=chunksize):
                yield result
                bar.update()
        finally:  # an interrupted caller must not wait for the queued images
            pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()
