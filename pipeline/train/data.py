"""What a training worker reads: its shard of a split, as batches of frontier tensors.

A fit's data is a :class:`FeatureInput` (a feature set: the frontier was computed once) or an
:class:`ImageInput` (items: decoded, maybe augmented, and run through the frozen prefix under
no-grad every epoch). Either way a worker gets every world-th row of the split sorted by id,
and the epoch loop sees the same ``(inputs, labels)`` batches.

Example:

    >>> from pipeline.train.data import epoch_order
    >>> [b.tolist() for b in epoch_order(5, per_rank=6, batch_size=4, seed=0, epoch=1)]
    [[0, 4, 2, 3], [1, 0]]
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from pipeline.data.decode import (
    BadImage,
    augmented,
    augmented_side,
    read_image,
    resize_crop,
    view_seed,
)
from pipeline.data.featureset import FeatureSet
from pipeline.data.schema import ID, SOURCE, SPLIT, labels_of
from pipeline.data.shards import fetch
from pipeline.engine.export import build_engine
from pipeline.net.graph import TransferNet
from pipeline.settings import MAX_IMAGE_PIXELS, AugmentConfig, Preprocess, TrainConfig
from pipeline.train.streaming import StreamedFeatures, shuffle_buffer_rows, streams

log = logging.getLogger(__name__)
DECODERS = 2  # threads decoding a training worker's images (PIL and torch release the GIL)


@dataclass(frozen=True)
class FeatureInput:
    """Train on a feature set (its ``uri``)."""

    uri: str


@dataclass(frozen=True)
class ImageInput:
    """Train on images (``items``), read with ``preprocess`` (larger than ``max_pixels``:
    skipped); ``once``: run the frozen prefix over them once, in the worker, and hold the
    features (a trial that featurizes for itself, the per-trial baseline of
    ``jobs.benchmark sweep``)."""

    items: pa.Table
    preprocess: Preprocess
    once: bool = False
    max_pixels: int = MAX_IMAGE_PIXELS


Input = FeatureInput | ImageInput


class FeatureData:
    """A worker's shard of a feature-set split, in memory: frontier tensors -> batches."""

    def __init__(self, features: dict[str, torch.Tensor], labels: torch.Tensor, names: list[str]):
        self.features, self.labels, self.names = features, labels, names

    @classmethod
    def read(
        cls, fs: FeatureSet, split: str, shard: tuple[int, int] = (0, 1), plain: bool = False
    ) -> FeatureData:
        features, labels = fs.tensors(split, torch.float32, shard=shard, plain=plain)
        return cls(features, labels, list(fs.shapes))

    @classmethod
    def of_images(cls, images: ImageData, device) -> FeatureData:
        """Run the frozen prefix over ``images`` once and hold the result."""
        empty = {n: torch.empty(0, *images.shapes[n]) for n in images.names}
        parts, labels = [[empty[n] for n in images.names]], [torch.empty(0, dtype=torch.int64)]
        for inputs, y in images.batches(in_order(len(images)), 0, device):
            parts.append(inputs)
            labels.append(y)
        features = {n: torch.cat([p[i] for p in parts]) for i, n in enumerate(images.names)}
        return cls(features, torch.cat(labels), images.names)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, order: list[torch.Tensor], epoch: int, device) -> Iterator:
        for idx in order:
            yield (
                [self.features[n][idx].to(device) for n in self.names],
                self.labels[idx].to(device),
            )


