"""The writer stage of a Ray Data pass: one actor that gathers each unit's rows, writes them as
parts of at most ``part_rows`` rows and ``part_mib`` MiB (never a part per batch), the unit's
rejected inputs, then its completion marker (:mod:`pipeline.data.parts`), and reports back
what the driver counts: images and errors per model batch, parts written, bytes read.

A row arriving twice (its decode task retried after a node was lost) is taken once. Rows the
actor held when it was lost are not written, so their unit gets no marker: the driver runs the
units without one again (:func:`pipeline.engine.dataflow.run_until_done`).

Writers need pyarrow and NumPy only: the actor that runs them never loads torch.

Example:

    >>> import numpy as np
    >>> from pipeline.data.writers import PartWriter
    >>> writer = PartWriter([(str(tmp / "fs"), {"f": (2,)})], dtype="float32")
    >>> batch = {"id": np.array(["a", "b"], object), "source": np.array(["a", "b"], object),
    ...          "label": np.array([0, 1], np.int32), "label_name": np.array(["", ""], object),
    ...          "split": np.array(["train"] * 2, object), "view": np.array([0, 0], np.int16),
    ...          "error": np.array(["", ""], object), "f": np.ones((2, 2), np.float32),
    ...          "unit": np.array(["0123456789abcdef"] * 2, object),
    ...          "unit_rows": np.array([2, 2]), "read_at": np.array([1.0, 1.0]),
    ...          "read_bytes": np.array([10, 10]), "model_done": np.array([2.0, 2.0])}
    >>> report = writer(batch)["report"][0]
    >>> sorted(p.name for p in (tmp / "fs").iterdir())
    ['_units', 'part-0123456789abcdef-0000.parquet']
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow as pa

from pipeline.data.parts import LABEL_NAMES, error_path, part_path, write_atomic, write_marker
from pipeline.data.schema import (
    ERROR,
    ERROR_SCHEMA,
    ID,
    LABEL,
    LABEL_NAME,
    MODEL_DONE,
    PROBABILITIES,
    READ_AT,
    READ_BYTES,
    REASON,
    SOURCE,
    SPLIT,
    UNIT,
    UNIT_ROWS,
    UNLABELED,
    VIEW,
    feature_schema,
    meta_array,
    prediction_schema,
    to_table,
)
from pipeline.settings import PassConfig

META = (ID, SOURCE, LABEL, SPLIT, VIEW)


@dataclass
class _Unit:
    """One unit's rows not yet written, and what it wrote so far."""

    digest: str
    seen: set = field(default_factory=set)  # (id, view) of every row received
    batches: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    nbytes: int = 0
    received: int = 0
    total: int = -1
    parts: list[dict] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    labels: set = field(default_factory=set)

    @property
    def rows(self) -> int:
        return sum(len(b[ID]) for b in self.batches)

    @property
    def complete(self) -> bool:
        return self.total >= 0 and self.received >= self.total


