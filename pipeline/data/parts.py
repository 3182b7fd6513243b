"""A feature set (or a predictions directory) written unit by unit, exactly once.

Every unit of the plan (:mod:`pipeline.data.plan`) gets its own parts, named by its digest
(``part-<unit>-<k>.parquet``; the units they cover are in each part's metadata too), its
rejected inputs (``_errors/part-<unit>.parquet``) and, written last, its completion marker
(``_units/<unit>.json``: its parts, their rows per split, its counts per class). So a re-run
after a kill skips the units that have a marker, removes whatever the others left, and does
them again: no duplicate, no image lost, and nothing kept per image on the driver. Finalizing
checks every unit's marker, settles the class indexes of labels found while reading, merges the
error parts and writes ``_manifest.json`` last.

Example:

    >>> from pipeline.data.parts import part_path
    >>> part_path("runs/features/x", "0123abcd0123abcd", 2)
    'runs/features/x/part-0123abcd0123abcd-0002.parquet'
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections import Counter

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.data.featureset import FeatureSet
from pipeline.data.plan import class_order
from pipeline.data.schema import (
    COMPRESSION,
    ERROR_PARTS,
    ERROR_SCHEMA,
    ERRORS,
    FORMAT,
    LABEL,
    MANIFEST,
    UNITS,
    FeatureSetError,
)
from pipeline.runs.storage import current_fs

LABEL_NAMES = b"label_names"  # a part's metadata: the class names its label indexes point at
PART = re.compile(r"part-([0-9a-f]{16})-\d+\.parquet$")


def fingerprint(identity: dict) -> str:
    """sha256 of the canonical JSON of everything that determines the features."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def directory_name(model: str, frontier: list[str], digest: str) -> str:
    """A readable, unique directory name: ``<model>-<frontier>-<fingerprint[:16]>`` (the
    frontier, not the name the cut was given, so two names for one cut share a directory)."""
    slug = re.sub(r"[^A-Za-z0-9_.]+", "_", f"{model}-{'+'.join(frontier)}")[:80]
    return f"{slug}-{digest[:16]}"


def part_path(root: str, unit: str, k: int) -> str:
    return f"{root}/part-{unit}-{k:04d}.parquet"


def error_path(root: str, unit: str) -> str:
    return f"{root}/{ERROR_PARTS}/part-{unit}.parquet"


def marker_path(root: str, unit: str) -> str:
    return f"{root}/{UNITS}/{unit}.json"


def write_atomic(
    fs: fsspec.AbstractFileSystem, path: str, table: pa.Table, metadata: dict | None = None
) -> None:
    """Write to a hidden temporary name, then rename: a killed writer leaves no half file under
    a real name (readers skip names starting with '.'). ``metadata``: key-value pairs added to
    the schema's."""
    directory, name = path.rsplit("/", 1)
    tmp = f"{directory}/.tmp-{uuid.uuid4().hex}-{name}"
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    fs.makedirs(directory, exist_ok=True)
    with fs.open(tmp, "wb") as f:
        pq.write_table(table, f, compression=COMPRESSION)
    fs.mv(tmp, path)


def write_marker(fs: fsspec.AbstractFileSystem, root: str, unit: str, marker: dict) -> None:
    """A unit's completion marker, written after its parts (atomically: a rename)."""
    path = marker_path(root, unit)
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    fs.makedirs(f"{root}/{UNITS}", exist_ok=True)
    fs.pipe_file(tmp, json.dumps(marker).encode())
    fs.mv(tmp, path)


def finished_units(uri: str) -> set[str]:
    """The digests of the units ``uri`` holds a completion marker for."""
    fs, root = current_fs(uri)
    if not fs.exists(f"{root}/{UNITS}"):
        return set()
    names = (p.rsplit("/", 1)[-1] for p in fs.ls(f"{root}/{UNITS}", detail=False))
    return {n[: -len(".json")] for n in names if n.endswith(".json")}


def clear_unfinished(uri: str, keep: set[str]) -> int:
    """Remove everything of the units not in ``keep`` (their parts, error parts and markers)
    and every temporary file: what a killed run left. Returns the files removed."""
    fs, root = current_fs(uri)
    if not fs.exists(root):
        return 0
    doomed = []
    for folder in (root, f"{root}/{ERROR_PARTS}", f"{root}/{UNITS}"):
        if not fs.exists(folder):
            continue
        for path in fs.ls(folder, detail=False):
            name = path.rsplit("/", 1)[-1]
            unit = _unit_of(name, marker=folder.endswith(UNITS))
            if name.startswith(".tmp-") or name.endswith(".tmp") or (unit and unit not in keep):
                doomed.append(path)
    for path in doomed:
        fs.rm(path)
    return len(doomed)


def _unit_of(name: str, marker: bool = False) -> str | None:
    """The unit a part, error part or (``marker``: a file of ``_units/``) marker belongs to
    (``None``: not one of those; a part of an older layout belongs to no unit and is removed
    with the unfinished ones)."""
    if marker:
        return name[: -len(".json")] if name.endswith(".json") else None
    found = PART.match(name)
    if found:
        return found.group(1)
    if name.startswith("part-") and name.endswith(".parquet"):
        stem = name[len("part-") : -len(".parquet")]
        return stem if len(stem) == 16 else "older-layout"
    return None


