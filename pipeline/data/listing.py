"""Planning sources into units (:mod:`pipeline.data.plan`) without reading an image.

- a folder: its files are listed (a Ray task per class folder on object stores), one path per
  file as Ray Data keeps them, and grouped ``data.files_per_unit`` at a time per class folder;
- a manifest (CSV or Parquet of ``path``, optional label and ``split``): read once, streamed,
  for its class names, counts and unit boundaries (:mod:`pipeline.data.manifests`): nothing
  per image is kept;
- shards (WebDataset tars, Parquet files of encoded images): the file listing alone, one unit
  per shard; not a byte of a tar is read, and of Parquet shards only one footer per source (the
  image column and the ``datasets`` class names).

Example:

    >>> from pipeline.data.listing import plan_data
    >>> from pipeline.data.shapes import generate_shapes
    >>> from pipeline.settings import DataConfig
    >>> classes = generate_shapes(tmp / "few", per_class=3, size=32)
    >>> plan = plan_data(DataConfig(sources=[str(tmp / "few")], files_per_unit=2))
    >>> plan.classes == classes, len(plan.units), sum(plan.counts.values())
    (True, 10, 15)
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from collections import Counter
from dataclasses import dataclass, field, replace

import fsspec
import pyarrow.parquet as pq
import ray

from pipeline.data.manifests import scan_manifest
from pipeline.data.plan import (
    DataPlan,
    ShardFormat,
    Unit,
    class_order,
    hash_split,
    shard_split,
)
from pipeline.settings import DataConfig, SourceConfig

SHARD_SUFFIXES = {".parquet": "parquet", ".tar": "webdataset"}
MANIFEST_SUFFIXES = (".csv", ".parquet")
# a shard or manifest source's settings that change its rows' splits or labels
READ_OPTIONS = {"split", "image_column", "label_column", "label_names"}


@dataclass
class Listed:
    """What listing one source found: its units, the stamps its part of the fingerprint is
    made of, its class names (``None``: only reading its shards can tell), and, when every
    member was seen, the images and unlabeled images per split. ``rows``: a folder's
    ``(uri, class, split)`` per file, for the fingerprint folder sources have always had."""

    units: list[Unit]
    stamps: list
    classes: set[str] | None
    counts: Counter | None = None
    unlabeled: Counter | None = None
    rows: list[tuple] | None = None
    notes: list[str] = field(default_factory=list)


def plan_data(cfg: DataConfig) -> DataPlan:
    """Plan every source into units (see the module doc); the driver keeps the units, the class
    names and counts, never a row per image of a shard or a manifest."""
    listed = []
    for src in cfg.sources:
        kind = source_format(src)  # settled once: inferring it may read a file's schema
        listed.append(_LISTERS[kind](src.model_copy(update={"format": kind}), cfg))
    units = [u for one in listed for u in one.units]
    if not units:
        raise FileNotFoundError(f"no images found in {[s.uri for s in cfg.sources]}")
    known = [one.classes for one in listed]
    classes = None if None in known else class_order(set().union(*known))
    counts = _summed([one.counts for one in listed])
    unlabeled = _summed([one.unlabeled for one in listed])
    return DataPlan(
        units,
        classes,
        _fingerprint(listed, classes, cfg),
        cfg.splits,
        cfg.max_image_pixels,
        counts=counts,
        unlabeled_counts=unlabeled,
    )


def _summed(counters: list[Counter | None]) -> dict[str, int] | None:
    if any(c is None for c in counters):
        return None
    return dict(sum(counters, Counter()))


def _fingerprint(listed: list[Listed], classes: list[str] | None, cfg: DataConfig) -> str:
    """sha256 of the classes and every source's stamps. Folders alone keep the fingerprint
    they have always had (every file's URI, class and split, and stamps), so their feature
    sets made before stay cache hits; shards and manifests are fingerprinted by their stamps
    (sizes and modification times; a manifest's content) and by what decides their rows'
    splits and labels when they are read: the split ratios and each source's split, columns
    and class names (in their order: an index means the name at that place)."""
    digest = hashlib.sha256()
    if all(one.rows is not None for one in listed):
        rows = sorted(r for one in listed for r in one.rows)
        content = [classes, rows, [one.stamps for one in listed]]
    else:
        reading = [src.model_dump(include=READ_OPTIONS, mode="json") for src in cfg.sources]
        stamps = [one.stamps for one in listed]
        content = ["units-2", classes, dict(cfg.splits), reading, stamps]
    for chunk in json.JSONEncoder().iterencode(content):  # no giant string
        digest.update(chunk.encode())
    return digest.hexdigest()


def source_format(src: SourceConfig) -> str:
    """The source's ``format``, else inferred: ``.csv`` a manifest; ``.tar`` WebDataset
    shards; ``.parquet`` a manifest when it has a ``path`` column and no image column, else
    Parquet shards; a folder of nothing but ``.tar`` (or ``.parquet``) files, shards; any
    other folder, images (in class folders, or unlabeled)."""
    if src.format:
        return src.format
    uri = src.uri.lower().rstrip("/")
    if _is_glob(uri):
        return SHARD_SUFFIXES.get(posixpath.splitext(uri)[1], "folder")
    if uri.endswith(".csv"):
        return "manifest"
    if uri.endswith(".tar"):
        return "webdataset"
    fs, path = fsspec.core.url_to_fs(src.uri)
    if uri.endswith(".parquet") and not fs.isdir(path):
        with fs.open(path, "rb") as f:
            names = pq.read_schema(f).names
        return "manifest" if "path" in names and src.image_column not in names else "parquet"
    if fs.isdir(path):
        entries = [
            e for e in fs.ls(path, detail=True) if not _hidden(posixpath.basename(e["name"]))
        ]
        kinds = {
            SHARD_SUFFIXES.get(posixpath.splitext(e["name"].lower())[1])
            if e["type"] == "file"
            else None  # a folder: class folders, not a folder of shards
            for e in entries
        }
        if len(kinds) == 1 and None not in kinds:
            return kinds.pop()
    return "folder"


def _hidden(path: str) -> bool:
    """A path with a part starting with ``.``: skipped, as in a folder of images."""
    return any(part.startswith(".") for part in path.split("/"))


def _is_glob(uri: str) -> bool:
    return any(c in uri for c in "*?[")


def uri_of(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path ``fs`` listed, as a URI any process can open (local paths stay paths)."""
    return path if "file" in fs.protocol else fs.unstrip_protocol(path)


def _fmt(src: SourceConfig) -> ShardFormat:
    return ShardFormat(src.image_column, src.label_column, src.label_names)


# ---------------------------------------------------------------------------- folders


def _list_folder(src: SourceConfig, cfg: DataConfig) -> Listed:
    """Every file under ``<root>/<class>/`` (non-images too: the decoder records them as errors
    instead of letting them vanish), a class folder per task; a folder with no class folders
    is a folder of unlabeled images. Hidden files and folders are skipped."""
    uri = src.uri
    fs, root = fsspec.core.url_to_fs(uri)
    root = root.rstrip("/")
    if not fs.isdir(root):
        raise FileNotFoundError(
            f"{uri} is not a folder (expected <root>/<class>/<image> or <root>/<image>) nor "
            f"a manifest or shard file ({MANIFEST_SUFFIXES}, .tar)"
        )
    entries = sorted(fs.ls(root, detail=True), key=lambda e: e["name"])
    visible = [e for e in entries if not _hidden(posixpath.basename(e["name"]))]
    folders = [e["name"] for e in visible if e["type"] == "directory"]
    tasks = _use_tasks(cfg.listing, fs)
    listed = _parallel(_list_class_folder, [(uri, root, f) for f in folders], tasks)
    found = [row for rows, _ in listed for row in rows]
    stamp = [entry for _, entries in listed for entry in entries]
    if not found:  # no class folders with files: the folder's own files, unlabeled
        files = [e for e in visible if e["type"] == "file"]
        found = [(key_of(root, e["name"]), uri_of(fs, e["name"]), None) for e in files]
        stamp = [[key_of(root, e["name"]), e.get("size"), str(modified(e))] for e in files]
    if not found:
        raise FileNotFoundError(
            f"{uri} has no images; expected {uri}/<class>/<image> or {uri}/<image>"
        )
    return _folder_units(uri, src, cfg, found, stamp)


def _folder_units(uri, src, cfg, found, stamp) -> Listed:
    """File groups of at most ``files_per_unit`` files of one class folder, and the counts."""
    counts, unlabeled, rows, units = Counter(), Counter(), [], []
    groups: dict[str | None, list] = {}
    for key, file_uri, label in found:
        split = src.split or hash_split(key, cfg.splits)
        counts[split] += 1
        unlabeled[split] += label is None
        rows.append((file_uri, label, split))
        groups.setdefault(label, []).append((key, file_uri, label))
    for files in groups.values():
        for i in range(0, len(files), cfg.files_per_unit):
            chunk = tuple(files[i : i + cfg.files_per_unit])
            units.append(Unit(chunk[0][0], "files", uri, src.split, _fmt(src), files=chunk))
    classes = {label for _, _, label in found if label is not None}
    return Listed(units, stamp, classes, counts, unlabeled, rows)


def _find(fs: fsspec.AbstractFileSystem, folder: str) -> list[tuple[str, dict]]:
    """Every file under ``folder`` with its size and modification time, sorted by path. On a
    mounted disk ``os.scandir`` gives both from the directory read (fsspec's ``find`` stats each
    file: measured 3x slower on 200k files); the values are the same, so is the fingerprint."""
    if "file" not in fs.protocol:
        return sorted(fs.find(folder, detail=True).items())
    found, stack = [], [folder]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=True):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=True):
                    st = entry.stat()
                    found.append((entry.path, {"size": st.st_size, "mtime": st.st_mtime}))
    return sorted(found, key=lambda f: f[0])


