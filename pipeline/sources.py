"""Image sources: a folder per class or a manifest (CSV or Parquet), listed into an item table.

Sources are local paths or fsspec URIs (``s3://``, ``gs://``, ``memory://``...). Class index =
position in the sorted class names, so every source agrees on it. An item's split comes from its
source (``split:`` in config, or a manifest's ``split`` column) or, when none is given, from a hash
of its key (the path relative to its source root), so a split survives copying the dataset.

Example:

    >>> from pipeline import sources
    >>> from pipeline.settings import DataConfig
    >>> from pipeline.shapes import generate_shapes
    >>> classes = generate_shapes("/tmp/shapes-doc", per_class=2, size=32)
    >>> items = sources.list_items(DataConfig(sources=["/tmp/shapes-doc"]))
    >>> items.classes == classes, items.table.num_rows
    (True, 10)
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline.featureset import ID, ITEM_SCHEMA, LABEL, SOURCE, SPLIT
from pipeline.settings import DataConfig

MANIFEST_SUFFIXES = (".csv", ".parquet")


@dataclass
class Items:
    """What the sources list: one row per image (id, source, label, split), the class names,
    and a fingerprint of it all (for the feature-set cache)."""

    table: pa.Table
    classes: list[str]
    fingerprint: str

    def count(self, split: str) -> int:
        """Items in ``split``."""
        return self.table.column(SPLIT).to_pylist().count(split)


def item_id(source: str) -> str:
    """Stable id of an image: a hash of its URI."""
    return hashlib.sha256(source.encode()).hexdigest()[:20]


def hash_split(key: str, ratios: dict[str, float]) -> str:
    """Deterministic split of ``key`` by ratios (in the order given)."""
    u = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    total = 0.0
    for name, ratio in ratios.items():
        total += ratio
        if u < total:
            return name
    return name


def list_items(cfg: DataConfig) -> Items:
    """List every source: ids, URIs, labels (index into sorted class names) and splits."""
    rows, stamps = [], []
    for src in cfg.sources:
        listed, stamp = (
            _manifest_rows(src.uri)
            if src.uri.lower().endswith(MANIFEST_SUFFIXES)
            else _folder_rows(src.uri)
        )
        for key, uri, label, split in listed:
            rows.append((uri, label, src.split or split or hash_split(key, cfg.splits)))
        stamps.append(stamp)
    if not rows:
        raise FileNotFoundError(f"no images found in {[s.uri for s in cfg.sources]}")
    names = {label for _, label, _ in rows}
    # Integer labels keep their numeric order ("2" before "10"); names sort as text.
    classes = sorted(names, key=int) if all(n.isdigit() for n in names) else sorted(names)
    index = {name: i for i, name in enumerate(classes)}
    rows.sort()
    table = pa.table(
        {
            ID: [item_id(u) for u, _, _ in rows],
            SOURCE: [u for u, _, _ in rows],
            LABEL: [index[lab] for _, lab, _ in rows],
            SPLIT: [s for _, _, s in rows],
        },
        schema=ITEM_SCHEMA,
    )
    if len(set(table.column(ID).to_pylist())) != table.num_rows:
        raise ValueError("the sources list the same image twice; each image may appear once")
    digest = hashlib.sha256(json.dumps([classes, rows, stamps]).encode()).hexdigest()
    return Items(table, classes, digest)


def _uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return path if "file" in fs.protocol else fs.unstrip_protocol(path)


def _folder_rows(uri: str):
    """Every file under ``<root>/<class>/`` (non-images too: the decoder records them as errors
    instead of letting them vanish). Hidden files and folders are skipped."""
    fs, root = fsspec.core.url_to_fs(uri)
    root = root.rstrip("/")
    if not fs.isdir(root):
        raise FileNotFoundError(
            f"{uri} is not a folder (expected <root>/<class>/<image>) nor a "
            f"manifest ending in {MANIFEST_SUFFIXES}"
        )
    found, stamp = [], []
    for path, info in sorted(fs.find(root, detail=True).items()):
        key = path[len(root) :].lstrip("/")
        parts = key.split("/")
        if len(parts) < 2 or any(p.startswith(".") for p in parts):
            continue
        found.append((key, _uri(fs, path), parts[0], None))
        stamp.append([key, info.get("size"), str(_modified(info))])
    if not found:
        raise FileNotFoundError(
            f"{uri} has no class folders with files; expected {uri}/<class>/<image>"
        )
    return found, stamp


def _modified(info: dict):
    for key in ("mtime", "LastModified", "ETag", "etag", "md5Hash", "created"):
        if info.get(key) is not None:
            return info[key]
    return None


def _manifest_rows(uri: str):
    """Rows of a CSV/Parquet manifest. Its content is its fingerprint: an image changed in place
    without a manifest change is not noticed (stat-ing millions of objects is not worth it)."""
    fs, path = fsspec.core.url_to_fs(uri)
    data = fs.cat_file(path)
    table = (
        pq.read_table(io.BytesIO(data))
        if path.lower().endswith(".parquet")
        else pacsv.read_csv(io.BytesIO(data))
    )
    missing = {"path", "label"} - set(table.column_names)
    if missing:
        raise ValueError(
            f"manifest {uri} lacks columns {sorted(missing)}; it needs path, label "
            f"and optionally split (has {table.column_names})"
        )
    base = posixpath.dirname(path)
    splits = table.column("split").to_pylist() if "split" in table.column_names else None
    found = []
    for i, (p, label) in enumerate(
        zip(table.column("path").to_pylist(), table.column("label").to_pylist())
    ):
        absolute = "://" in p or p.startswith("/")
        full = p if absolute else _uri(fs, posixpath.join(base, p))
        found.append((p, full, str(label), splits[i] if splits else None))
    return found, hashlib.sha256(data).hexdigest()
