"""The Parquet feature-set format: schema, fingerprint, manifest, finalization and readers.

A feature set is a directory::

    part-<hash>.parquet   rows: id, source, label, split, view, one tensor column per frontier node
    _errors.parquet       inputs that were rejected: id, source, label, split, reason
    _manifest.json        written last; its presence means the set is complete

Feature columns use Arrow's canonical ``fixed_shape_tensor`` extension type, so plain pyarrow,
pandas or DuckDB read them without Ray and without unpickling anything.

Example:

    >>> from pipeline.featureset import FeatureSet
    >>> fs = FeatureSet.open("runs/features/tiny_cnn-pool-0123abcd")   # doctest: +SKIP
    >>> features, labels = fs.tensors(split="train")                    # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

FORMAT = 1
MANIFEST, ERRORS, ERROR_PARTS = "_manifest.json", "_errors.parquet", "_errors"

# The schema, defined once. Items (what a source lists) are the first four columns.
ID, SOURCE, LABEL, SPLIT, VIEW, REASON = "id", "source", "label", "split", "view", "reason"
ITEM_SCHEMA = pa.schema(
    [
        pa.field(ID, pa.string(), nullable=False),
        pa.field(SOURCE, pa.string()),
        pa.field(LABEL, pa.int32()),
        pa.field(SPLIT, pa.string()),
    ]
)
META_SCHEMA = ITEM_SCHEMA.append(pa.field(VIEW, pa.int16()))
ERROR_SCHEMA = ITEM_SCHEMA.append(pa.field(REASON, pa.string()))
DTYPES = {"float16": pa.float16(), "float32": pa.float32()}
UNLABELED = -1  # a null label (an image from a source without labels) on its way through NumPy
# Predictions (pipeline.predict) are rows of the same directory format: metadata plus these.
PREDICTED, CLASS, PROBABILITIES = "predicted", "class", "probabilities"
COMPRESSION = "zstd"  # smaller than snappy on features, and read by every Parquet reader


class FeatureSetError(ValueError):
    """A directory that is not a complete feature set, or one that does not fit its use."""


def feature_schema(shapes: dict[str, tuple[int, ...]], dtype: str) -> pa.Schema:
    """Metadata columns plus one ``fixed_shape_tensor`` column per frontier node."""
    clash = sorted(set(shapes) & set(META_SCHEMA.names))
    if clash:
        raise FeatureSetError(
            f"frontier nodes {clash} collide with the metadata columns "
            f"{META_SCHEMA.names}; rename them with add_vertex"
        )
    fields = [
        pa.field(name, pa.fixed_shape_tensor(DTYPES[dtype], list(shape)))
        for name, shape in shapes.items()
    ]
    return pa.schema(list(META_SCHEMA) + fields)


def prediction_schema(n_classes: int) -> pa.Schema:
    """Metadata columns plus the predicted class index and name and every class's probability."""
    return pa.schema(
        list(META_SCHEMA)
        + [
            pa.field(PREDICTED, pa.int32()),
            pa.field(CLASS, pa.string()),
            pa.field(PROBABILITIES, pa.fixed_shape_tensor(pa.float32(), [n_classes])),
        ]
    )


def to_table(
    meta: dict[str, np.ndarray], features: dict[str, np.ndarray], schema: pa.Schema
) -> pa.Table:
    """Rows of metadata and per-node feature arrays ``(n, *shape)`` as a table of ``schema``."""
    columns = [meta_array(meta[f.name], f) for f in META_SCHEMA]
    for field in schema:
        if field.name in features:
            array = np.ascontiguousarray(
                features[field.name], dtype=field.type.value_type.to_pandas_dtype()
            )
            columns.append(pa.FixedShapeTensorArray.from_numpy_ndarray(array))
    return pa.Table.from_arrays(columns, schema=schema)


def meta_array(values, field: pa.Field) -> pa.Array:
    """A metadata column from NumPy: a label of :data:`UNLABELED` becomes null."""
    values = np.asarray(values)
    mask = values == UNLABELED if field.name == LABEL else None
    return pa.array(values, type=field.type, mask=mask)