class ImageData:
    """A worker's shard of an image split: decoded (and augmented: a random resized crop and
    flip seeded by (item, epoch), so a resumed run sees the same crops) by a few threads a
    batch ahead, then run through the frozen prefix on its engine, so each batch arrives as
    frontier tensors like :class:`FeatureData`'s."""

    def __init__(
        self,
        items: pa.Table,
        split: str,
        shard: tuple[int, int],
        net: TransferNet,
        preprocess: Preprocess,
        augment: AugmentConfig | None,
        max_pixels: int,
        device,
        engine: str = "auto",
        threads: int | None = None,
        cache: str | None = None,
    ):
        table = items.filter(pc.equal(items.column(SPLIT), split))
        table = table.take(pc.sort_indices(table, [(ID, "ascending")]))
        rank, world = shard
        table = table.take(pa.array(np.arange(rank, table.num_rows, world), pa.int64()))
        self.ids, self.sources = table.column(ID).to_pylist(), table.column(SOURCE).to_pylist()
        self.labels = torch.from_numpy(labels_of(table))
        self.preprocess, self.augment, self.max_pixels = preprocess, augment, max_pixels
        self.side = max(
            preprocess.resize_size, augmented_side(preprocess.crop_size, augment) if augment else 0
        )
        self.names, self.shapes, self.skipped = net.frontier(), net.frontier_shapes(), 0
        self.prefix = build_engine(
            net.prefix(),
            self.names,
            preprocess,
            engine,
            torch.device(device).type,
            threads,
            cache=cache,
            key=net.prefix_sha256(),
            what="the frozen prefix",
        )
        self.say_every: float | None = None  # seconds between progress lines (rank 0)

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int, epoch: int, data=None) -> tuple[np.ndarray, bool]:
        """Row ``i`` as a uint8 crop (blank and False when unreadable); ``data``: its bytes when
        fetched already (a shard member)."""
        try:
            image = read_image(self.sources[i], self.max_pixels, self.side, data)
        except (BadImage, OSError):
            size = self.preprocess.crop_size
            return np.zeros((3, size, size), np.uint8), False
        if self.augment is None:
            return resize_crop(image, self.preprocess), True
        seed = view_seed(self.ids[i], epoch, self.augment.seed)
        return augmented(image, self.preprocess.crop_size, self.augment, seed), True

    def batches(self, order: list[torch.Tensor], epoch: int, device) -> Iterator:
        start = last = time.perf_counter()
        with ThreadPoolExecutor(DECODERS) as pool:
            ahead = deque()
            for step, idx in enumerate(order, 1):
                rows = idx.tolist()
                fetched = fetch([self.sources[i] for i in rows])  # shard members: one read a shard
                decoding = [
                    pool.submit(self.image, i, epoch, fetched.get(self.sources[i])) for i in rows
                ]
                ahead.append((idx, decoding))
                if len(ahead) < 2 and step < len(order):
                    continue  # one batch decodes while the previous one runs
                yield from self._run(*ahead.popleft(), device)
                now = time.perf_counter()
                if self.say_every and now - last > self.say_every:
                    last = now
                    log.info(
                        "epoch %d: batch %d/%d, %.1f images/s",
                        epoch,
                        step,
                        len(order),
                        sum(map(len, order[:step])) / (now - start),
                    )
            while ahead:
                yield from self._run(*ahead.popleft(), device)

    def _run(self, idx: torch.Tensor, decoding: list, device) -> Iterator:
        crops = [f.result() for f in decoding]
        ok = np.array([good for _, good in crops], dtype=bool)
        self.skipped += int((~ok).sum())
        if ok.any():
            features = self.prefix(np.stack([c for c, good in crops if good]))
            yield (
                [torch.from_numpy(features[n]).to(device) for n in self.names],
                self.labels[idx][torch.from_numpy(ok)].to(device),
            )


def open_shards(
    data: Input,
    net: TransferNet,
    cfg: TrainConfig,
    shard: tuple[int, int],
    device,
    cache: str | None = None,
) -> tuple[FeatureData | ImageData, FeatureData | ImageData]:
    """This rank's (train, val) shards of ``data`` (``cache``: where images' engines keep
    their exported prefix)."""
    if isinstance(data, FeatureInput):
        fs = FeatureSet.open(data.uri)
        # one pass over the key columns: it decides, and it is what a streamed shard needs
        train, val = fs.rows_per_file(cfg.train_split), fs.rows_per_file(cfg.val_split, True)
        if streams(fs, cfg, shard[1], sum(train) + sum(val)):
            buffer = shuffle_buffer_rows(fs, cfg)
            seed = cfg.fine_tune.seed if cfg.fine_tune else 0
            return (
                StreamedFeatures(fs, cfg.train_split, shard, False, buffer, seed, train),
                StreamedFeatures(fs, cfg.val_split, shard, True, buffer, seed, val),
            )
        return (
            FeatureData.read(fs, cfg.train_split, shard, plain=False),
            FeatureData.read(fs, cfg.val_split, shard, plain=True),
        )
    shards = tuple(
        ImageData(
            data.items,
            split,
            shard,
            net,
            data.preprocess,
            augment,
            data.max_pixels,
            device,
            cfg.engine,
            max(1, int(cfg.cpus_per_worker)),
            cache,
        )
        for split, augment in ((cfg.train_split, cfg.augment), (cfg.val_split, None))
    )
    if data.once:  # the prefix runs once, not every epoch
        return tuple(FeatureData.of_images(images, device) for images in shards)
    return shards


def epoch_order(
    n: int, per_rank: int, batch_size: int, seed: int, epoch: int
) -> list[torch.Tensor]:
    """A shard's batches for one epoch: a permutation seeded by (seed, epoch), padded by
    wrapping to ``per_rank`` rows so every worker takes the same number of steps (DDP needs it)."""
    if n == 0:
        return []
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator)
    order = order.repeat(math.ceil(per_rank / n))[:per_rank]
    return [order[i : i + batch_size] for i in range(0, per_rank, batch_size)]


def in_order(n: int, batch_size: int = 256) -> list[torch.Tensor]:
    """Every row once, in order, in batches (evaluation)."""
    return [torch.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
