"""Image stores kept as shards: Parquet files of encoded images and WebDataset tar files.

A shard holds many images. Listing one reads its index only (a Parquet file's label column, a
tar's member headers and label files), never the image bytes; each image becomes an item whose
source is ``<shard uri>#<member>`` (a row number of a Parquet shard, a sample key of a tar), so
its id (a hash of that) does not depend on the order shards are listed in. Decoding reads the
members of one shard that a batch needs in one pass over the shard (:func:`fetch`).

The Parquet layout is the one Hugging Face ``datasets`` writes: an ``image`` struct column of
``{bytes, path}`` (a plain binary column works too) and an integer ``label`` whose class names
are in the schema metadata; a WebDataset shard holds ``<key>.<jpg|png|...>`` with ``<key>.cls``
(a class index or name) or ``<key>.json`` (a ``label`` field). Without labels, items are
unlabeled (label null).

Example:

    >>> import io, pyarrow as pa, pyarrow.parquet as pq
    >>> from PIL import Image
    >>> from pipeline.data.shards import fetch, index_shard, ShardFormat
    >>> png = io.BytesIO(); Image.new("RGB", (8, 8)).save(png, "PNG")
    >>> table = pa.table({"image": [{"bytes": png.getvalue(), "path": "a.png"}] * 2,
    ...                   "label": [0, 1]})
    >>> pq.write_table(table, tmp / "train-0.parquet")
    >>> shard = str(tmp / "train-0.parquet")
    >>> index = index_shard(shard, ShardFormat("parquet", label_names=["cat", "dog"]))
    >>> [(member, label) for member, label in index.members]
    [('0', 'cat'), ('1', 'dog')]
    >>> [len(b) for b in fetch([f"{shard}#1", f"{shard}#0"]).values()] == [len(png.getvalue())] * 2
    True
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from collections import defaultdict
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

SHARD_SUFFIXES = {".parquet": "parquet", ".tar": "webdataset"}
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm")
TRUNCATED = "<truncated>"  # the member of a shard's unreadable tail


@dataclass(frozen=True)
class ShardFormat:
    """How a shard store is read: its format, which column (or tar extension / JSON field)
    holds the image and the label, and the class names when the shards hold indexes."""

    kind: str  # "parquet" | "webdataset"
    image_column: str = "image"
    label_column: str | None = None  # default: "label" (Parquet), "cls" then json "label" (tar)
    label_names: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.label_names is not None:
            object.__setattr__(self, "label_names", tuple(self.label_names))


@dataclass
class ShardIndex:
    """What listing a shard found: ``(member, label name or None)`` per image, in shard order,
    and, for a tar cut short, why its tail could not be read."""

    members: list[tuple[str, str | None]] = field(default_factory=list)
    truncated: str | None = None


class ShardError(ValueError):
    """A shard that cannot be used at all (a Parquet file without the image column)."""


def split_member(source: str) -> tuple[str, str] | None:
    """``(shard, member)`` of a shard member's source, else None (a file of its own)."""
    shard, sep, member = source.rpartition("#")
    return (shard, member) if sep and shard.lower().endswith(tuple(SHARD_SUFFIXES)) else None


def is_member(source: str) -> bool:
    return split_member(source) is not None


def member_source(shard: str, member: str) -> str:
    return f"{shard}#{member}"


# ---------------------------------------------------------------------------- listing


def index_shard(uri: str, fmt: ShardFormat) -> ShardIndex:
    """List one shard's images and labels without reading their bytes."""
    return _index_parquet(uri, fmt) if fmt.kind == "parquet" else _index_tar(uri, fmt)


def _index_parquet(uri: str, fmt: ShardFormat) -> ShardIndex:
    fs, path = fsspec.core.url_to_fs(uri)
    with fs.open(path, "rb") as f:
        parquet = pq.ParquetFile(f)
        schema = parquet.schema_arrow
        if fmt.image_column not in schema.names:
            raise ShardError(
                f"{uri} has no image column {fmt.image_column!r} (columns: {schema.names}); "
                "set the source's image_column"
            )
        column = fmt.label_column or "label"
        if column in schema.names:
            labels = parquet.read(columns=[column]).column(column).to_pylist()
        else:
            labels = [None] * parquet.metadata.num_rows
    names = fmt.label_names or _datasets_names(schema, column)
    # a non-default image column is part of the member: another column is another image
    suffix = "" if fmt.image_column == "image" else f"@{fmt.image_column}"
    return ShardIndex([(f"{i}{suffix}", label_name(v, names)) for i, v in enumerate(labels)])


