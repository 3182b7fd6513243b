"""Feature sets larger than a training worker's memory: its shard read from the Parquet parts a
few rows at a time (pyarrow) through a seeded shuffle buffer, and the budget that decides.

Example:

    >>> from pipeline.settings import TrainConfig
    >>> from pipeline.train.streaming import memory_budget
    >>> memory_budget(TrainConfig(memory_budget=2**20))
    1048576
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from pipeline.data.featureset import FeatureSet
from pipeline.data.schema import LABEL, SPLIT, VIEW, labels_of
from pipeline.settings import TrainConfig


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
