"""Reading images: bytes -> upright RGB -> the network's uint8 crop, or a seeded augmented one.

Every pass over images (featurize, predict, end-to-end training, evaluation on images) reads
them here, so they agree on orientation, resizing, what counts as unreadable and why. Decoders
ship uint8 crops (4x smaller than float); the model side normalizes. Decoding needs only Pillow
and NumPy: the Ray tasks that run it never load torch. A JPEG much larger than its target is
decoded at a reduced scale (Pillow's ``draft``), a fraction of the cost of a full decode.

Example:

    >>> import numpy as np
    >>> from PIL import Image
    >>> from pipeline.data.decode import decode_batch
    >>> from pipeline.settings import AugmentConfig, Preprocess
    >>> Image.new("RGB", (40, 30)).save(tmp / "a.png")
    >>> rows = decode_batch({"id": np.array(["a", "b"]), "label": np.array([0, 1]),
    ...                      "source": np.array([str(tmp / "a.png"), str(tmp / "gone.png")]),
    ...                      "split": np.array(["train", "train"])},
    ...                     preprocess=Preprocess(resize_size=36, crop_size=32, mean=(0, 0, 0),
    ...                                           std=(1, 1, 1)),
    ...                     views=0, augment=AugmentConfig(), max_pixels=10**6)
    >>> rows["image"].shape, rows["error"][1][:12]
    ((2, 3, 32, 32), '[Errno 2] No')
"""

from __future__ import annotations

import hashlib
import io
import math
import warnings

import fsspec
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.data.schema import ID, LABEL, SOURCE, SPLIT, VIEW
from pipeline.data.shards import fetch, is_member
from pipeline.settings import MAX_IMAGE_PIXELS, AugmentConfig, Preprocess

DECODER = "pil-draft-1"  # in feature-set identities: how pixels were decoded
ERROR = "error"  # in-flight column: why a row's image could not be read ("" when it could)
IMAGE = "image"  # in-flight column: the uint8 crop; dropped by the model stage
BYTES = "bytes"  # in-flight column: a JPEG for the model actor's GPU to decode (gpu_decode)
MODEL_DONE = "model_done"  # in-flight column: when the model actor finished the row's batch
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
    member's, :func:`pipeline.data.shards.fetch`) and parse its header (not its pixels): the lazily
    opened image and the bytes, or :class:`BadImage` saying why it is not a usable image."""
    if data is None and is_member(source):  # one member alone: its shard read for it
        data = fetch([source])[source]
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


def decode_batch(
    batch: dict,
    *,
    preprocess: Preprocess,
    views: int,
    augment: AugmentConfig,
    max_pixels: int,
    gpu_jpeg: bool = False,
) -> dict[str, np.ndarray]:
    """Items -> rows with a uint8 ``image`` (3, crop, crop): view 0 is the network's own resize
    and crop; views 1..K (for ``augment.splits``) are seeded random crops. An unreadable item
    becomes one row with ``error`` set and a blank image, so the rest of its block carries on.
    ``gpu_jpeg``: a JPEG without augmented views travels as its bytes (column ``bytes``, its
    image blank) for the model actor to decode on its GPU."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    crop = preprocess.crop_size
    sides = {
        False: preprocess.resize_size,
        True: max(preprocess.resize_size, augmented_side(crop, augment)),
    }
    blank = np.zeros((3, crop, crop), np.uint8)
    rows: dict[str, list] = {k: [] for k in (ID, SOURCE, LABEL, SPLIT, VIEW, ERROR, IMAGE, BYTES)}

    def add(item, view, error, image, encoded=b""):
        for key, value in zip((ID, SOURCE, LABEL, SPLIT), item):
            rows[key].append(value)
        rows[VIEW].append(view)
        rows[ERROR].append(error)
        rows[IMAGE].append(image)
        rows[BYTES].append(encoded)

    fetched = fetch(list(batch[SOURCE]))  # shard members: each shard read once for the batch
    for item in zip(*(list(batch[k]) for k in (ID, SOURCE, LABEL, SPLIT))):
        extra = views if item[3] in augment.splits else 0
        try:
            opened, data = open_image(item[1], max_pixels, fetched.get(item[1]))
            if gpu_jpeg and not extra and opened.format == "JPEG":
                add(item, 0, "", blank, data)
                continue
            image = decode_image(opened, data, sides[extra > 0])
        except (BadImage, OSError) as e:  # OSError: the storage could not give the bytes
            add(item, 0, str(e) or type(e).__name__, blank)
            continue
        add(item, 0, "", resize_crop(image, preprocess))
        for view in range(1, 1 + extra):
            seed = view_seed(item[0], view, augment.seed)
            add(item, view, "", augmented(image, crop, augment, seed))
    out = {k: np.array(v, dtype=object) for k, v in rows.items() if k in (ID, SOURCE, SPLIT, ERROR)}
    out[LABEL] = np.array(rows[LABEL], np.int32)
    out[VIEW] = np.array(rows[VIEW], np.int16)
    out[IMAGE] = np.stack(rows[IMAGE]) if rows[IMAGE] else np.zeros((0, *blank.shape), np.uint8)
    if gpu_jpeg:
        out[BYTES] = np.array(rows[BYTES], dtype=object)
    return out


def load_crop(
    source: str, preprocess: Preprocess, max_pixels: int = MAX_IMAGE_PIXELS
) -> np.ndarray:
    """One image as the network's uint8 crop, exactly as every pass decodes it."""
    return resize_crop(read_image(source, max_pixels, preprocess.resize_size), preprocess)
