"""Reading images: bytes -> upright RGB -> the network's uint8 crop, or a seeded augmented one.

Every pass over images (featurize, predict, end-to-end training, evaluation on images) decodes them
here (the decode stage that feeds them is :mod:`pipeline.data.rows`), so they agree on orientation,
resizing, what counts as unreadable and why. Decoders ship uint8 crops (4x smaller than float); the
model side normalizes. Decoding needs only Pillow and NumPy: the Ray tasks that run it never load
torch. A JPEG much larger than its target is decoded at a reduced scale (Pillow's ``draft``), a
fraction of the cost of a full decode.

Example:

    >>> from PIL import Image
    >>> from pipeline.data.decode import BadImage, load_crop
    >>> from pipeline.settings import Preprocess
    >>> Image.new("RGB", (40, 30)).save(tmp / "a.png")
    >>> (tmp / "b.png").write_bytes(b"")
    0
    >>> tiny = Preprocess(resize_size=36, crop_size=32, mean=(0, 0, 0), std=(1, 1, 1))
    >>> load_crop(str(tmp / "a.png"), tiny).shape
    (3, 32, 32)
    >>> try:
    ...     load_crop(str(tmp / "b.png"), tiny)
    ... except BadImage as e:
    ...     print(e)
    empty file (0 bytes)
"""

from __future__ import annotations

import hashlib
import io
import math
import warnings

import fsspec
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.data.shards import member_bytes, split_member
from pipeline.settings import MAX_IMAGE_PIXELS, AugmentConfig, Preprocess

DECODER = "pil-draft-1"  # in feature-set identities: how pixels were decoded
GPU_DECODER = "gpu-jpeg-1"  # the decoder of JPEGs decoded on the actors' GPUs
RESAMPLING = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


class BadImage(ValueError):
    """An input that is not a readable image; the reason goes to ``_errors.parquet``."""


def read_image(
    source: str, max_pixels: int, min_side: int | None = None, data: bytes | None = None
) -> Image.Image:
    """Read and decode one image as RGB, upright per its EXIF orientation. ``min_side``: the
    shortest side the caller will resize to; a JPEG much larger than that is decoded at a
    reduced scale (1/2, 1/4 or 1/8, still at least ``min_side``). ``data``: see
    :func:`open_image`."""
    return decode_image(*open_image(source, max_pixels, data), min_side)


def open_image(
    source: str, max_pixels: int, data: bytes | Exception | None = None
) -> tuple[Image.Image, bytes]:
    """Read a file (unless its bytes, or why they could not be read, are given: a shard
    member's, as :class:`pipeline.data.shards.Reader` read them) and parse its header (not its
    pixels): the lazily opened image and the bytes, or :class:`BadImage` saying why it is not a
    usable image."""
    if data is None and split_member(source):  # one member alone: its shard read for it
        data = member_bytes(source)
    if isinstance(data, Exception):
        raise data
    if data is None:
        with fsspec.open(source, "rb") as f:
            data = f.read()
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImage("not an image: no decoder recognizes its content") from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"decompression bomb: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:  # what PIL raises for damaged headers
        raise BadImage(f"truncated or corrupt: {e}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise BadImage(
            f"decompression bomb: {width}x{height} = {width * height} pixels exceeds "
            f"max_image_pixels={max_pixels} (raise it to accept such images)"
        )
    return image, data


def decode_image(image: Image.Image, data: bytes, min_side: int | None = None) -> Image.Image:
    """Decode an opened image's pixels as upright RGB (see :func:`read_image`)."""
    width, height = image.size
    if min_side and image.format == "JPEG" and min(width, height) > 2 * min_side:
        scale = min_side / min(width, height)
        image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked already
            image.load()
        return ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:  # ... and for damaged image data
        raise BadImage(f"truncated or corrupt: {e}") from None


def resize_crop(image: Image.Image, preprocess: Preprocess) -> np.ndarray:
    """The geometric half of the network's preprocessing, torchvision's ``Resize(resize_size)``
    then ``CenterCrop(crop_size)``: image -> uint8 (3, crop, crop)."""
    width, height = image.size
    size, crop = preprocess.resize_size, preprocess.crop_size
    if width <= height:
        width, height = size, int(size * height / width)
    else:
        width, height = int(size * width / height), size
    pixels = np.asarray(image.resize((width, height), RESAMPLING[preprocess.interpolation]))
    top, left = int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))
    if top < 0 or left < 0:  # a crop larger than the resized image: zero padding, as torchvision
        padded = np.zeros((max(height, crop), max(width, crop), 3), np.uint8)
        padded[max(0, -top) : max(0, -top) + height, max(0, -left) : max(0, -left) + width] = pixels
        pixels, top, left = padded, max(0, top), max(0, left)
    return np.ascontiguousarray(pixels[top : top + crop, left : left + crop].transpose(2, 0, 1))


def augmented(image: Image.Image, crop: int, cfg: AugmentConfig, seed: int) -> np.ndarray:
    """A random resized crop (and flip) of ``image`` as a uint8 (3, crop, crop), drawn from a
    generator of its own seeded by ``seed``: the same crop on every run, worker and thread (the
    draws are those of torchvision's ``RandomResizedCrop`` and ``RandomHorizontalFlip``)."""
    rng = np.random.default_rng(seed)
    top, left, height, width = _crop_box(image.size[::-1], cfg, rng)
    box = (left, top, left + width, top + height)
    pixels = np.asarray(image.resize((crop, crop), Image.Resampling.BILINEAR, box=box))
    if cfg.flip and rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _crop_box(size, cfg: AugmentConfig, rng: np.random.Generator) -> tuple[int, int, int, int]:
    height, width = size
    area, log_ratio = height * width, (math.log(cfg.ratio[0]), math.log(cfg.ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*cfg.scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    ratio = width / height  # no draw fitted: the central crop torchvision falls back to
    if ratio < min(cfg.ratio):
        w, h = width, int(round(width / min(cfg.ratio)))
    elif ratio > max(cfg.ratio):
        w, h = int(round(height * max(cfg.ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def augmented_side(crop: int, cfg: AugmentConfig) -> int:
    """The shortest side an image needs for a random resized crop of ``crop`` pixels from as
    little as ``cfg.scale[0]`` of its area to keep its detail."""
    return math.ceil(crop / math.sqrt(cfg.scale[0]))


def view_seed(item_id: str, view: int, seed: int) -> int:
    """A seed per (item, view or epoch, seed): the same crop on every run and worker."""
    return int.from_bytes(hashlib.sha256(f"{item_id}:{view}:{seed}".encode()).digest()[:7], "big")


def load_crop(
    source: str, preprocess: Preprocess, max_pixels: int = MAX_IMAGE_PIXELS
) -> np.ndarray:
    """One image as the network's uint8 crop, exactly as every pass decodes it."""
    return resize_crop(read_image(source, max_pixels, preprocess.resize_size), preprocess)
