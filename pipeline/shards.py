"""What a training worker reads: its shard of a split, as batches of frontier tensors.

A fit's data is a :class:`FeatureInput` (a feature set: the frontier was computed once) or an
:class:`ImageInput` (items: decoded, maybe augmented, and run through the frozen prefix under
no-grad every epoch). Either way a worker gets every world-th row of the split sorted by id,
and the epoch loop sees the same ``(inputs, labels)`` batches.

Example:

    >>> from pipeline.shards import epoch_order
    >>> [b.tolist() for b in epoch_order(5, per_rank=6, batch_size=4, seed=0, epoch=1)]
    [[0, 4, 2, 3], [1, 0]]
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from pipeline.decode import BadImage, augmentation, read_image, resize_crop, seeded, view_seed
from pipeline.engine import TorchEngine
from pipeline.featureset import ID, LABEL, SOURCE, SPLIT, FeatureSet
from pipeline.graph import TransferNet
from pipeline.settings import AugmentConfig, Preprocess, TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureInput:
    """Train on a feature set (its ``uri``)."""

    uri: str


@dataclass(frozen=True)
class ImageInput:
    """Train on images (``items``), read with ``preprocess``; ``once``: run the frozen prefix
    over them once, in the worker, and hold the features (a trial that featurizes for itself,
    the per-trial baseline of ``jobs.benchmark sweep``)."""

    items: pa.Table
    preprocess: Preprocess
    once: bool = False


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
        parts, labels = [], []
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


class _ImageDataset(torch.utils.data.Dataset):
    """Items -> uint8 crops: the network's own resize and crop, or a random resized crop and
    flip seeded by (item, epoch) so a resumed run sees the same augmentation."""

    def __init__(
        self,
        table: pa.Table,
        preprocess: Preprocess,
        augment: AugmentConfig | None,
        max_pixels: int,
    ):
        self.ids, self.sources = table.column(ID).to_pylist(), table.column(SOURCE).to_pylist()
        self.size, self.augment, self.max_pixels = preprocess.crop_size, augment, max_pixels
        self.plain = resize_crop(preprocess)
        self.augmented = augmentation(preprocess.crop_size, augment) if augment else None
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        try:
            image = read_image(self.sources[i], self.max_pixels)
        except (BadImage, OSError):
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), False
        if self.augmented is None:
            return self.plain(image), True
        return seeded(
            self.augmented, image, view_seed(self.ids[i], self.epoch, self.augment.seed)
        ), True


class ImageData:
    """A worker's shard of an image split: decode (and augment), then the frozen prefix under
    no-grad, so each batch arrives as frontier tensors like :class:`FeatureData`'s."""

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
    ):
        table = items.filter(pc.equal(items.column(SPLIT), split))
        table = table.take(pc.sort_indices(table, [(ID, "ascending")]))
        rank, world = shard
        table = table.take(pa.array(np.arange(rank, table.num_rows, world), pa.int64()))
        self.labels = torch.from_numpy(table.column(LABEL).to_numpy().astype(np.int64))
        self.dataset = _ImageDataset(table, preprocess, augment, max_pixels)
        self.prefix = TorchEngine(net.prefix(), preprocess, device=device)
        self.names, self.skipped = net.frontier(), 0
        self.say_every: float | None = None  # seconds between progress lines (rank 0)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, order: list[torch.Tensor], epoch: int, device) -> Iterator:
        self.dataset.epoch = epoch
        # its own generator: drawing the loader's seed from the global one would shift dropout
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=[i.tolist() for i in order], generator=torch.Generator()
        )
        start = last = time.perf_counter()
        for step, (idx, (images, ok)) in enumerate(zip(order, loader), 1):
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
            self.skipped += int((~ok).sum())
            if ok.any():
                features = self.prefix(images[ok])
                # inference-mode tensors cannot enter autograd: clone them out of it
                yield (
                    [features[n].float().clone() for n in self.names],
                    self.labels[idx][ok].to(device),
                )


def open_shards(
    data: Input, net: TransferNet, cfg: TrainConfig, shard: tuple[int, int], device
) -> tuple[FeatureData | ImageData, FeatureData | ImageData]:
    """This rank's (train, val) shards of ``data``."""
    if isinstance(data, FeatureInput):
        fs = FeatureSet.open(data.uri)
        return (
            FeatureData.read(fs, cfg.train_split, shard, plain=False),
            FeatureData.read(fs, cfg.val_split, shard, plain=True),
        )
    shards = tuple(
        ImageData(
            data.items, split, shard, net, data.preprocess, augment, cfg.max_image_pixels, device
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