def key_of(root: str, path: str) -> str:
    """``path`` relative to its source's ``root``: what an image's split is hashed from."""
    return path[len(root) :].lstrip("/")


def _list_class_folder(uri: str, root: str, folder: str):
    """The files under one class folder: rows (key, uri, class) and their stamps."""
    fs, _ = fsspec.core.url_to_fs(uri)
    found, stamp = [], []
    for path, info in _find(fs, folder):
        key = key_of(root, path)
        parts = key.split("/")
        if len(parts) < 2 or any(p.startswith(".") for p in parts):
            continue
        found.append((key, uri_of(fs, path), parts[0]))
        stamp.append([key, info.get("size"), str(modified(info))])
    return found, stamp


def _parallel(fn, args: list[tuple], tasks: bool) -> list:
    """``fn(*a)`` for each of ``args``: as Ray tasks (listing is I/O: a quarter CPU each) when
    asked, Ray is running and there are several, else here."""
    if tasks and len(args) > 1 and ray.is_initialized():
        task = ray.remote(num_cpus=0.25)(fn)
        return ray.get([task.remote(*a) for a in args])
    return [fn(*a) for a in args]


def _use_tasks(listing: str, fs: fsspec.AbstractFileSystem) -> bool:
    """``auto``: tasks for object stores (a listing call is a round trip; prefixes list in
    parallel); a mounted disk's folder tree is scanned here, where a scan beats starting tasks
    (``jobs.benchmark listing``)."""
    if listing != "auto":
        return listing == "tasks"
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    return not protocols & {"file", "local", "memory"}  # memory: this process's own


