"""Reading a unit's members in one sequential read: a WebDataset tar streamed member by
member, a Parquet shard row group by row group, a manifest's range of rows, a group of files.
Members are enumerated by the reading itself: nothing is listed beforehand, and the bytes read
are counted (what ``jobs.benchmark shards`` reports).

The Parquet shard layout is the one Hugging Face ``datasets`` writes: an ``image`` struct
column of ``{bytes, path}`` (a plain binary column works too) and an integer ``label`` whose
class names are in the schema metadata; a WebDataset shard holds ``<key>.<jpg|png|...>`` with
``<key>.cls`` (a class index or name) or ``<key>.json`` (a ``label`` field), the files of a
sample next to each other. A tar cut short keeps the samples before the cut and yields one
member for its unreadable tail, which the decoder records as an error.

Example:

    >>> import io, pyarrow as pa, pyarrow.parquet as pq
    >>> from PIL import Image
    >>> from pipeline.data.plan import ShardFormat, Unit
    >>> from pipeline.data.shards import Reader
    >>> png = io.BytesIO(); Image.new("RGB", (8, 8)).save(png, "PNG")
    >>> table = pa.table({"image": [{"bytes": png.getvalue(), "path": "a.png"}] * 2,
    ...                   "label": [0, 1]})
    >>> pq.write_table(table, tmp / "train-0.parquet")
    >>> unit = Unit("train-0.parquet", "parquet", str(tmp / "train-0.parquet"),
    ...             fmt=ShardFormat(label_names=["cat", "dog"]))
    >>> reader = Reader(unit)
    >>> [(m.key, m.label) for m in reader.members()], reader.bytes_read > 0
    ([('train-0.parquet#0', 'cat'), ('train-0.parquet#1', 'dog')], True)
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.plan import ShardFormat, Unit, label_name

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm")
TRUNCATED = "<truncated>"  # the member of a shard's unreadable tail


@dataclass
class Member:
    """One image of a unit: ``key`` (what its split is hashed from), ``source`` (its URI: what
    its id is a hash of), its class name, the split its row gives (manifests), and its bytes,
    or why they could not be read, or ``None`` (a file, read when decoded)."""

    key: str
    source: str
    label: str | None
    split: str | None = None
    data: bytes | Exception | None = None


class Reader:
    """Reads one unit's members in one pass, counting the bytes it reads from storage."""

    def __init__(self, unit: Unit):
        self.unit, self.bytes_read, self.members_seen = unit, 0, 0

    def members(self) -> Iterator[Member]:
        """The unit's members, in the order the read meets them."""
        read = {
            "files": self._files,
            "webdataset": self._tar,
            "parquet": self._parquet,
            "csv": self._csv,
            "table": self._table,
        }[self.unit.kind]
        for member in read():
            self.members_seen += 1
            yield member

    def file_bytes(self, source: str) -> bytes:
        """A file's bytes, counted."""
        with fsspec.open(source, "rb") as f:
            data = f.read()
        self.bytes_read += len(data)
        return data

    # ------------------------------------------------------------------ the kinds

    def _files(self) -> Iterator[Member]:
        for key, uri, label in self.unit.files:
            yield Member(key, uri, label)

    def _tar(self) -> Iterator[Member]:
        """Stream the tar once, a sample at a time (a sample's files are contiguous)."""
        unit, sample, key = self.unit, {}, None
        try:
            with (
                fsspec.open(unit.uri, "rb") as raw,
                tarfile.open(fileobj=_Counting(raw, self), mode="r|") as tar,
            ):
                for info in tar:
                    name_key, ext = split_key(info.name)
                    if not info.isfile() or name_key is None:
                        continue
                    if name_key != key and sample:
                        yield from self._sample(key, sample)
                        sample = {}
                    key = name_key
                    data = tar.extractfile(info).read()
                    sample["image" if ext in IMAGE_EXTENSIONS else ext] = data
                if sample:
                    yield from self._sample(key, sample)
        # a tar cut short; a storage error (OSError) is not one: it fails the task, which
        # Ray retries, and the unit is done again rather than recorded as read
        except (tarfile.TarError, EOFError) as e:
            if sample:
                yield from self._sample(key, sample)
            reason = f"truncated tar shard: unreadable after {key or 'its start'} ({e})"
            yield Member(
                f"{unit.key}#{TRUNCATED}", f"{unit.uri}#{TRUNCATED}", None, None, OSError(reason)
            )

    def _sample(self, key: str, sample: dict) -> Iterator[Member]:
        if "image" not in sample:
            return  # a sample without an image (metadata only): nothing to decode
        unit = self.unit
        try:
            label = label_name(tar_label(sample, unit.fmt.label_column), unit.fmt.label_names)
        except ValueError as e:
            label, sample["image"] = None, e
        yield Member(f"{unit.key}#{key}", f"{unit.uri}#{key}", label, None, sample["image"])

    def _parquet(self) -> Iterator[Member]:
        """Row group by row group, the image and label columns only. A member's name is its row
        number (``17``, or ``17@column`` for another image column than ``image``). A shard
        pyarrow cannot read (corrupt, cut short) ends with one member saying so, like a tar."""
        unit = self.unit
        with fsspec.open(unit.uri, "rb") as raw:
            counting = _Counting(raw, self)
            try:
                yield from self._row_groups(pq.ParquetFile(counting))
            # pyarrow says ArrowInvalid for a missing footer and OSError for bad pages; an
            # OSError from storage itself fails the task instead (Ray retries it)
            except (pa.ArrowInvalid, OSError) as e:
                if counting.failed is not None:
                    raise
                reason = OSError(f"unreadable Parquet shard: {e}")
                yield Member(
                    f"{unit.key}#{TRUNCATED}", f"{unit.uri}#{TRUNCATED}", None, None, reason
                )

    def _row_groups(self, parquet: pq.ParquetFile) -> Iterator[Member]:
        unit, fmt, row = self.unit, self.unit.fmt, 0
        column = fmt.label_column or "label"
        suffix = f"@{fmt.image_column}" if fmt.image_column != "image" else ""
        if fmt.image_column not in parquet.schema_arrow.names:  # planning read one footer
            raise ValueError(
                f"{unit.uri} has no image column {fmt.image_column!r} (columns: "
                f"{parquet.schema_arrow.names}); set the source's image_column, or move the "
                "shard out of the source"
            )
        columns = [fmt.image_column] + ([column] if column in parquet.schema_arrow.names else [])
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=columns).to_pydict()
            labels = table.get(column) or [None] * len(table[fmt.image_column])
            for image, value in zip(table[fmt.image_column], labels):
                name = f"{row}{suffix}"
                data = _image_bytes(image)
                try:
                    label = label_name(value, fmt.label_names)
                except ValueError as e:
                    label, data = None, e
                yield Member(f"{unit.key}#{name}", f"{unit.uri}#{name}", label, None, data)
                row += 1

    def _csv(self) -> Iterator[Member]:
        """The lines from byte ``rows[0]`` to ``rows[1]`` of a CSV manifest, paths relative to
        it resolved."""
        unit, (start, stop) = self.unit, self.unit.rows
        with fsspec.open(unit.uri, "rb") as raw:
            f = _Counting(raw, self)
            header = next(csv.reader([f.readline().decode("utf-8-sig")]))
            f.seek(start)
            text = f.read(stop - start).decode("utf-8")
        for values in csv.reader(io.StringIO(text)):
            if values:
                yield self._manifest_row(dict(zip(header, values)))

    def _table(self) -> Iterator[Member]:
        """Rows ``rows[0]`` to ``rows[1]`` of a Parquet manifest: the row groups that hold
        them, their path, label and split columns only (a manifest written with row groups
        of about ``files_per_unit`` rows is read once over; larger groups are read by each
        unit they hold)."""
        unit, (start, stop) = self.unit, self.unit.rows
        label = unit.fmt.label_column or "label"
        with fsspec.open(unit.uri, "rb") as raw:
            parquet = pq.ParquetFile(_Counting(raw, self))
            columns = [c for c in ("path", label, "split") if c in parquet.schema_arrow.names]
            first = 0
            for group in range(parquet.num_row_groups):
                size = parquet.metadata.row_group(group).num_rows
                if first < stop and first + size > start:
                    rows = parquet.read_row_group(group, columns=columns).to_pylist()
                    for row in rows[max(0, start - first) : stop - first]:
                        yield self._manifest_row(row)
                first += size

    def _manifest_row(self, row: dict) -> Member:
        unit, column = self.unit, self.unit.fmt.label_column or "label"
        path = str(row["path"])
        absolute = "://" in path or path.startswith("/")
        base = posixpath.dirname(unit.uri)
        uri = path if absolute else posixpath.join(base, path)
        label = row.get(column)
        try:
            name = label_name(label if label != "" else None, unit.fmt.label_names)
            error = None
        except ValueError as e:
            name, error = None, e
        return Member(path, uri, name, row.get("split") or None, error)


