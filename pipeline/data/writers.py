"""The writer tasks of a Ray Data pass: a batch's rows to one Parquet part per output
(named by its rows, written atomically), its rejected items to ``_errors/``, counts back.

Writers need pyarrow and NumPy only: the tasks that run them never load torch.

Example:

    >>> import numpy as np
    >>> from pipeline.data.writers import counts
    >>> batch = {"error": np.array(["", "bad", ""], object), "view": np.array([0, 0, 1]),
    ...          "model_done": np.array([5.0, 5.0, 5.0])}
    >>> counts(batch)
    {'images': array([1]), 'errors': array([1]), 'model_done': array([5.])}
"""

from __future__ import annotations

import fsspec
import numpy as np
import pyarrow as pa

from pipeline.data.decode import ERROR, MODEL_DONE
from pipeline.data.parts import part_name, row_keys, write_atomic
from pipeline.data.schema import (
    ERROR_PARTS,
    ERROR_SCHEMA,
    ID,
    LABEL,
    PROBABILITIES,
    REASON,
    SOURCE,
    SPLIT,
    VIEW,
    feature_schema,
    meta_array,
    prediction_schema,
    to_table,
)


def write_features(
    batch: dict[str, np.ndarray], *, targets: list[tuple[str, dict]], dtype: str
) -> dict[str, np.ndarray]:
    """Write one part per feature set (named by its rows, atomically) and the batch's rejected
    items to each set's ``_errors/``; return counts for the driver's progress line."""
    ok = batch[ERROR] == ""
    meta = {k: batch[k] for k in (ID, SOURCE, LABEL, SPLIT, VIEW)}
    for uri, shapes in targets:
        fs, root = fsspec.core.url_to_fs(uri)
        if ok.any():
            table = to_table(
                {k: v[ok] for k, v in meta.items()},
                {name: batch[name][ok] for name in shapes},
                feature_schema(shapes, dtype),
            )
            write_atomic(fs, f"{root}/{part_name(row_keys(table))}", table)
        write_errors(uri, batch)
    return counts(batch)


# ---------------------------------------------------------------------------- the driver


def write_predictions(
    batch: dict[str, np.ndarray], *, uri: str, n_classes: int
) -> dict[str, np.ndarray]:
    """One part per batch (named by its rows, written atomically) plus its rejected items."""
    ok = batch[ERROR] == ""
    if ok.any():
        fs, root = fsspec.core.url_to_fs(uri)
        schema = prediction_schema(n_classes)
        columns = [meta_array(batch[f.name][ok], f) for f in schema if f.name != PROBABILITIES]
        columns.append(
            pa.FixedShapeTensorArray.from_numpy_ndarray(
                np.ascontiguousarray(batch[PROBABILITIES][ok])
            )
        )
        table = pa.Table.from_arrays(columns, schema=schema)
        write_atomic(fs, f"{root}/{part_name(row_keys(table))}", table)
    write_errors(uri, batch)
    return counts(batch)


def write_errors(uri: str, batch: dict[str, np.ndarray]) -> None:
    """Record the batch's unreadable items under ``uri/_errors/`` (merged by finalize)."""
    bad = batch[ERROR] != ""
    if not bad.any():
        return
    fs, root = fsspec.core.url_to_fs(uri)
    values = {k: batch[k][bad] for k in (ID, SOURCE, LABEL, SPLIT)} | {REASON: batch[ERROR][bad]}
    errors = pa.Table.from_arrays(
        [meta_array(values[f.name], f) for f in ERROR_SCHEMA], schema=ERROR_SCHEMA
    )
    fs.makedirs(f"{root}/{ERROR_PARTS}", exist_ok=True)
    write_atomic(fs, f"{root}/{ERROR_PARTS}/{part_name(batch[ID][bad])}", errors)


def counts(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A writer's output, for the driver's progress line and rates: images done and errors per
    model batch, with the time the model actor finished it (NaN when no actor stamped it)."""
    ok, plain = batch[ERROR] == "", batch[VIEW] == 0
    done = batch.get(MODEL_DONE)
    if done is None:
        done = np.full(len(ok), np.nan)
    stamps = np.unique(done)  # one per model batch (NaN: one group)
    groups = [np.isnan(done) if np.isnan(t) else done == t for t in stamps]
    return {
        "images": np.array([int((ok & plain & g).sum()) for g in groups]),
        "errors": np.array([int((~ok & g).sum()) for g in groups]),
        MODEL_DONE: stamps.astype(np.float64),
    }
