"""Writing a feature set (or predictions) part by part: named by their rows, written atomically,
scanned on resume, and finalized (duplicates dropped, completeness checked, errors merged, the
manifest written last).

Example:

    >>> from pipeline.data.parts import part_name
    >>> part_name(["b:0", "a:0"]) == part_name(["a:0", "b:0"])
    True
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
import pyarrow.parquet as pq

from pipeline.data.featureset import FeatureSet
from pipeline.data.schema import (
    COMPRESSION,
    ERROR_PARTS,
    ERROR_SCHEMA,
    ERRORS,
    FORMAT,
    ID,
    LABEL,
    MANIFEST,
    SPLIT,
    VIEW,
    FeatureSetError,
)


def fingerprint(identity: dict) -> str:
    """sha256 of the canonical JSON of everything that determines the features."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def directory_name(model: str, frontier: list[str], digest: str) -> str:
    """A readable, unique directory name: ``<model>-<frontier>-<fingerprint[:16]>`` (the
    frontier, not the name the cut was given, so two names for one cut share a directory)."""
    slug = re.sub(r"[^A-Za-z0-9_.]+", "_", f"{model}-{'+'.join(frontier)}")[:80]
    return f"{slug}-{digest[:16]}"


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
class Written:
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


def scan(uri: str) -> Written:
    """Read only the id/view columns of what an unfinished directory holds; drop temporaries."""
    fs, root = fsspec.core.url_to_fs(uri)
    if not fs.exists(root):
        return Written(set(), set())
    for tmp in fs.glob(f"{root}/.tmp-*") + fs.glob(f"{root}/{ERROR_PARTS}/.tmp-*"):
        fs.rm(tmp)
    rows: set[str] = set()
    for path in fs.glob(f"{root}/part-*.parquet"):
        rows.update(row_keys(pq.read_table(path, columns=[ID, VIEW], filesystem=fs)))
    errors: set[str] = set()
    for path in fs.glob(f"{root}/{ERROR_PARTS}/part-*.parquet"):
        errors.update(pq.read_table(path, columns=[ID], filesystem=fs).column(ID).to_pylist())
    return Written(rows, errors)


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