class _Counting(io.RawIOBase):
    """A file that counts the bytes read through it into its reader."""

    def __init__(self, raw, reader: Reader):
        self.raw, self.reader = raw, reader
        self.failed: Exception | None = None  # an error from storage, not from the bytes

    def _storage(self, call, *args):
        try:
            return call(*args)
        except Exception as e:
            self.failed = e
            raise

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self.raw.seekable()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._storage(self.raw.seek, offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def read(self, size: int = -1) -> bytes:
        data = self._storage(self.raw.read, size)
        self.reader.bytes_read += len(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        data = self._storage(self.raw.readline, size)
        self.reader.bytes_read += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def split_member(source: str) -> tuple[str, str] | None:
    """``(shard, member)`` of a shard member's source (``<shard>#<member>``), else ``None``."""
    shard, sep, member = source.rpartition("#")
    kind = posixpath.splitext(shard.lower())[1]
    return (shard, member) if sep and kind in (".tar", ".parquet") else None


def member_bytes(source: str) -> bytes | Exception:
    """One shard member's bytes, its shard read up to it (for looking at one image; passes
    read whole units)."""
    shard, member = split_member(source)
    kind = "webdataset" if shard.lower().endswith(".tar") else "parquet"
    image_column = member.partition("@")[2] or "image"
    unit = Unit(posixpath.basename(shard), kind, shard, fmt=ShardFormat(image_column))
    for found in Reader(unit).members():
        if found.source == source:
            return found.data
    return OSError(f"{member!r} is not in shard {shard}")


def split_key(name: str) -> tuple[str | None, str]:
    """WebDataset's convention: the key is the path up to the first dot of the file name."""
    directory, base = posixpath.split(name)
    if base.startswith(".") or "." not in base:
        return None, ""
    stem, ext = base.split(".", 1)
    return posixpath.join(directory, stem), ext.lower()


def tar_label(sample: dict, column: str | None):
    """A tar sample's label: its ``.cls`` file, else its ``.json`` file's ``label`` (or
    ``column``), else the file of extension ``column``."""
    if column in (None, "cls") and "cls" in sample:
        return sample["cls"].decode().strip()
    if "json" in sample:
        return json.loads(sample["json"]).get(column or "label")
    if column and column in sample:
        return sample[column].decode().strip()
    return None


def _image_bytes(value) -> bytes | Exception:
    if isinstance(value, dict):  # datasets' Image feature: {bytes, path}
        value = value.get("bytes")
    if not value:
        return OSError("the shard row holds no image bytes")
    return bytes(value)
