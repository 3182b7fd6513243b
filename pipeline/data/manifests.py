"""Planning a manifest (a CSV or Parquet file of ``path``, an optional label and ``split``; no
label column: unlabeled images) in one streamed read: its class names, counts per split and
units of ``files_per_unit`` rows, remembered by where they start (a CSV line's byte offset, a
Parquet manifest's row number), so the task that reads a unit seeks there. Nothing per image is
kept. Its content is its fingerprint: an image changed in place without a manifest change is
not noticed (stat-ing millions of objects is not worth it).

A CSV manifest has one row per line: a quoted newline inside a path, or a row with another
number of fields than the header, is refused naming the line. A Parquet manifest is best
written with row groups of about ``files_per_unit`` rows: a unit reads the row groups that
hold its rows.

Example:

    >>> from pipeline.data.manifests import scan_manifest
    >>> from pipeline.data.plan import ShardFormat
    >>> from pipeline.settings import SourceConfig
    >>> _ = (tmp / "m.csv").write_text("path,label\\na.png,cat\\nb.png,dog\\nc.png,\\n")
    >>> scan = scan_manifest(SourceConfig(uri=str(tmp / "m.csv"), split="val"), ShardFormat(),
    ...                      files_per_unit=2, splits={"val": 1.0})
    >>> sorted(scan.classes), dict(scan.counts), dict(scan.unlabeled)
    (['cat', 'dog'], {'val': 3}, {'val': 1})
    >>> [(u.kind, u.rows) for u in scan.units]
    [('csv', (11, 31)), ('csv', (31, 38))]
"""

from __future__ import annotations

import csv
import hashlib
import posixpath
from collections import Counter

import fsspec
import pyarrow.parquet as pq

from pipeline.data.plan import ShardFormat, Unit, hash_split, label_name
from pipeline.settings import SourceConfig

CHUNK = 8 << 20  # bytes hashed at a time


class ManifestScan:
    """One manifest's streamed read: ``units``, ``classes``, ``counts`` and ``unlabeled`` (per
    split), and ``digest`` (sha256 of its bytes)."""

    def __init__(self, src: SourceConfig, fmt: ShardFormat, per_unit: int, splits: dict):
        self.src, self.fmt, self.per_unit, self.splits = src, fmt, per_unit, splits
        self.label = src.label_column or "label"
        self.units: list[Unit] = []
        self.classes: set[str] = set()
        self.counts, self.unlabeled = Counter(), Counter()
        self.digest = ""

    def row(self, path: str, label, split) -> None:
        name = label_name(label if label != "" else None, self.fmt.label_names)
        split = self.src.split or split or hash_split(path, self.splits)
        self.counts[split] += 1
        if name is None:
            self.unlabeled[split] += 1
        else:
            self.classes.add(name)

    def unit(self, kind: str, start: int, stop: int) -> None:
        key = f"{posixpath.basename(self.src.uri)}@{start}"
        self.units.append(
            Unit(key, kind, self.src.uri, self.src.split, self.fmt, rows=(start, stop))
        )

    def csv(self, f) -> None:
        """Line by line, hashing as it goes, remembering the byte offset every ``per_unit``
        rows."""
        digest = hashlib.sha256()
        header = f.readline()
        digest.update(header)
        columns = next(csv.reader([header.decode("utf-8-sig")]))
        self._needs_path(columns)
        wanted = [name for name in ("path", self.label, "split") if name in columns]
        at = {name: columns.index(name) for name in wanted}
        offset = start = len(header)
        rows = 0
        for number, line in enumerate(f, 2):
            digest.update(line)
            values = self._values(line, number, len(columns))
            offset += len(line)
            if not values:
                continue
            row = {name: values[i] for name, i in at.items()}
            self.row(row["path"], row.get(self.label), row.get("split") or None)
            rows += 1
            if rows % self.per_unit == 0:
                self.unit("csv", start, offset)
                start = offset
        if offset > start:
            self.unit("csv", start, offset)
        self.digest = digest.hexdigest()

    def _values(self, line: bytes, number: int, width: int) -> list[str] | None:
        """One line's fields; a quoted newline (a row over two lines) or a short row is an
        error naming the line, never a silently wrong row."""
        try:
            values = next(csv.reader([line.decode("utf-8")], strict=True), None)
        except csv.Error as e:
            raise ValueError(
                f"manifest {self.src.uri} line {number}: {e} (a manifest holds one row per "
                "line: no newline inside a quoted path)"
            ) from e
        if values and len(values) != width:
            raise ValueError(
                f"manifest {self.src.uri} line {number}: {len(values)} fields, the header has "
                f"{width}"
            )
        return values

    def parquet(self, f) -> None:
        """Hashed in chunks, then batch by batch (the path, label and split columns only), a
        unit every ``per_unit`` rows."""
        digest = hashlib.sha256()
        while chunk := f.read(CHUNK):
            digest.update(chunk)
        self.digest = digest.hexdigest()
        f.seek(0)
        parquet = pq.ParquetFile(f)
        names = parquet.schema_arrow.names
        self._needs_path(names)
        columns = [c for c in ("path", self.label, "split") if c in names]
        rows = 0
        for batch in parquet.iter_batches(columns=columns, batch_size=self.per_unit):
            data = batch.to_pydict()
            for i, p in enumerate(data["path"]):
                label = data[self.label][i] if self.label in data else None
                self.row(p, label, data["split"][i] if "split" in data else None)
            self.unit("table", rows, rows + batch.num_rows)
            rows += batch.num_rows

    def _needs_path(self, columns: list[str]) -> None:
        if "path" not in columns:
            raise ValueError(f"manifest {self.src.uri} lacks a path column (has {columns})")


def scan_manifest(src: SourceConfig, fmt: ShardFormat, files_per_unit: int, splits: dict):
    """Read the manifest at ``src.uri`` once (see the module doc)."""
    fs, path = fsspec.core.url_to_fs(src.uri)
    scan = ManifestScan(src, fmt, files_per_unit, splits)
    with fs.open(path, "rb") as f:
        if path.lower().endswith(".parquet"):
            scan.parquet(f)
        else:
            scan.csv(f)
    return scan
