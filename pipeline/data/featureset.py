"""Reading a feature set: :class:`FeatureSet` opens a complete directory (its manifest) and
reads it as torch tensors, pandas, a pyarrow Table or a Ray Dataset, reading only the files and
columns it needs.

Example:

    >>> from pipeline.data.featureset import FeatureSet
    >>> fs = FeatureSet.open("runs/features/tiny_cnn-pool-0123abcd")   # doctest: +SKIP
    >>> features, labels = fs.tensors(split="train")                    # doctest: +SKIP
"""

from __future__ import annotations

import json

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.data.schema import (
    ERRORS,
    FORMAT,
    ID,
    LABEL,
    MANIFEST,
    SPLIT,
    VIEW,
    FeatureSetError,
    feature_schema,
    labels_of,
)
from pipeline.runs.storage import current_fs


class FeatureSet:
    """A complete feature set. Open with :meth:`open`; read as torch tensors, pandas or a Ray
    Dataset. Only the files its manifest lists are read."""

    def __init__(self, uri: str, manifest: dict):
        self.uri, self.manifest = uri.rstrip("/"), manifest

    @classmethod
    def open(cls, uri: str) -> FeatureSet:
        fs, root = fsspec.core.url_to_fs(uri)
        try:
            manifest = json.loads(fs.cat_file(f"{root}/{MANIFEST}"))
        except FileNotFoundError:
            raise FeatureSetError(
                f"{uri} has no {MANIFEST}: it is not a feature set, or its run "
                "did not finish (re-run the featurize job to complete it)"
            ) from None
        if manifest.get("format") != FORMAT:
            raise FeatureSetError(
                f"{uri}: format {manifest.get('format')!r}; this version reads format {FORMAT}"
            )
        return cls(uri, manifest)

    @classmethod
    def under(cls, root: str) -> list[FeatureSet]:
        """The complete feature sets directly under ``root`` (a ``featurize.out``), by name."""
        fs, path = current_fs(root)
        found = []
        for entry in sorted(fs.ls(path, detail=False)) if fs.isdir(path) else []:
            if not entry.rsplit("/", 1)[-1].startswith(".") and fs.exists(f"{entry}/{MANIFEST}"):
                found.append(
                    cls.open(entry if "file" in fs.protocol else fs.unstrip_protocol(entry))
                )
        return found

    @property
    def classes(self) -> list[str]:
        return self.manifest["classes"]

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Frontier node -> per-example feature shape, in frontier order."""
        return {k: tuple(v) for k, v in self.manifest["frontier"].items()}

    @property
    def paths(self) -> list[str]:
        return [f"{self.uri}/{f['name']}" for f in self.manifest["files"]]

    def __repr__(self) -> str:
        return f"FeatureSet({self.uri!r}, rows={self.manifest['rows']}, frontier={self.shapes})"

    def table(self, split: str | None = None, columns: list[str] | None = None) -> pa.Table:
        """The rows (of one split) as a pyarrow Table."""
        fs, root = fsspec.core.url_to_fs(self.uri)
        tables = [
            pq.read_table(f"{root}/{f['name']}", columns=columns, filesystem=fs)
            for f in self.manifest["files"]
        ]
        table = (
            pa.concat_tables(tables)
            if tables
            else feature_schema(self.shapes, self.manifest["dtype"]).empty_table()
        )
        if split is not None:
            table = table.filter(pc.equal(table.column(SPLIT), split))
        return table

    def tensors(
        self,
        split: str | None = None,
        dtype=None,
        shard: tuple[int, int] = (0, 1),
        plain: bool = False,
    ):
        """``({node: tensor (n, *shape)}, labels)`` sorted by (id, view), so two reads of the same
        set line up row for row. ``dtype`` (e.g. ``torch.float32``) converts the features.
        ``shard=(rank, world)`` keeps every world-th row from rank on, reading only those rows'
        features (a training worker's share); ``plain`` keeps only view 0 (no augmented views)."""
        import torch  # heavy (~2 s): reading a feature set with pyarrow or pandas needs no torch

        order = self._shard_rows(split, shard, plain)
        parts = []
        for index, f in enumerate(self.manifest["files"]):
            rows = order.filter(pc.equal(order.column("_file"), index))
            if rows.num_rows:
                table = self._read(f["name"], [LABEL, *self.shapes]).take(rows.column("_row"))
                parts.append(table.append_column("_pos", rows.column("_pos")))
        table = (
            pa.concat_tables(parts)
            if parts
            else feature_schema(self.shapes, self.manifest["dtype"])
            .empty_table()
            .select([LABEL, *self.shapes])
            .append_column("_pos", pa.array([], pa.int64()))
        )
        table = table.take(pc.sort_indices(table, [("_pos", "ascending")]))
        features = {}
        for name in self.shapes:
            array = table.column(name).combine_chunks().to_numpy_ndarray()
            tensor = torch.from_numpy(np.array(array))  # a writable copy
            features[name] = tensor.to(dtype) if dtype is not None else tensor
        labels = torch.from_numpy(labels_of(table))
        return features, labels

    def _read(self, name: str, columns: list[str]) -> pa.Table:
        fs, root = fsspec.core.url_to_fs(self.uri)
        return pq.read_table(f"{root}/{name}", columns=columns, filesystem=fs)

    def _shard_rows(self, split, shard: tuple[int, int], plain: bool) -> pa.Table:
        """(file index, row in file, position) of the selected rows, from the key columns only."""
        rank, world = shard
        keys = []
        for index, f in enumerate(self.manifest["files"]):
            table = self._read(f["name"], [ID, VIEW, SPLIT])
            keys.append(
                table.append_column(
                    "_file", pa.array(np.full(table.num_rows, index))
                ).append_column("_row", pa.array(np.arange(table.num_rows)))
            )
        table = (
            pa.concat_tables(keys)
            if keys
            else pa.table(
                {
                    ID: pa.array([], pa.string()),
                    VIEW: pa.array([], pa.int16()),
                    SPLIT: pa.array([], pa.string()),
                    "_file": pa.array([], pa.int64()),
                    "_row": pa.array([], pa.int64()),
                }
            )
        )
        if split is not None:
            table = table.filter(pc.equal(table.column(SPLIT), split))
        if plain:
            table = table.filter(pc.equal(table.column(VIEW), 0))
        table = table.take(pc.sort_indices(table, [(ID, "ascending"), (VIEW, "ascending")]))
        mine = np.arange(rank, table.num_rows, world)
        return table.take(pa.array(mine, pa.int64())).append_column(
            "_pos", pa.array(np.arange(len(mine)), pa.int64())
        )

    def rows_per_file(self, split: str | None = None, plain: bool = False) -> list[int]:
        """Rows of ``split`` (view 0 only when ``plain``) in each part file, in ``paths``'
        order: from the manifest (a set written unit by unit records them), else from the key
        columns."""
        files = self.manifest["files"]
        if all("splits" in f for f in files):
            pick = 1 if plain else 0
            if split is None:
                return [sum(v[pick] for v in f["splits"].values()) for f in files]
            return [f["splits"].get(split, [0, 0])[pick] for f in files]
        counts = []
        for f in files:
            table = self._read(f["name"], [SPLIT, VIEW])
            if split is not None:
                table = table.filter(pc.equal(table.column(SPLIT), split))
            if plain:
                table = table.filter(pc.equal(table.column(VIEW), 0))
            counts.append(table.num_rows)
        return counts

    def unlabeled(self, split: str | None = None) -> int:
        """Rows of ``split`` without a label (images from a source that has none), from the
        manifest's counts."""
        counts = self.manifest["counts"]
        splits = counts if split is None else {split: counts.get(split, {})}
        return sum(by_label.get("None", 0) for by_label in splits.values())

    def count(self, split: str | None = None, plain: bool = False) -> int:
        """Rows of ``split`` (view 0 only when ``plain``)."""
        return sum(self.rows_per_file(split, plain))

    def pandas(self, split: str | None = None):
        return self.table(split).to_pandas()

    def errors(self) -> pa.Table:
        fs, root = fsspec.core.url_to_fs(self.uri)
        return pq.read_table(f"{root}/{ERRORS}", filesystem=fs)

    def skipped(self, k: int = 3) -> str:
        """One line naming the errors table and its first ``k`` inputs ('' when none)."""
        n = self.manifest.get("errors", 0)
        if not n:
            return ""
        first = self.errors().slice(0, k).to_pylist()
        names = ", ".join(f"{_short(e['source'])} ({_short_reason(e['reason'])})" for e in first)
        more = ", ..." if n > k else ""
        return f"{n} input(s) skipped, listed in {self.uri}/{ERRORS}: {names}{more}"

    def dataset(self, split: str | None = None):
        """The rows as a Ray Dataset (feature columns are tensors in ``iter_torch_batches``)."""
        import ray.data  # heavy, and optional for readers of the format
        from ray.data.expressions import col

        ds = ray.data.read_parquet(self.paths)
        return ds.filter(expr=col(SPLIT) == split) if split is not None else ds


def _short(source: str) -> str:
    """A file's name, or a shard member as ``shard#member``."""
    return source.rstrip("/").rsplit("/", 1)[-1]


def _short_reason(reason: str, limit: int = 60) -> str:
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."