def _datasets_names(schema: pa.Schema, column: str) -> tuple[str, ...] | None:
    """Class names a Hugging Face ``datasets`` Parquet file keeps in its schema metadata."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return None
    features = json.loads(raw).get("info", {}).get("features", {})
    names = features.get(column, {}).get("names")
    return tuple(names) if names else None


def label_name(value, names: tuple[str, ...] | list[str] | None) -> str | None:
    """A label as its class name: an index into ``names`` when there are names, else as is."""
    if value is None:
        return None
    if names is not None and (isinstance(value, int) or str(value).isdigit()):
        if int(value) >= len(names):
            raise ShardError(f"label {value} has no name among the {len(names)} class names")
        return names[int(value)]
    return str(value)


def _index_tar(uri: str, fmt: ShardFormat) -> ShardIndex:
    """Member headers in order (a local file is read header by header, seeking past the
    data); a label file's few bytes are read. A tar cut short (a member's data past the end of
    the file, or no end-of-archive blocks) keeps the samples that came before."""
    samples: dict[str, dict] = {}
    index = ShardIndex()
    fs, path = fsspec.core.url_to_fs(uri)
    size = fs.size(path)
    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for info in tar:
                if info.offset_data + info.size > size:
                    raise tarfile.ReadError(f"{info.name!r} ends past the end of the file")
                key, ext = _split_key(info.name)
                if not info.isfile() or key is None:
                    continue
                sample = samples.setdefault(key, {})
                if ext in IMAGE_EXTENSIONS:
                    sample["image"] = info.name
                elif ext in ("cls", "json", "txt"):
                    sample[ext] = tar.extractfile(info).read()
            if size - tar.offset < 2 * tarfile.BLOCKSIZE:  # a whole tar ends with two blocks
                raise tarfile.ReadError("no end-of-archive blocks")
    except (tarfile.TarError, EOFError, OSError) as e:
        index.truncated = f"truncated tar shard: unreadable after {len(samples)} samples ({e})"
    names = fmt.label_names
    for key, sample in samples.items():
        if "image" in sample:
            index.members.append((key, label_name(_tar_label(sample, fmt), names)))
    return index


def _split_key(name: str) -> tuple[str | None, str]:
    """WebDataset's convention: the key is the path up to the first dot of the file name."""
    directory, base = posixpath.split(name)
    if base.startswith(".") or "." not in base:
        return None, ""
    stem, ext = base.split(".", 1)
    return posixpath.join(directory, stem), ext.lower()


def _tar_label(sample: dict, fmt: ShardFormat):
    column = fmt.label_column
    if column in (None, "cls") and "cls" in sample:
        return sample["cls"].decode().strip()
    if "json" in sample:
        return json.loads(sample["json"]).get(column or "label")
    if column and column in sample:
        return sample[column].decode().strip()
    return None


# ---------------------------------------------------------------------------- reading


def fetch(sources: list[str]) -> dict[str, bytes | Exception]:
    """The bytes of every shard member among ``sources``, each shard read once; a member that
    cannot be read maps to the exception saying why. Other sources are left out."""
    by_shard: dict[str, list[str]] = defaultdict(list)
    for parts in filter(None, map(split_member, sources)):
        by_shard[parts[0]].append(parts[1])
    out: dict[str, bytes | Exception] = {}
    for shard, members in by_shard.items():
        kind = SHARD_SUFFIXES[posixpath.splitext(shard.lower())[1]]
        read = _read_parquet if kind == "parquet" else _read_tar
        try:
            found = read(shard, members)
        except Exception as e:  # the whole shard is unreadable: every member says so
            found = {m: OSError(f"shard {shard} could not be read: {e}") for m in members}
        for member in members:
            out[member_source(shard, member)] = found.get(
                member, OSError(f"{member!r} is not in shard {shard}")
            )
    return out


def _read_parquet(shard: str, members: list[str]) -> dict:
    """Members are row numbers (``17``, or ``17@column`` for another image column); only the
    row groups holding them are read."""
    wanted: dict[str, dict[int, str]] = defaultdict(dict)
    for member in members:
        row, _, column = member.partition("@")
        wanted[column or "image"][int(row)] = member
    values = {}
    with fsspec.open(shard, "rb") as f:
        parquet = pq.ParquetFile(f)
        for column, rows in wanted.items():
            start = 0
            for group in range(parquet.num_row_groups):
                size = parquet.metadata.row_group(group).num_rows
                inside = [i for i in rows if start <= i < start + size]
                if inside:
                    images = parquet.read_row_group(group, columns=[column]).column(column)
                    for i in inside:
                        values[rows[i]] = _image_bytes(images[i - start].as_py())
                start += size
    return values


def _image_bytes(value) -> bytes | Exception:
    if isinstance(value, dict):  # datasets' Image feature: {bytes, path}
        value = value.get("bytes")
    if not value:
        return OSError("the shard row holds no image bytes")
    return bytes(value)


def _read_tar(shard: str, members: list[str]) -> dict:
    wanted, found = set(members), {}
    try:
        with fsspec.open(shard, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for info in tar:
                key, ext = _split_key(info.name)
                if key in wanted and ext in IMAGE_EXTENSIONS and key not in found:
                    found[key] = tar.extractfile(info).read()
                    if len(found) == len(wanted):
                        break
    except (tarfile.TarError, EOFError, OSError) as e:  # TRUNCATED is never found: it ends here
        for key in wanted - set(found):
            found[key] = OSError(f"truncated tar shard: {e}")
    return found
