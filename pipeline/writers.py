"""The writer tasks of a Ray Data pass: a batch's rows to one Parquet part per output
(named by its rows, written atomically), its rejected items to ``_errors/``, counts back.

Writers need pyarrow and NumPy only: the tasks that run them never load torch.

Example:

    >>> import numpy as np
    >>> from pipeline.writers import counts
    >>> counts({"error": np.array(["", "bad", ""], object), "view": np.array([0, 0, 1])})
    {'images': array([1]), 'errors': array([1])}
"""

from __future__ import annotations

import fsspec
import numpy as np
import pyarrow as pa

from pipeline import featureset as fset
from pipeline.decode import ERROR
from pipeline.featureset import ID, LABEL, SOURCE, SPLIT, VIEW


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
            table = fset.to_table(
                {k: v[ok] for k, v in meta.items()},
                {name: batch[name][ok] for name in shapes},
                fset.feature_schema(shapes, dtype),
            )
            fset.write_atomic(fs, f"{root}/{fset.part_name(fset.row_keys(table))}", table)
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
        schema = fset.prediction_schema(n_classes)
        columns = [
            fset.meta_array(batch[f.name][ok], f) for f in schema if f.name != fset.PROBABILITIES
        ]
        columns.append(
            pa.FixedShapeTensorArray.from_numpy_ndarray(
                np.ascontiguousarray(batch[fset.PROBABILITIES][ok])
            )
        )
        table = pa.Table.from_arrays(columns, schema=schema)
        fset.write_atomic(fs, f"{root}/{fset.part_name(fset.row_keys(table))}", table)
    write_errors(uri, batch)
    return counts(batch)


def write_errors(uri: str, batch: dict[str, np.ndarray]) -> None:
    """Record the batch's unreadable items under ``uri/_errors/`` (merged by finalize)."""
    bad = batch[ERROR] != ""
    if not bad.any():
        return
    fs, root = fsspec.core.url_to_fs(uri)
    values = {k: batch[k][bad] for k in (ID, SOURCE, LABEL, SPLIT)} | {
        fset.REASON: batch[ERROR][bad]
    }
    errors = pa.Table.from_arrays(
        [fset.meta_array(values[f.name], f) for f in fset.ERROR_SCHEMA], schema=fset.ERROR_SCHEMA
    )
    fs.makedirs(f"{root}/{fset.ERROR_PARTS}", exist_ok=True)
    fset.write_atomic(fs, f"{root}/{fset.ERROR_PARTS}/{fset.part_name(batch[ID][bad])}", errors)


def counts(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A writer's output: images done and errors, for the driver's progress line."""
    ok = batch[ERROR] == ""
    return {
        "images": np.array([int((ok & (batch[VIEW] == 0)).sum())]),
        "errors": np.array([int((~ok).sum())]),
    }
