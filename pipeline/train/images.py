"""A training worker's images: decoded (and augmented: a random resized crop and flip seeded by
(image, epoch), so a resumed run sees the same crops) by a few threads ahead of the model, run
through the frozen prefix on its engine, so each batch arrives as frontier tensors like a
feature set's.

Two ways in, by what the data's units allow (:mod:`pipeline.data.plan`):

- :class:`ImageData`: files (a folder's, a manifest's): the worker lists its share of them,
  every world-th image of the split sorted by id, and reads any of them at any time, so an
  epoch is a full permutation;
- :class:`StreamedImages`: shards (tars, Parquet files of images), which are read front to
  back: the worker streams its shards (every world-th) in an order seeded by (seed, epoch)
  through a shuffle buffer seeded the same way, as WebDataset does; it counts its members once,
  when it starts (reading its shards once without decoding), so every rank takes the same
  number of steps.

Example (a folder's images, a worker of one):

    >>> from pipeline.data.listing import plan_data
    >>> from pipeline.net.builder import TransferLearning
    >>> from pipeline.settings import DataConfig
    >>> from pipeline.train.data import in_order
    >>> from pipeline.train.images import ImageData
    >>> net = TransferLearning("tiny:cnn").set_feature_extractor("pool").build()
    >>> plan = plan_data(DataConfig(sources=[shapes], splits={"train": 1.0}))
    >>> images = ImageData(plan, "train", (0, 1), net, None, "cpu")
    >>> inputs, labels = next(images.batches(in_order(len(images), 4), 0, "cpu"))
    >>> tuple(inputs[0].shape), len(images) == plan.count("train")
    ((4, 16, 1, 1), True)
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from pipeline.data.decode import (
    BadImage,
    augmented,
    augmented_side,
    decode_image,
    open_image,
    read_image,
    resize_crop,
    view_seed,
)
from pipeline.data.plan import DataPlan, Unit
from pipeline.data.rows import member_rows
from pipeline.data.shards import Reader
from pipeline.engine.export import build_engine
from pipeline.net.graph import TransferNet
from pipeline.settings import AugmentConfig, Preprocess

log = logging.getLogger(__name__)
DECODERS = 2  # threads decoding a training worker's images (PIL and torch release the GIL)
RANDOM_ACCESS = ("files", "csv", "table")  # units whose images are files of their own


class _Crops:
    """What both ways share: the crop of an image, and the frozen prefix that runs on it."""

    def __init__(self, plan, net, preprocess, augment, device, engine, threads, cache):
        self.plan, self.augment = plan, augment
        self.preprocess = preprocess or Preprocess(**net.spec["preprocess"])
        crop = self.preprocess.crop_size
        self.side = max(
            self.preprocess.resize_size, augmented_side(crop, augment) if augment else 0
        )
        self.blank = np.zeros((3, crop, crop), np.uint8)
        self.names, self.shapes, self.skipped = net.frontier(), net.frontier_shapes(), 0
        self.prefix = build_engine(
            net.prefix(),
            self.names,
            self.preprocess,
            engine,
            torch.device(device).type,
            threads,
            cache=cache,
            key=net.prefix_sha256(),
            what="the frozen prefix",
        )
        self.say_every: float | None = None  # seconds between progress lines (rank 0)

    def crop(self, item: str, source: str, epoch: int, data=None) -> tuple[np.ndarray, bool]:
        """An image as a uint8 crop (blank and False when unreadable); ``data``: its bytes,
        when read already (a shard member's)."""
        try:
            if data is None:
                image = read_image(source, self.plan.max_pixels, self.side)
            else:
                image = decode_image(*open_image(source, self.plan.max_pixels, data), self.side)
        except (BadImage, OSError, ValueError):
            return self.blank, False
        if self.augment is None:
            return resize_crop(image, self.preprocess), True
        seed = view_seed(item, epoch, self.augment.seed)
        return augmented(image, self.preprocess.crop_size, self.augment, seed), True

    def run(self, crops: list, labels: torch.Tensor, device) -> Iterator:
        """The frozen prefix over a batch's readable crops."""
        ok = np.array([good for _, good in crops], dtype=bool)
        self.skipped += int((~ok).sum())
        if ok.any():
            features = self.prefix(np.stack([c for c, good in crops if good]))
            yield (
                [torch.from_numpy(features[n]).to(device) for n in self.names],
                labels[torch.from_numpy(ok)].to(device),
            )

    def progress(self, epoch: int, step: int, steps: int, images: int, start: float, last: float):
        now = time.perf_counter()
        if self.say_every and now - last > self.say_every:
            log.info(
                "epoch %d: batch %d/%d, %.1f images/s", epoch, step, steps, images / (now - start)
            )
            return now
        return last


class ImageData(_Crops):
    """A worker's share of a split of files (every world-th image sorted by id), any of which
    it reads at any time."""

    def __init__(
        self,
        plan: DataPlan,
        split: str,
        shard: tuple[int, int],
        net: TransferNet,
        augment: AugmentConfig | None,
        device,
        engine: str = "auto",
        threads: int | None = None,
        cache: str | None = None,
        preprocess: Preprocess | None = None,
    ):
        super().__init__(plan, net, preprocess, augment, device, engine, threads, cache)
        rows = sorted(r[:3] for r in member_rows(plan, plan.units) if r[3] == split)
        rank, world = shard
        mine = rows[rank::world]
        self.ids, self.sources = [r[0] for r in mine], [r[1] for r in mine]
        self.labels = torch.tensor([r[2] for r in mine], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, order: list[torch.Tensor], epoch: int, device) -> Iterator:
        start = last = time.perf_counter()
        with ThreadPoolExecutor(DECODERS) as pool:
            ahead = deque()
            for step, idx in enumerate(order, 1):
                decoding = [
                    pool.submit(self.crop, self.ids[i], self.sources[i], epoch)
                    for i in idx.tolist()
                ]
                ahead.append((idx, decoding))
                if len(ahead) < 2 and step < len(order):
                    continue  # one batch decodes while the previous one runs
                idx, decoding = ahead.popleft()
                yield from self.run([f.result() for f in decoding], self.labels[idx], device)
                images = sum(map(len, order[:step]))
                last = self.progress(epoch, step, len(order), images, start, last)
            while ahead:
                idx, decoding = ahead.popleft()
                yield from self.run([f.result() for f in decoding], self.labels[idx], device)


class StreamedImages(_Crops):
    """A worker's shards of a split, streamed (see the module doc). With fewer shards than
    ranks, every rank reads them all and keeps every world-th member."""

    def __init__(
        self,
        plan: DataPlan,
        split: str,
        shard: tuple[int, int],
        net: TransferNet,
        augment: AugmentConfig | None,
        device,
        engine: str = "auto",
        threads: int | None = None,
        cache: str | None = None,
        preprocess: Preprocess | None = None,
        buffer_rows: int = 1024,
        seed: int = 0,
    ):
        super().__init__(plan, net, preprocess, augment, device, engine, threads, cache)
        rank, world = shard
        # shards whose name or source gives another split hold nothing of this one: left out
        # before dealing, or a rank could get none of the split and wait on the others
        units = sorted((u for u in plan.units if u.split in (None, split)), key=lambda u: u.digest)
        if len(units) >= world:
            self.units, self.keep = units[rank::world], None
        else:
            self.units, self.keep = units, (rank, world)
        self.split, self.buffer_rows, self.seed = split, buffer_rows, seed
        self.rows = sum(1 for _ in self._members(self.units))  # one read, nothing decoded
        if not self.rows and self.keep is None and world > 1:  # its shards hold none of the
            self.units, self.keep = units, (rank, world)  # split: every world-th of them all
            self.rows = sum(1 for _ in self._members(self.units))

    def __len__(self) -> int:
        return self.rows

    def _members(self, units: list[Unit]) -> Iterator[tuple[str, str, int, bytes | None]]:
        """``(id, source, label, bytes)`` of this rank's members of the split, in read order."""
        seen = 0
        for unit in units:
            reader = Reader(unit)
            for item, source, label, split, member in member_rows(self.plan, [unit]):
                if split != self.split:
                    continue
                seen += 1
                if self.keep and (seen - 1) % self.keep[1] != self.keep[0]:
                    continue
                data = member.data if member.data is not None else None
                if data is None and unit.kind in RANDOM_ACCESS:
                    data = reader.file_bytes(source)
                yield item, source, label, data

    def _stream(self, epoch: int, lap: int) -> Iterator[tuple[str, str, int, bytes]]:
        """Epoch 0 (evaluation): in order. Training: units in a seeded order through a seeded
        shuffle buffer of ``buffer_rows`` members."""
        if not epoch:
            yield from self._members(self.units)
            return
        rng = np.random.default_rng((self.seed * 1_000_003 + epoch) * 1_009 + lap)
        units = [self.units[i] for i in rng.permutation(len(self.units))]
        pool = []
        for member in self._members(units):
            pool.append(member)
            if len(pool) > self.buffer_rows:
                yield pool.pop(int(rng.integers(len(pool))))
        while pool:
            yield pool.pop(int(rng.integers(len(pool))))

    def batches(self, order: list[torch.Tensor], epoch: int, device) -> Iterator:
        """As many batches, of the same sizes, as ``order`` has (its indexes are not used:
        members come in the stream's order, wrapping around to fill a rank with fewer)."""
        if not self.rows:
            return
        lap, stream, start, last = 0, self._stream(epoch, 0), time.perf_counter(), 0.0
        with ThreadPoolExecutor(DECODERS) as pool:
            for step, size in enumerate((len(b) for b in order), 1):
                batch = []
                while len(batch) < size:
                    member = next(stream, None)
                    if member is None:  # this rank's members are spent: another lap
                        lap += 1
                        stream = self._stream(epoch, lap)
                        continue
                    batch.append(member)
                crops = list(pool.map(lambda m: self.crop(m[0], m[1], epoch, m[3]), batch))
                labels = torch.tensor([m[2] for m in batch], dtype=torch.int64)
                yield from self.run(crops, labels, device)
                images = sum(map(len, order[:step]))
                last = self.progress(epoch, step, len(order), images, start, last)


def image_data(
    plan: DataPlan, split: str, shard: tuple[int, int], net: TransferNet, **kwargs
) -> ImageData | StreamedImages:
    """The way in ``plan``'s units allow (see the module doc)."""
    if plan.classes is None:
        raise ValueError(
            "training on images needs the class names before it starts, and these shards "
            "carry labels without names: give the source's label_names, or featurize first "
            "(jobs.train with mode: features does)"
        )
    if all(u.kind in RANDOM_ACCESS for u in plan.units):
        kwargs.pop("buffer_rows", None), kwargs.pop("seed", None)
        return ImageData(plan, split, shard, net, **kwargs)
    return StreamedImages(plan, split, shard, net, **kwargs)