def finalize(uri: str, manifest: dict, units: list[str], classes: list[str] | None) -> FeatureSet:
    """Make a finished directory complete: every unit of ``units`` has its marker, labels found
    while reading get their index in the sorted class names (``classes`` when known), the
    error parts are merged, the counts summed, and the manifest written last."""
    fs, root = current_fs(uri)
    markers = {u: json.loads(fs.cat_file(marker_path(root, u))) for u in _present(fs, root, units)}
    missing = len(units) - len(markers)
    if missing:
        raise FeatureSetError(
            f"{uri}: {missing} of {len(units)} units are unfinished (no {UNITS}/ marker); the "
            "run did not finish: re-run the same job to complete it"
        )
    if classes is None:  # labels named while reading: indexes settled now, in sorted order
        classes = class_order({n for m in markers.values() for n in m.get("labels") or []})
    files = sorted((p for m in markers.values() for p in m["parts"]), key=lambda p: p["name"])
    for part in files:
        _check_and_relabel(fs, f"{root}/{part['name']}", part["rows"], classes)
    counts = _counts(markers.values(), classes)
    errors = _merge_errors(fs, root, classes)
    rows = sum(p["rows"] for p in files)
    manifest = dict(
        manifest,
        format=FORMAT,
        classes=classes,
        rows=rows,
        files=files,
        counts=counts,
        errors=errors.num_rows,
        units=len(units),
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    with fs.open(f"{root}/{MANIFEST}.tmp", "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    fs.mv(f"{root}/{MANIFEST}.tmp", f"{root}/{MANIFEST}")
    if fs.exists(f"{root}/{ERROR_PARTS}"):
        fs.rm(f"{root}/{ERROR_PARTS}", recursive=True)
    return FeatureSet(uri, manifest)


def _present(fs, root: str, units: list[str]) -> list[str]:
    listed = set()
    if fs.exists(f"{root}/{UNITS}"):
        listed = {p.rsplit("/", 1)[-1] for p in fs.ls(f"{root}/{UNITS}", detail=False)}
    return [u for u in units if f"{u}.json" in listed]


def _counts(markers, classes: list[str]) -> dict[str, dict[str, int]]:
    """Rows per split and class index (``"None"``: unlabeled), summed over the units."""
    index = {name: str(i) for i, name in enumerate(classes)}
    total: dict[str, Counter] = {}
    for marker in markers:
        named = marker.get("labels") is not None
        for split, by_label in marker["counts"].items():
            for label, n in by_label.items():
                key = index.get(label, "None") if named and label != "None" else label
                total.setdefault(split, Counter())[key] += n
    return {split: dict(c) for split, c in total.items()}


def _check_and_relabel(fs, path: str, rows: int, classes: list[str]) -> None:
    """Refuse a part that does not hold the rows its marker counted (read from its footer);
    rewrite a part whose labels index its own class names (found while reading) with the
    indexes of ``classes``, unless they are the same already."""
    with fs.open(path, "rb") as f:
        footer = pq.read_metadata(f)
    if footer.num_rows != rows:
        raise FeatureSetError(
            f"{path} holds {footer.num_rows} rows, its unit's marker {rows}: it was changed "
            "after its unit finished; remove the directory and run the job again"
        )
    metadata = footer.schema.to_arrow_schema().metadata or {}
    if LABEL_NAMES not in metadata:
        return
    local = json.loads(metadata[LABEL_NAMES])
    mapping = [classes.index(name) for name in local]
    if mapping == list(range(len(local))):
        return
    table = pq.read_table(path, filesystem=fs)
    write_atomic(fs, path, relabelled(table, mapping), {LABEL_NAMES: json.dumps(classes)})


def relabelled(table: pa.Table, mapping: list[int]) -> pa.Table:
    """``table`` with each label ``i`` replaced by ``mapping[i]`` (nulls stay null)."""
    labels = table.column(LABEL)
    if not mapping:
        return table
    taken = pc.take(pa.array(mapping, pa.int32()), pc.fill_null(labels, 0))
    new = pc.if_else(pc.is_null(labels), pa.scalar(None, pa.int32()), taken)
    return table.set_column(table.schema.get_field_index(LABEL), LABEL, new)


def _merge_errors(fs, root: str, classes: list[str]) -> pa.Table:
    """Every unit's rejected inputs in one ``_errors.parquet`` (labels indexed by
    ``classes``); an earlier finalize's merge when the parts are gone."""
    paths = sorted(fs.glob(f"{root}/{ERROR_PARTS}/part-*.parquet"))
    if not paths and fs.exists(f"{root}/{ERRORS}"):
        return pq.read_table(f"{root}/{ERRORS}", filesystem=fs)
    tables = []
    for path in paths:
        table = pq.read_table(path, filesystem=fs)
        local = (table.schema.metadata or {}).get(LABEL_NAMES)
        if local is not None:
            table = relabelled(table, [classes.index(n) for n in json.loads(local)])
        tables.append(table.replace_schema_metadata(None).cast(ERROR_SCHEMA))
    table = pa.concat_tables(tables) if tables else ERROR_SCHEMA.empty_table()
    write_atomic(fs, f"{root}/{ERRORS}", table)
    return table