def labels_of(table: pa.Table) -> np.ndarray:
    """The label column as int64, :data:`UNLABELED` where null."""
    return pc.fill_null(table.column(LABEL), UNLABELED).to_numpy().astype(np.int64)


def fingerprint(identity: dict) -> str:
    """sha256 of the canonical JSON of everything that determines the features."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def directory_name(model: str, frontier: list[str], digest: str) -> str:
    """A readable, unique directory name: ``<model>-<frontier>-<fingerprint[:16]>`` (the
    frontier, not the name the cut was given, so two names for one cut share a directory)."""
    slug = re.sub(r"[^A-Za-z0-9_.]+", "_", f"{model}-{'+'.join(frontier)}")[:80]
    return f"{slug}-{digest[:16]}"


# ---------------------------------------------------------------------------- writing


def part_name(keys: Iterable[str]) -> str:
    """A part's name is a hash of the rows it holds, so a retried task that writes the same rows
    overwrites its earlier file instead of adding a second copy."""
    return "part-" + hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:24] + ".parquet"


def write_atomic(fs: fsspec.AbstractFileSystem, path: str, table: pa.Table) -> None:
    """Write to a hidden temporary name, then rename: a killed writer leaves no half file
    under a real name (readers skip names starting with '.')."""
    directory, name = path.rsplit("/", 1)
    tmp = f"{directory}/.tmp-{uuid.uuid4().hex}-{name}"
    with fs.open(tmp, "wb") as f:
        pq.write_table(table, f, compression=COMPRESSION)
    fs.mv(tmp, path)


def row_keys(table: pa.Table) -> list[str]:
    ids = table.column(ID).to_pylist()
    views = table.column(VIEW).to_pylist() if VIEW in table.column_names else [0] * len(ids)
    return [f"{i}:{v}" for i, v in zip(ids, views)]


@dataclass
class Progress:
    """What a directory already holds: feature rows by (id, view) and rejected ids."""

    rows: set[str]
    errors: set[str]

    def done_items(self, expected_views: dict[str, int]) -> set[str]:
        """Ids with every expected view written, or recorded as errors."""
        done = set(self.errors)
        for item_id, views in expected_views.items():
            if all(f"{item_id}:{v}" in self.rows for v in range(views)):
                done.add(item_id)
        return done


def scan(uri: str) -> Progress:
    """Read only the id/view columns of what an unfinished directory holds; drop temporaries."""
    fs, root = fsspec.core.url_to_fs(uri)
    if not fs.exists(root):
        return Progress(set(), set())
    for tmp in fs.glob(f"{root}/.tmp-*") + fs.glob(f"{root}/{ERROR_PARTS}/.tmp-*"):
        fs.rm(tmp)
    rows: set[str] = set()
    for path in fs.glob(f"{root}/part-*.parquet"):
        rows.update(row_keys(pq.read_table(path, columns=[ID, VIEW], filesystem=fs)))
    errors: set[str] = set()
    for path in fs.glob(f"{root}/{ERROR_PARTS}/part-*.parquet"):
        errors.update(pq.read_table(path, columns=[ID], filesystem=fs).column(ID).to_pylist())
    return Progress(rows, errors)


def finalize(uri: str, manifest: dict, expected_views: dict[str, int]) -> FeatureSet:
    """Make a finished directory a feature set: drop duplicate rows (a retried task can write a
    batch twice under other boundaries), check every expected row is there exactly once, merge the
    error parts, count, and write the manifest last."""
    fs, root = fsspec.core.url_to_fs(uri)
    files, seen, counts = [], set(), {}
    for path in sorted(fs.glob(f"{root}/part-*.parquet")):
        table = pq.read_table(path, filesystem=fs)
        keys = row_keys(table)
        fresh = np.array([k not in seen for k in keys], dtype=bool)
        if not fresh.all():
            table, keys = table.filter(pa.array(fresh)), [k for k, f in zip(keys, fresh) if f]
            if table.num_rows:
                write_atomic(fs, path, table)
            else:
                fs.rm(path)
                continue
        seen.update(keys)
        files.append({"name": path.rsplit("/", 1)[1], "rows": table.num_rows})
        for split, label in zip(table.column(SPLIT).to_pylist(), table.column(LABEL).to_pylist()):
            counts.setdefault(split, {}).setdefault(str(label), 0)
            counts[split][str(label)] += 1
    errors = _merge_errors(fs, root)
    error_ids = set(errors.column(ID).to_pylist())
    missing = [
        f"{i}:{v}"
        for i, n in expected_views.items()
        if i not in error_ids
        for v in range(n)
        if f"{i}:{v}" not in seen
    ]
    if missing:
        raise FeatureSetError(
            f"{uri}: {len(missing)} expected rows are missing (e.g. {missing[:3]});"
            " the run did not finish: re-run the same job to complete it"
        )
    manifest = dict(
        manifest,
        format=FORMAT,
        rows=len(seen),
        files=files,
        counts=counts,
        errors=errors.num_rows,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    with fs.open(f"{root}/{MANIFEST}.tmp", "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    fs.mv(f"{root}/{MANIFEST}.tmp", f"{root}/{MANIFEST}")
    if fs.exists(f"{root}/{ERROR_PARTS}"):
        fs.rm(f"{root}/{ERROR_PARTS}", recursive=True)
    return FeatureSet(uri, manifest)


def _merge_errors(fs, root: str) -> pa.Table:
    parts = [
        pq.read_table(p, filesystem=fs) for p in sorted(fs.glob(f"{root}/{ERROR_PARTS}/part-*"))
    ]
    if not parts and fs.exists(f"{root}/{ERRORS}"):
        return pq.read_table(f"{root}/{ERRORS}", filesystem=fs)  # merged by an earlier finalize
    table = pa.concat_tables(parts) if parts else ERROR_SCHEMA.empty_table()
    first: dict[str, int] = {}
    for row, item in enumerate(table.column(ID).to_pylist()):
        first.setdefault(item, row)
    table = table.take(pa.array(list(first.values()), pa.int64()))
    write_atomic(fs, f"{root}/{ERRORS}", table)
    return table


# ---------------------------------------------------------------------------- reading


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
        fs, path = fsspec.core.url_to_fs(root)
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
        order, from the key columns."""
        counts = []
        for f in self.manifest["files"]:
            table = self._read(f["name"], [SPLIT, VIEW])
            if split is not None:
                table = table.filter(pc.equal(table.column(SPLIT), split))
            if plain:
                table = table.filter(pc.equal(table.column(VIEW), 0))
            counts.append(table.num_rows)
        return counts

    def unlabeled(self, split: str | None = None) -> int:
        """Rows of ``split`` without a label (images from a source that has none)."""
        total = 0
        for f in self.manifest["files"]:
            table = self._read(f["name"], [SPLIT, LABEL])
            if split is not None:
                table = table.filter(pc.equal(table.column(SPLIT), split))
            total += table.column(LABEL).null_count
        return total

    def count(self, split: str | None = None, plain: bool = False) -> int:
        """Rows of ``split`` (view 0 only when ``plain``), from the key columns."""
        return self._shard_rows(split, (0, 1), plain).num_rows

    def pandas(self, split: str | None = None):
        return self.table(split).to_pandas()

    def errors(self) -> pa.Table:
        fs, root = fsspec.core.url_to_fs(self.uri)
        return pq.read_table(f"{root}/{ERRORS}", filesystem=fs)

    def dataset(self, split: str | None = None):
        """The rows as a Ray Dataset (feature columns are tensors in ``iter_torch_batches``)."""
        import ray.data  # heavy, and optional for readers of the format
        from ray.data.expressions import col

        ds = ray.data.read_parquet(self.paths)
        return ds.filter(expr=col(SPLIT) == split) if split is not None else ds
