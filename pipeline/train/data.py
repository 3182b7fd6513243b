"""What a training worker reads: its shard of a split, as batches of frontier tensors.

A fit's data is a :class:`FeatureInput` (a feature set: the frontier was computed once) or an
:class:`ImageInput` (images: decoded, maybe augmented, and run through the frozen prefix under
no-grad every epoch: :mod:`pipeline.train.images`). Either way a worker gets its share of the
split, and the epoch loop sees the same ``(inputs, labels)`` batches.

Example:

    >>> from pipeline.train.data import epoch_order
    >>> [b.tolist() for b in epoch_order(5, per_rank=6, batch_size=4, seed=0, epoch=1)]
    [[0, 4, 2, 3], [1, 0]]
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from pipeline.data.featureset import FeatureSet
from pipeline.data.plan import DataPlan
from pipeline.net.graph import TransferNet
from pipeline.settings import Preprocess, TrainConfig
from pipeline.train.images import image_data
from pipeline.train.streaming import StreamedFeatures, shuffle_buffer_rows, streams


@dataclass(frozen=True)
class FeatureInput:
    """Train on a feature set (its ``uri``)."""

    uri: str


@dataclass(frozen=True)
class ImageInput:
    """Train on images (the ``plan``'s units: the workers enumerate their members), read with
    ``preprocess``; ``once``: run the frozen prefix over them once, in the worker, and hold
    the features (a trial that featurizes for itself, the per-trial baseline of
    ``jobs.benchmark sweep``)."""

    plan: DataPlan
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
    def of_images(cls, images, device) -> FeatureData:
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


def open_shards(
    data: Input,
    net: TransferNet,
    cfg: TrainConfig,
    shard: tuple[int, int],
    device,
    cache: str | None = None,
) -> tuple:
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
        image_data(
            data.plan,
            split,
            shard,
            net,
            augment=augment,
            device=device,
            engine=cfg.engine,
            threads=max(1, int(cfg.cpus_per_worker)),
            cache=cache,
            preprocess=data.preprocess,
            buffer_rows=cfg.image_buffer,
            seed=cfg.fine_tune.seed if cfg.fine_tune else 0,
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
