"""What a job reads, planned as units of work: the driver holds units, never one row per image.

A :class:`Unit` is a shard (a WebDataset tar, a Parquet file of encoded images), a range of a
manifest's rows, or a group of files of one folder. It is the unit of planning, of resume and
of parts: the task that reads a unit enumerates its members in the same sequential read that
decodes them (:mod:`pipeline.data.shards`), and a unit's parts and completion marker are named
by its :attr:`Unit.digest`. A :class:`DataPlan` is the list of units, the class names (``None``
when the shards carry labels without names: they are found while reading and merged when the
output is finalized, in sorted order), the splits and a fingerprint of it all.

An image's id is a hash of its URI (``<shard>#<member>`` for a shard's member); its split comes
from its source (``split:``, a manifest's ``split`` column, a shard's file name) or, when none
is given, from a hash of its key (its path relative to the source root; ``<shard>#<member>``
for a shard member), so a split survives copying the data elsewhere.

Example:

    >>> from pipeline.data.plan import Unit, hash_split
    >>> unit = Unit("train-0.tar", "webdataset", "s3://bucket/train-0.tar", split="train")
    >>> len(unit.digest), hash_split("cat/1.jpg", {"train": 0.8, "val": 0.2})
    (16, 'train')
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

from pipeline.settings import MAX_IMAGE_PIXELS

UnitKind = Literal["files", "webdataset", "parquet", "csv", "table"]
SHARD_SPLITS = {"train": "train", "validation": "val", "valid": "val", "val": "val", "test": "test"}


@dataclass(frozen=True)
class ShardFormat:
    """How a source's shards or manifest rows are read: which column (or tar extension / JSON
    field) holds the image and the label, and the class names when labels are indexes."""

    image_column: str = "image"
    label_column: str | None = None  # default: "label" (Parquet, manifests), "cls" then json
    label_names: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.label_names is not None:
            object.__setattr__(self, "label_names", tuple(self.label_names))


@dataclass(frozen=True)
class Unit:
    """One unit of work. ``key``: its path relative to its source root (a file group: its first
    file's); ``uri``: the shard or manifest it reads (a file group: the source root); ``split``:
    every member's split when the source or the shard's name gives one; ``files``: a file
    group's ``(key, uri, class name)`` per file; ``rows``: a manifest range (byte offsets of a
    CSV, row numbers of a Parquet manifest)."""

    key: str
    kind: UnitKind
    uri: str
    split: str | None = None
    fmt: ShardFormat = field(default_factory=ShardFormat)
    files: tuple[tuple[str, str, str | None], ...] = ()
    rows: tuple[int, int] = (0, 0)

    @property
    def digest(self) -> str:
        """What names the unit's parts and completion marker: the same unit, the same name (a
        file group by every file it holds, so regrouping never matches an old marker)."""
        files = "\n".join(key for key, _, _ in self.files)
        text = f"{self.kind}|{self.uri}|{self.key}|{self.rows[0]}-{self.rows[1]}|{files}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        """The unit as a string: how it travels as a row of a pass (no pickle)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Unit:
        data = json.loads(text)
        fmt = data["fmt"]
        names = fmt["label_names"]
        return cls(
            data["key"],
            data["kind"],
            data["uri"],
            data["split"],
            ShardFormat(fmt["image_column"], fmt["label_column"], names),
            tuple(tuple(f) for f in data["files"]),
            tuple(data["rows"]),
        )

    @property
    def size(self) -> int | None:
        """Members, when known without reading the unit (a file group's files)."""
        return len(self.files) if self.kind == "files" else None


@dataclass
class DataPlan:
    """The units a job reads, the class names (``None``: found while reading), a fingerprint of
    the data (what the feature-set cache is keyed on), the ratios that split members whose
    source gives no split, the largest image any pass decodes, the splits read (``None``: all;
    members of other splits are skipped unread), and, when the listing saw every member, the
    images and unlabeled images per split."""

    units: list[Unit]
    classes: list[str] | None
    fingerprint: str
    splits: dict[str, float]
    max_pixels: int = MAX_IMAGE_PIXELS
    used: tuple[str, ...] | None = None
    counts: dict[str, int] | None = None
    unlabeled_counts: dict[str, int] | None = None

    def count(self, split: str) -> int | None:
        """Images in ``split``, or ``None`` when only reading the shards can tell."""
        return None if self.counts is None else self.counts.get(split, 0)

    def unlabeled(self, split: str) -> int | None:
        """Images in ``split`` without a label, or ``None`` when only reading can tell."""
        return None if self.unlabeled_counts is None else self.unlabeled_counts.get(split, 0)

    def only(self, splits: list[str]) -> DataPlan:
        """The same units with members of other splits skipped (never decoded). When no member
        falls outside ``splits`` (as far as the listing knows), the plan is returned as it is,
        so its feature sets are the ones a job reading everything makes."""
        present = set(self.counts) if self.counts is not None else set(self.splits)
        if present <= set(splits):
            return self
        digest = hashlib.sha256(f"{self.fingerprint}{sorted(splits)}".encode()).hexdigest()

        def kept(counts: dict[str, int] | None) -> dict[str, int] | None:
            return None if counts is None else {k: v for k, v in counts.items() if k in splits}

        return replace(
            self,
            fingerprint=digest,
            used=tuple(splits),
            counts=kept(self.counts),
            unlabeled_counts=kept(self.unlabeled_counts),
        )

    def reads(self, split: str) -> bool:
        """Whether members of ``split`` are read at all."""
        return self.used is None or split in self.used


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


def shard_split(shard: str) -> str | None:
    """The split a shard's file name gives, as ``datasets`` names them (``train-00000-of-00004
    .parquet``; ``validation`` becomes ``val``, the split training validates on), else none."""
    name = posixpath.basename(shard).lower()
    return next((v for k, v in SHARD_SPLITS.items() if name.startswith((f"{k}-", f"{k}."))), None)


def class_order(names) -> list[str]:
    """Class names in index order: integer labels in numeric order ("2" before "10"), names as
    text."""
    names = set(names)
    return sorted(names, key=int) if all(n.isdigit() for n in names) else sorted(names)


def label_name(value, names: tuple[str, ...] | list[str] | None) -> str | None:
    """A label as its class name: an index into ``names`` when there are names, else as is."""
    if value is None:
        return None
    if names is not None and (isinstance(value, int) or str(value).isdigit()):
        if int(value) >= len(names):
            raise ValueError(f"label {value} has no name among the {len(names)} class names")
        return names[int(value)]
    return str(value)