class PartWriter:
    """The writer actor of a pass. ``targets``: ``(uri, frontier shapes)`` of each feature set
    the pass writes (``None`` shapes: predictions of ``n_classes`` classes); ``named``: labels
    arrive as class names to index per part (no class names were known when reading)."""

    def __init__(
        self,
        targets: list[tuple[str, dict | None]],
        dtype: str = "float16",
        n_classes: int = 0,
        named: bool = False,
        part_rows: int = PassConfig.model_fields["part_rows"].default,
        part_mib: float = PassConfig.model_fields["part_mib"].default,
    ):
        self.targets = [
            (uri, {k: tuple(v) for k, v in s.items()} if s else None) for uri, s in targets
        ]
        self.dtype, self.n_classes, self.named = dtype, n_classes, named
        self.part_rows, self.part_bytes = part_rows, int(part_mib * 2**20)
        self.units: dict[str, _Unit] = {}
        self.finished: set[str] = set()  # a retried decode task's late rows reopen nothing

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        report = {"images": _per_model_batch(batch), "parts": [], "read": _reads(batch)}
        for digest in dict.fromkeys(batch[UNIT].tolist()):
            if digest in self.finished:
                continue
            rows = batch[UNIT] == digest
            unit = self.units.setdefault(digest, _Unit(digest))
            self._take(unit, {k: v[rows] for k, v in batch.items()})
            while unit.rows >= self.part_rows or unit.nbytes >= self.part_bytes:
                report["parts"].append(self._write_part(unit))
            if unit.complete:
                if unit.rows:
                    report["parts"].append(self._write_part(unit))
                self._finish(unit)
                del self.units[digest]
                self.finished.add(digest)
        return {"report": np.array([json.dumps(report)], dtype=object)}

    def _take(self, unit: _Unit, rows: dict[str, np.ndarray]) -> None:
        # a decode task retried after a node was lost yields its unit's rows again: once only
        keys = list(zip(rows[ID].tolist(), rows[VIEW].tolist()))
        fresh = np.array([k not in unit.seen for k in keys], dtype=bool)
        unit.seen.update(keys)
        unit.total = max(unit.total, int(rows[UNIT_ROWS].max()))
        rows = {k: v[fresh] for k, v in rows.items()}
        unit.received += len(rows[ID])
        rows = {k: v[rows[VIEW] >= 0] for k, v in rows.items()}  # EMPTY_VIEW: nothing to write
        ok = rows[ERROR] == ""
        if (~ok).any():
            unit.errors.append({k: rows[k][~ok] for k in (*META[:4], ERROR, LABEL_NAME)})
        if ok.any():
            kept = {k: v[ok] for k, v in rows.items() if k not in (ERROR, UNIT, UNIT_ROWS)}
            unit.batches.append(kept)
            unit.nbytes += sum(v.nbytes for k, v in kept.items() if k not in META)
            self._count(unit, kept)

    def _count(self, unit: _Unit, rows: dict[str, np.ndarray]) -> None:
        names = rows[LABEL_NAME] if self.named else None
        for i, split in enumerate(rows[SPLIT].tolist()):
            if names is not None:
                label = names[i] or "None"
                if names[i]:
                    unit.labels.add(names[i])
            else:
                label = str(rows[LABEL][i]) if rows[LABEL][i] != UNLABELED else "None"
            by_label = unit.counts.setdefault(split, {})
            by_label[label] = by_label.get(label, 0) + 1

    def _labels(self, rows: dict[str, np.ndarray]) -> tuple[np.ndarray, dict | None]:
        """The rows' labels as this part writes them: as they came, or (``named``) indexes
        into the part's own sorted class names, which its metadata keeps."""
        if not self.named:
            return rows[LABEL], None
        names = sorted({n for n in rows[LABEL_NAME].tolist() if n})
        index = {n: i for i, n in enumerate(names)}
        labels = np.array([index.get(n, UNLABELED) for n in rows[LABEL_NAME]], np.int32)
        return labels, {LABEL_NAMES: json.dumps(names)}

    def _write_part(self, unit: _Unit) -> float:
        """The unit's next part (its first ``part_rows`` rows, fewer to keep within
        ``part_mib``), in every target; the rest wait for the next. Returns when."""
        rows = _concatenated(unit.batches)
        n = len(rows[ID])
        per_row = max(1, unit.nbytes // max(1, n))
        take = max(1, min(n, self.part_rows, self.part_bytes // per_row))
        rest = {k: v[take:] for k, v in rows.items()}
        rows = {k: v[:take] for k, v in rows.items()}
        unit.batches, unit.nbytes = ([rest], per_row * (n - take)) if n > take else ([], 0)
        labels, metadata = self._labels(rows)
        rows[LABEL] = labels
        metadata = {**(metadata or {}), b"units": json.dumps([unit.digest])}
        name = part_path("", unit.digest, len(unit.parts)).lstrip("/")
        for uri, shapes in self.targets:
            fs, root = fsspec.core.url_to_fs(uri)
            write_atomic(fs, f"{root}/{name}", self._table(rows, shapes), metadata)
        plain = rows[VIEW] == 0
        splits = {}
        for split in sorted(set(rows[SPLIT].tolist())):
            mine = rows[SPLIT] == split
            splits[split] = [int(mine.sum()), int((mine & plain).sum())]
        unit.parts.append({"name": name, "rows": len(rows[ID]), "splits": splits})
        return time.time()

    def _table(self, rows: dict[str, np.ndarray], shapes: dict | None) -> pa.Table:
        meta = {k: rows[k] for k in META}
        if shapes is not None:
            features = {name: rows[name] for name in shapes}
            return to_table(meta, features, feature_schema(shapes, self.dtype))
        schema = prediction_schema(self.n_classes)
        columns = [meta_array(rows[f.name], f) for f in schema if f.name != PROBABILITIES]
        probabilities = np.ascontiguousarray(rows[PROBABILITIES], np.float32)
        columns.append(pa.FixedShapeTensorArray.from_numpy_ndarray(probabilities))
        return pa.Table.from_arrays(columns, schema=schema)

    def _finish(self, unit: _Unit) -> None:
        """The unit's rejected inputs, then its marker: written last, it means complete."""
        errors = _concatenated(unit.errors)
        rows = sum(p["rows"] for p in unit.parts)
        marker = {
            "parts": unit.parts,
            "rows": rows,
            "errors": len(errors.get(ID, [])),
            "counts": unit.counts,
            "labels": sorted(unit.labels) if self.named else None,
        }
        for uri, _ in self.targets:
            fs, root = fsspec.core.url_to_fs(uri)
            if marker["errors"]:
                labels, metadata = self._labels(errors)
                values = {k: errors[k] for k in META[:4]} | {REASON: errors[ERROR], LABEL: labels}
                table = pa.Table.from_arrays(
                    [meta_array(values[f.name], f) for f in ERROR_SCHEMA], schema=ERROR_SCHEMA
                )
                write_atomic(fs, error_path(root, unit.digest), table, metadata)
            write_marker(fs, root, unit.digest, marker)


def _concatenated(batches: list[dict]) -> dict[str, np.ndarray]:
    if not batches:
        return {}
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _per_model_batch(batch: dict[str, np.ndarray]) -> list[list[float]]:
    """``[model batch end, images, errors]`` per model batch in ``batch`` (NaN: no stamp)."""
    ok, plain = batch[ERROR] == "", batch[VIEW] == 0
    done = batch.get(MODEL_DONE, np.full(len(ok), np.nan))
    out = []
    for stamp in np.unique(done):
        mine = np.isnan(done) if np.isnan(stamp) else done == stamp
        out.append([float(stamp), int((ok & plain & mine).sum()), int((~ok & mine).sum())])
    return out


def _reads(batch: dict[str, np.ndarray]) -> list[list]:
    """``[unit, read at, bytes read by then]`` per block of the batch."""
    pairs = zip(batch[UNIT].tolist(), batch[READ_AT].tolist(), batch[READ_BYTES].tolist())
    return [list(p) for p in dict.fromkeys(pairs)]
