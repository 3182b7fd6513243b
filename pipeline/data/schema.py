"""The feature-set format's schema, defined once: column names, Arrow schemas of items,
features, predictions and rejected inputs, and the conversions between NumPy batches and rows.

A feature set is a directory::

    part-<unit>-<k>.parquet   rows: id, source, label, split, view, a tensor column per frontier
                              node (a unit's rows in parts of at most part_rows rows)
    _units/<unit>.json        a unit's completion marker: its parts, rows and counts
    _errors.parquet           inputs that were rejected: id, source, label, split, reason
    _manifest.json            written last; its presence means the set is complete

Feature columns use Arrow's canonical ``fixed_shape_tensor`` extension type, so plain pyarrow,
pandas or DuckDB read them without Ray and without unpickling anything.

Example:

    >>> from pipeline.data.schema import feature_schema
    >>> feature_schema({"pool": (16, 1, 1)}, "float16").names
    ['id', 'source', 'label', 'split', 'view', 'pool']
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FORMAT = 1
MANIFEST, ERRORS, ERROR_PARTS, UNITS = "_manifest.json", "_errors.parquet", "_errors", "_units"

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
# Predictions (pipeline.inference.batch) are rows of the same directory format: metadata plus these.
PREDICTED, CLASS, PROBABILITIES = "predicted", "class", "probabilities"
COMPRESSION = "zstd"  # smaller than snappy on features, and read by every Parquet reader

# In-flight columns: what rows carry between the stages of a pass, never written.
ERROR = "error"  # why a row's image could not be read ("" when it could)
IMAGE = "image"  # the uint8 crop; dropped by the model stage
BYTES = "bytes"  # a JPEG for the model actor's GPU to decode (gpu_decode)
LABEL_NAME = "label_name"  # the label's class name, when no index could be given while reading
UNIT = "unit"  # the digest of the unit the row came from
UNIT_ROWS = "unit_rows"  # on a unit's last rows: how many rows the unit made (else -1)
READ_AT = "read_at"  # when the row's block was read (epoch seconds)
READ_BYTES = "read_bytes"  # bytes the row's unit had read by then
MODEL_DONE = "model_done"  # when the model actor finished the row's batch
EMPTY_VIEW = -1  # the view of a row that only says its unit is done: none of it was read


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
