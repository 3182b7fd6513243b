"""Reading images: bytes -> upright RGB -> the network's uint8 crop, or a seeded augmented one.

Every pass over images (featurize, predict, end-to-end training, evaluation on images) reads
them here, so they agree on orientation, resizing, what counts as unreadable and why. Decoders
ship uint8 crops (4x smaller than float); the model side normalizes.

Example:

    >>> import numpy as np, tempfile
    >>> from PIL import Image
    >>> from pipeline.decode import decode_batch
    >>> from pipeline.settings import AugmentConfig, Preprocess
    >>> path = tempfile.mktemp(suffix=".png")
    >>> Image.new("RGB", (40, 30)).save(path)
    >>> rows = decode_batch({"id": np.array(["a", "b"]), "source": np.array([path, "/nowhere"]),
    ...                      "label": np.array([0, 1]), "split": np.array(["train", "train"])},
    ...                     preprocess=Preprocess(resize_size=36, crop_size=32, mean=(0, 0, 0),
    ...                                           std=(1, 1, 1)),
    ...                     views=0, augment=AugmentConfig(), max_pixels=10**6)
    >>> rows["image"].shape, rows["error"][1][:12]
    ((2, 3, 32, 32), '[Errno 2] No')
"""

from __future__ import annotations

import hashlib
import io
import warnings

import fsspec
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms import InterpolationMode, v2

from pipeline.featureset import ID, LABEL, SOURCE, SPLIT, VIEW
from pipeline.settings import AugmentConfig, Preprocess

ERROR = "error"  # in-flight column: why a row's image could not be read ("" when it could)
IMAGE = "image"  # in-flight column: the uint8 crop; dropped by the model stage


class BadImage(ValueError):
    """An input that is not a readable image; the reason goes to ``_errors.parquet``."""


def read_image(source: str, max_pixels: int) -> Image.Image:
    """Read and decode one image as RGB, upright per its EXIF orientation."""
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
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked above
            image.load()
        return ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:  # ... and for damaged image data
        raise BadImage(f"truncated or corrupt: {e}") from None


def resize_crop(preprocess: Preprocess) -> v2.Compose:
    """The geometric half of the network's preprocessing: image -> uint8 CHW crop."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(
                preprocess.resize_size,
                interpolation=InterpolationMode(preprocess.interpolation),
                antialias=True,
            ),
            v2.CenterCrop(preprocess.crop_size),
        ]
    )


def transform(preprocess: Preprocess) -> v2.Compose:
    """The whole preprocessing (what a plain PyTorch loop would use): image -> float tensor."""
    return v2.Compose(
        [
            resize_crop(preprocess),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(preprocess.mean, preprocess.std),
        ]
    )


def augmentation(crop: int, cfg: AugmentConfig) -> v2.Compose:
    """A random resized crop (and flip): image -> uint8 CHW crop; seed it per view."""
    steps = [
        v2.ToImage(),
        v2.RandomResizedCrop(crop, scale=cfg.scale, ratio=cfg.ratio, antialias=True),
    ]
    return v2.Compose(steps + ([v2.RandomHorizontalFlip()] if cfg.flip else []))


def view_seed(item_id: str, view: int, seed: int) -> int:
    """A seed per (item, view or epoch, seed): the same crop on every run and worker."""
    return int.from_bytes(hashlib.sha256(f"{item_id}:{view}:{seed}".encode()).digest()[:7], "big")


def seeded(transform_: v2.Compose, image: Image.Image, seed: int) -> torch.Tensor:
    """``transform_(image)`` with torch's global generator seeded, then restored."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform_(image)


def decode_batch(
    batch: dict, *, preprocess: Preprocess, views: int, augment: AugmentConfig, max_pixels: int
) -> dict[str, np.ndarray]:
    """Items -> rows with a uint8 ``image`` (3, crop, crop): view 0 is the network's own resize
    and crop; views 1..K (for ``augment.splits``) are seeded random crops. An unreadable item
    becomes one row with ``error`` set and a blank image, so the rest of its block carries on."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    plain, augmented = resize_crop(preprocess), augmentation(preprocess.crop_size, augment)
    blank = np.zeros((3, preprocess.crop_size, preprocess.crop_size), np.uint8)
    rows: dict[str, list] = {k: [] for k in (ID, SOURCE, LABEL, SPLIT, VIEW, ERROR, IMAGE)}

    def add(item, view, error, image):
        for key, value in zip((ID, SOURCE, LABEL, SPLIT), item):
            rows[key].append(value)
        rows[VIEW].append(view)
        rows[ERROR].append(error)
        rows[IMAGE].append(image)

    for item in zip(*(list(batch[k]) for k in (ID, SOURCE, LABEL, SPLIT))):
        try:
            image = read_image(item[1], max_pixels)
        except (BadImage, OSError) as e:  # OSError: the storage could not give the bytes
            add(item, 0, str(e) or type(e).__name__, blank)
            continue
        add(item, 0, "", plain(image).numpy())
        for view in range(1, 1 + (views if item[3] in augment.splits else 0)):
            add(
                item,
                view,
                "",
                seeded(augmented, image, view_seed(item[0], view, augment.seed)).numpy(),
            )
    out = {k: np.array(v, dtype=object) for k, v in rows.items() if k in (ID, SOURCE, SPLIT, ERROR)}
    out[LABEL] = np.array(rows[LABEL], np.int32)
    out[VIEW] = np.array(rows[VIEW], np.int16)
    out[IMAGE] = np.stack(rows[IMAGE]) if rows[IMAGE] else np.zeros((0, *blank.shape), np.uint8)
    return out