def modified(info: dict):
    """What a listing says about when a file last changed (its mtime, or an object's ETag)."""
    for key in ("mtime", "LastModified", "ETag", "etag", "md5Hash", "created"):
        if info.get(key) is not None:
            return info[key]
    return None


# ---------------------------------------------------------------------------- shards


def _list_shards(src: SourceConfig, cfg: DataConfig) -> Listed:
    """One unit per shard (a shard file, a folder of them, or a glob): the listing alone, with
    each shard's size and modification time; no shard is opened but one Parquet footer."""
    suffix = next(k for k, v in SHARD_SUFFIXES.items() if v == src.format)
    fs, path = fsspec.core.url_to_fs(src.uri)
    if _is_glob(src.uri):  # sizes and times come with the listing: no stat per shard
        found, root = fs.glob(path, detail=True), posixpath.dirname(path.split("*")[0])
    elif fs.isdir(path):
        root = path.rstrip("/")
        found = {
            p: i
            for p, i in fs.find(root, detail=True).items()
            if p.lower().endswith(suffix) and not _hidden(p[len(root) :])
        }
    else:
        found, root = {path: fs.info(path)}, posixpath.dirname(path)
    if not found:
        raise FileNotFoundError(f"{src.uri} has no {suffix} shards")
    shards, fmt = sorted(found), _fmt(src)
    if fmt.label_names is None and src.format == "parquet":  # the datasets class names
        fmt = replace(fmt, label_names=parquet_names(uri_of(fs, shards[0]), fmt))
    units, stamps = [], []
    for shard in shards:
        key, split = key_of(root, shard), src.split or shard_split(shard)
        units.append(Unit(key, src.format, uri_of(fs, shard), split, fmt))
        stamps.append([key, found[shard].get("size"), str(modified(found[shard]))])
    names = fmt.label_names
    return Listed(units, stamps, set(names) if names is not None else None)


def parquet_names(uri: str, fmt: ShardFormat) -> tuple[str, ...] | None:
    """From one Parquet shard's footer: refuse a shard without the image column, and return
    the class names a ``datasets`` file keeps in its schema metadata (``None`` without)."""
    fs, path = fsspec.core.url_to_fs(uri)
    with fs.open(path, "rb") as f:
        schema = pq.read_schema(f)
    if fmt.image_column not in schema.names:
        raise ValueError(
            f"{uri} has no image column {fmt.image_column!r} (columns: {schema.names}); set "
            "the source's image_column"
        )
    raw = (schema.metadata or {}).get(b"huggingface")
    column = fmt.label_column or "label"
    features = json.loads(raw).get("info", {}).get("features", {}) if raw else {}
    names = features.get(column, {}).get("names")
    return tuple(names) if names else None


def _list_manifest(src: SourceConfig, cfg: DataConfig) -> Listed:
    scan = scan_manifest(src, _fmt(src), cfg.files_per_unit, cfg.splits)
    return Listed(scan.units, scan.digest, scan.classes, scan.counts, scan.unlabeled)


_LISTERS = {
    "folder": _list_folder,
    "manifest": _list_manifest,
    "parquet": _list_shards,
    "webdataset": _list_shards,
}
