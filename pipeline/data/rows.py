"""The decode stage of every pass: units in, rows of uint8 crops out, a block at a time.

A decode task takes a unit (:mod:`pipeline.data.plan`), reads its members in one pass
(:mod:`pipeline.data.shards`), and yields blocks of at most ``block_rows`` rows as it goes, so
the model starts on a shard before it has been read to its end. Each row carries its image's
id, source, label, split and view, why it could not be read (``error``; its crop is blank),
and the bookkeeping the writers and the driver need: the unit's digest, on its last rows how
many rows the unit made (so a writer knows when the unit is complete), and when the block was
read and how many bytes the unit had read by then.

Example:

    >>> from pipeline.data.listing import plan_data
    >>> from pipeline.data.rows import decode_units
    >>> from pipeline.data.shapes import generate_shapes
    >>> from pipeline.settings import AugmentConfig, DataConfig, Preprocess
    >>> _ = generate_shapes(tmp / "d", per_class=2, size=32)
    >>> plan = plan_data(DataConfig(sources=[str(tmp / "d")]))
    >>> tiny = Preprocess(resize_size=32, crop_size=32, mean=(0, 0, 0), std=(1, 1, 1))
    >>> blocks = list(decode_units({"unit": plan.units[:1]}, plan=plan, preprocess=tiny,
    ...                            views=0, augment=AugmentConfig(), block_rows=256))
    >>> blocks[0]["image"].shape, int(blocks[-1]["unit_rows"].max())
    ((2, 3, 32, 32), 2)
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
from PIL import Image

from pipeline.data.decode import (
    BadImage,
    augmented,
    augmented_side,
    decode_image,
    open_image,
    resize_crop,
    view_seed,
)
from pipeline.data.plan import DataPlan, Unit, hash_split, item_id
from pipeline.data.schema import (
    BYTES,
    EMPTY_VIEW,
    ERROR,
    ID,
    IMAGE,
    LABEL,
    LABEL_NAME,
    READ_AT,
    READ_BYTES,
    SOURCE,
    SPLIT,
    UNIT,
    UNIT_ROWS,
    UNLABELED,
    VIEW,
)
from pipeline.data.shards import Member, Reader
from pipeline.settings import AugmentConfig, Preprocess


def decode_units(
    batch: dict,
    *,
    plan: DataPlan,
    preprocess: Preprocess,
    views: int,
    augment: AugmentConfig,
    block_rows: int,
    classes: list[str] | None = None,
    gpu_jpeg: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """Every unit of ``batch`` (a column ``unit``) as blocks of rows: view 0 is the network's
    own resize and crop; views 1..K (for ``augment.splits``) are seeded random crops. An
    unreadable member becomes one row with ``error`` set and a blank image, so the rest of its
    unit carries on. Labels are indexes into ``classes`` (default: the plan's); with no class
    names known, a row carries its label's name and the writer settles the index. ``gpu_jpeg``:
    a JPEG without augmented views travels as its bytes for the model actor's GPU."""
    Image.MAX_IMAGE_PIXELS = plan.max_pixels
    classes = classes if classes is not None else plan.classes
    index = None if classes is None else {name: i for i, name in enumerate(classes)}
    for unit in batch["unit"]:
        unit = Unit.from_json(unit) if isinstance(unit, str) else unit
        rows = _Rows(unit, preprocess, augment, gpu_jpeg)
        reader, total, seen = Reader(unit), 0, set()
        for member in reader.members():
            split = member_split(plan, unit, member)
            if not plan.reads(split) or member.source in seen:
                continue  # a split this job leaves out, or a path listed twice: not again
            seen.add(member.source)
            extra = views if split in augment.splits else 0
            rows.add(member, split, index, extra, reader, plan.max_pixels)
            if rows.count > block_rows:  # one row kept back: the unit's last block is never empty
                total += rows.count - 1
                yield rows.block(reader.bytes_read, keep=1)
        if total + rows.count == 0:
            rows.add_empty(reader.members_seen)
        total += rows.count
        yield rows.block(reader.bytes_read, last=total)


def member_split(plan: DataPlan, unit: Unit, member: Member) -> str:
    """A member's split: its source's (or its shard name's), else its manifest row's, else a
    hash of its key (:mod:`pipeline.data.listing` counts manifests' splits the same way)."""
    return unit.split or member.split or hash_split(member.key, plan.splits)


def member_rows(plan: DataPlan, units: list[Unit], classes: list[str] | None = None):
    """``(id, source, label index, split, member)`` of every member of ``units`` the plan reads,
    unit after unit, without decoding an image (a shard is read to enumerate its members)."""
    classes = classes if classes is not None else plan.classes
    index = None if classes is None else {name: i for i, name in enumerate(classes)}
    for unit in units:
        for member in Reader(unit).members():
            split = member_split(plan, unit, member)
            if plan.reads(split):
                label = _label(member.label, index)
                yield item_id(member.source), member.source, label, split, member


def _label(name: str | None, index: dict[str, int] | None) -> int:
    """A class name's index (unlabeled: no name, no index known, or a name that is not one of
    the classes, as a predicted image's label may be)."""
    if name is None or index is None:
        return UNLABELED
    return index.get(name, UNLABELED)


class _Rows:
    """The rows of one unit not yet yielded."""

    def __init__(self, unit: Unit, preprocess: Preprocess, augment: AugmentConfig, gpu: bool):
        self.unit, self.preprocess, self.augment, self.gpu = unit, preprocess, augment, gpu
        crop = preprocess.crop_size
        self.blank = np.zeros((3, crop, crop), np.uint8)
        self.sides = {
            False: preprocess.resize_size,
            True: max(preprocess.resize_size, augmented_side(crop, augment)),
        }
        self.clear()

    def clear(self) -> None:
        self.columns = {k: [] for k in (ID, SOURCE, LABEL, LABEL_NAME, SPLIT, VIEW, ERROR)}
        self.images, self.encoded = [], []

    @property
    def count(self) -> int:
        return len(self.images)

    def add(self, member: Member, split: str, index, extra: int, reader, max_pixels) -> None:
        """Decode ``member``: its rows (view 0 and its augmented views), or one error row
        (which keeps the member's label when it has one)."""
        label = UNLABELED
        try:
            label = _label(member.label, index)
            data = member.data if member.data is not None else reader.file_bytes(member.source)
            opened, data = open_image(member.source, max_pixels, data)
            if self.gpu and not extra and opened.format == "JPEG":
                self._row(member, split, label, 0, "", self.blank, data)
                return
            image = decode_image(opened, data, self.sides[extra > 0])
        except (BadImage, OSError, ValueError) as e:  # OSError: the storage gave no bytes
            self._row(member, split, label, 0, str(e) or type(e).__name__, self.blank)
            return
        self._row(member, split, label, 0, "", resize_crop(image, self.preprocess))
        for view in range(1, 1 + extra):
            seed = view_seed(item_id(member.source), view, self.augment.seed)
            crop = augmented(image, self.preprocess.crop_size, self.augment, seed)
            self._row(member, split, label, view, "", crop)

    def add_empty(self, members: int) -> None:
        """The one row of a unit with nothing to read in this pass: an error when the unit
        holds no image at all (an empty shard is recorded, never silently empty), else a row
        of :data:`EMPTY_VIEW` (its members are all in splits the pass leaves out)."""
        member = Member(self.unit.key, self.unit.uri, None)
        if members:
            self._row(member, self.unit.split or "", UNLABELED, EMPTY_VIEW, "", self.blank)
        else:
            self._row(
                member, self.unit.split or "", UNLABELED, 0, "no images in this unit", self.blank
            )

    def _row(self, member, split, label, view, error, image, encoded=b"") -> None:
        values = (item_id(member.source), member.source, label, member.label or "", split, view)
        for key, value in zip((ID, SOURCE, LABEL, LABEL_NAME, SPLIT, VIEW), values):
            self.columns[key].append(value)
        self.columns[ERROR].append(error)
        self.images.append(image)
        self.encoded.append(encoded)

    def block(self, bytes_read: int, last: int = -1, keep: int = 0) -> dict[str, np.ndarray]:
        """The rows so far but the last ``keep`` as a block; ``last``: the unit's row count, on
        its final block."""
        n = self.count - keep
        texts = (ID, SOURCE, LABEL_NAME, SPLIT, ERROR)
        out = {k: np.array(self.columns[k][:n], dtype=object) for k in texts}
        out[LABEL] = np.array(self.columns[LABEL][:n], np.int32)
        out[VIEW] = np.array(self.columns[VIEW][:n], np.int16)
        images = self.images[:n]
        out[IMAGE] = np.stack(images) if n else np.zeros((0, *self.blank.shape), np.uint8)
        if self.gpu:
            out[BYTES] = np.array(self.encoded[:n], dtype=object)
        out[UNIT] = np.full(n, self.unit.digest, dtype=object)
        out[UNIT_ROWS] = np.full(n, last, np.int64)
        out[READ_AT] = np.full(n, time.time())
        out[READ_BYTES] = np.full(n, bytes_read, np.int64)
        for values in self.columns.values():
            del values[:n]
        del self.images[:n], self.encoded[:n]
        return out
