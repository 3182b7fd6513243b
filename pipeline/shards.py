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
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from pipeline.decode import BadImage, augmented, augmented_side, read_image, resize_crop, view_seed
from pipeline.engine import build_engine
from pipeline.featureset import ID, LABEL, SOURCE, SPLIT, VIEW, FeatureSet, labels_of
from pipeline.graph import TransferNet
from pipeline.settings import AugmentConfig, Preprocess, TrainConfig
from pipeline.stores import fetch

log = logging.getLogger(__name__)
DECODERS = 2  # threads decoding a training worker's images (PIL and torch release the GIL)


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


class StreamedFeatures:
    """A worker's shard of a feature-set split read a few rows at a time, for shards larger
    than ``train.memory_budget``: this rank's part files (every world-th), in an order seeded by
    (seed, epoch), streamed through a shuffle buffer seeded the same way, so an epoch's batches
    are the same on every run and a resume from an epoch boundary is exact. Rows mix within the
    buffer only (not the in-memory path's full permutation), and ranks hold whole files, so the
    busiest rank's rows set every rank's steps (with fewer files than ranks, every rank reads
    them all and keeps every world-th row). The worker reads the Parquet pages itself
    (pyarrow): Ray Data's executor in each worker cost ~170 MiB more (measured), more than the
    data on a small budget."""

    def __init__(
        self,
        fs: FeatureSet,
        split: str,
        shard: tuple[int, int],
        plain: bool,
        buffer_rows: int,
        seed: int = 0,
        rows: list[int] | None = None,
    ):
        """``rows``: the split's rows in each part file, when counted already."""
        rank, world = shard
        self.split, self.plain, self.names = split, plain, list(fs.shapes)
        self.buffer_rows, self.seed = buffer_rows, seed
        rows, paths = rows if rows is not None else fs.rows_per_file(split, plain), fs.paths
        by_file = [sum(rows[r::world]) for r in range(world)]
        self.keep: tuple[int, int] | None = None
        if min(by_file) > 0:  # every rank has files with rows of the split: whole files each
            mine = range(rank, len(paths), world)
            self.files = [paths[i] for i in mine]
            self.rows, self.per_rank = by_file[rank], max(by_file)
        else:  # too few files: every rank reads them all and keeps every world-th row
            self.files, self.keep = list(paths), (rank, world)
            self.offsets = dict(zip(paths, np.cumsum([0, *rows[:-1]]).tolist()))
            self.rows = len(range(rank, sum(rows), world))
            self.per_rank = math.ceil(sum(rows) / world)

    def __len__(self) -> int:
        return self.rows

    def _chunks(self, files: list[str]) -> Iterator[tuple[dict, np.ndarray]]:
        """The split's rows of ``files`` in order, a quarter buffer at a time."""
        step = max(1, self.buffer_rows // 4)
        for path in files:
            fs, local = fsspec.core.url_to_fs(path)
            seen = self.offsets[path] if self.keep else 0  # the split's rows before this one
            with fs.open(local, "rb") as f:
                parquet = pq.ParquetFile(f)
                columns = [SPLIT, VIEW, LABEL, *self.names]
                for batch in parquet.iter_batches(batch_size=step, columns=columns):
                    keep = pc.equal(batch.column(SPLIT), self.split)
                    if self.plain:
                        keep = pc.and_(keep, pc.equal(batch.column(VIEW), 0))
                    batch = batch.filter(keep)
                    if self.keep:
                        rank, world = self.keep
                        index = np.arange(seen, seen + batch.num_rows)
                        seen += batch.num_rows
                        batch = batch.filter(pa.array(index % world == rank))
                    if batch.num_rows:
                        features = {
                            n: batch.column(n).to_numpy_ndarray().astype(np.float32)
                            for n in self.names
                        }
                        yield features, labels_of(pa.Table.from_batches([batch]))

    def _stream(self, epoch: int, lap: int) -> Iterator[tuple[dict, torch.Tensor]]:
        """Epoch 0 (evaluation): in file order. Training: files in a seeded order through a
        seeded shuffle buffer of ``buffer_rows``."""
        if not epoch:
            yield from map(_tensors, self._chunks(self.files))
            return
        seed = (self.seed * 1_000_003 + epoch) * 1_009 + lap
        rng = np.random.default_rng(seed)
        files = [self.files[i] for i in rng.permutation(len(self.files))]
        pool: tuple[dict, np.ndarray] | None = None
        for features, labels in self._chunks(files):
            pool = _joined(pool, (features, labels))
            while len(pool[1]) > self.buffer_rows:
                pick = rng.permutation(len(pool[1]))
                out, pool = (
                    _taken(pool, pick[: len(pool[1]) - self.buffer_rows]),
                    _taken(pool, pick[len(pool[1]) - self.buffer_rows :]),
                )
                yield _tensors(out)
        if pool is not None and len(pool[1]):
            yield _tensors(_taken(pool, rng.permutation(len(pool[1]))))

    def batches(self, order: list[torch.Tensor], epoch: int, device) -> Iterator:
        """As many batches, of the same sizes, as ``order`` has (its indexes are not used: rows
        come in the stream's order, wrapping around to fill a rank with fewer rows)."""
        if not self.rows:
            return
        lap, stream = 0, self._stream(epoch, 0)
        pending: list[tuple[dict, torch.Tensor]] = []
        for size in (len(b) for b in order):
            while sum(len(y) for _, y in pending) < size:
                chunk = next(stream, None)
                if chunk is None:  # this rank's rows are spent: another lap (shorter ranks)
                    lap += 1
                    stream = self._stream(epoch, lap)
                    continue
                pending.append(chunk)
            features = {n: torch.cat([f[n] for f, _ in pending]) for n in self.names}
            labels = torch.cat([y for _, y in pending])
            rest = ({n: v[size:] for n, v in features.items()}, labels[size:])
            pending = [rest] if len(rest[1]) else []
            yield [features[n][:size].to(device) for n in self.names], labels[:size].to(device)


def _joined(pool, chunk):
    if pool is None:
        return chunk
    return {n: np.concatenate([pool[0][n], chunk[0][n]]) for n in chunk[0]}, np.concatenate(
        [pool[1], chunk[1]]
    )


def _taken(pool, index: np.ndarray):
    return {n: v[index] for n, v in pool[0].items()}, pool[1][index]


def _tensors(chunk) -> tuple[dict, torch.Tensor]:
    return {n: torch.from_numpy(v) for n, v in chunk[0].items()}, torch.from_numpy(chunk[1])


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
            cfg.max_image_pixels,
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


def memory_budget(cfg: TrainConfig) -> int:
    """Bytes a worker may hold its shard in: ``train.memory_budget``, else a quarter of this
    node's memory split among the workers that may share it."""
    if cfg.memory_budget is not None:
        return cfg.memory_budget
    import psutil

    return psutil.virtual_memory().total // (4 * max(1, cfg.workers))


def row_bytes(fs: FeatureSet) -> int:
    """Bytes one row of features takes in a worker (float32 tensors)."""
    return 4 * sum(math.prod(shape) for shape in fs.shapes.values())


def streams(fs: FeatureSet, cfg: TrainConfig, world: int, rows: int | None = None) -> bool:
    """Whether a worker's shard (train and val) is larger than its memory budget; ``rows``:
    the train and (plain) val rows, when counted already."""
    if rows is None:
        rows = sum(fs.rows_per_file(cfg.train_split)) + sum(fs.rows_per_file(cfg.val_split, True))
    return math.ceil(rows / world) * row_bytes(fs) > memory_budget(cfg)


def shuffle_buffer_rows(fs: FeatureSet, cfg: TrainConfig) -> int:
    """Rows of a streamed shard's shuffle buffer: a quarter of the budget (the rest holds the
    blocks in flight and the batches), at least one batch."""
    return max(cfg.batch_size, memory_budget(cfg) // (4 * row_bytes(fs)))


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
