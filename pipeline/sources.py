"""Image sources: a folder per class, a manifest (CSV or Parquet), the embedded generated set.

Sources are local paths or fsspec URIs (``s3://``, ``gs://``, ``memory://``...). Class index =
position in the sorted class names, so every source agrees on it. An item's split comes from its
source (``split:`` in config, or a manifest's ``split`` column) or, when none is given, from a hash
of its key (the path relative to its source root), so a split survives copying the dataset.

Example::

    >>> from pipeline import sources
    >>> classes = sources.generate_shapes("/tmp/shapes", per_class=2, size=32)
    >>> items = sources.list_items(sources.DataConfig(sources=["/tmp/shapes"]))
    >>> items.classes == classes, items.table.num_rows
    (True, 10)
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import posixpath
import random
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFilter
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.featureset import ID, ITEM_SCHEMA, LABEL, SOURCE, SPLIT

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SHAPES = ("circle", "cross", "square", "stripes", "triangle")
MANIFEST_SUFFIXES = (".csv", ".parquet")


class SourceConfig(BaseModel):
    """One source: a folder-per-class root, or a manifest file (``.csv``/``.parquet`` with
    ``path``, ``label`` and optionally ``split``; relative paths are relative to the manifest)."""

    model_config = ConfigDict(extra="forbid")
    uri: str
    split: str | None = Field(None, description="put every item of this source in this split")


class DataConfig(BaseModel):
    """Where the images are and how items without a split are split."""

    model_config = ConfigDict(extra="forbid")
    sources: list[SourceConfig]
    splits: dict[str, float] = Field(default_factory=lambda: {"train": 0.8, "val": 0.2},
                                     description="ratios for items whose source gives no split")

    @field_validator("sources", mode="before")
    @classmethod
    def _plain_uris(cls, value):
        return [{"uri": str(v)} if isinstance(v, (str, Path)) else v for v in value]

    @model_validator(mode="after")
    def _check(self):
        if not self.sources:
            raise ValueError("data.sources is empty: give at least one folder or manifest")
        if abs(sum(self.splits.values()) - 1) > 1e-6 or min(self.splits.values()) < 0:
            raise ValueError(f"data.splits {self.splits} must be non-negative and sum to 1")
        return self


@dataclass
class Items:
    """What the sources list: one row per image (id, source, label, split), the class names,
    and a fingerprint of it all (for the feature-set cache)."""

    table: pa.Table
    classes: list[str]
    fingerprint: str


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
        listed, stamp = (_manifest_rows(src.uri) if src.uri.lower().endswith(MANIFEST_SUFFIXES)
                         else _folder_rows(src.uri))
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
    table = pa.table({ID: [item_id(u) for u, _, _ in rows], SOURCE: [u for u, _, _ in rows],
                      LABEL: [index[lab] for _, lab, _ in rows], SPLIT: [s for _, _, s in rows]},
                     schema=ITEM_SCHEMA)
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
        raise FileNotFoundError(f"{uri} is not a folder (expected <root>/<class>/<image>) nor a "
                                f"manifest ending in {MANIFEST_SUFFIXES}")
    found, stamp = [], []
    for path, info in sorted(fs.find(root, detail=True).items()):
        key = path[len(root):].lstrip("/")
        parts = key.split("/")
        if len(parts) < 2 or any(p.startswith(".") for p in parts):
            continue
        found.append((key, _uri(fs, path), parts[0], None))
        stamp.append([key, info.get("size"), str(_modified(info))])
    if not found:
        raise FileNotFoundError(f"{uri} has no class folders with files; expected "
                                f"{uri}/<class>/<image>")
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
    table = (pq.read_table(io.BytesIO(data)) if path.lower().endswith(".parquet")
             else pacsv.read_csv(io.BytesIO(data)))
    missing = {"path", "label"} - set(table.column_names)
    if missing:
        raise ValueError(f"manifest {uri} lacks columns {sorted(missing)}; it needs path, label "
                         f"and optionally split (has {table.column_names})")
    base = posixpath.dirname(path)
    splits = table.column("split").to_pylist() if "split" in table.column_names else None
    found = []
    for i, (p, label) in enumerate(zip(table.column("path").to_pylist(),
                                       table.column("label").to_pylist())):
        absolute = "://" in p or p.startswith("/")
        full = p if absolute else _uri(fs, posixpath.join(base, p))
        found.append((p, full, str(label), splits[i] if splits else None))
    return found, hashlib.sha256(data).hexdigest()


def folder_items(root: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """Files under ``root/<class>/`` with an image suffix: (paths, labels, sorted class names)."""
    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise FileNotFoundError(f"{root} has no class folders; expected {root}/<class>/<image>")
    paths, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(path)
                labels.append(label)
    return paths, labels, classes


def generate_shapes(root: str | Path, per_class: int = 40, size: int = 96,
                    seed: int = 0, clutter: int = 0) -> list[str]:
    """Write a seeded folder-per-class dataset of coloured shapes and textures.

    Five classes (circle, cross, square, stripes, triangle) vary in colour, scale, position,
    rotation, background and noise, so a classifier has to learn shape, not a pixel recipe.
    ``clutter`` > 0 makes it a harder task: a textured background of that many random
    distractors (blobs, bars, lines in any colour, some the object's own), a smaller object
    that may be partly covered, and lower contrast. Regenerating with the same arguments gives
    byte-identical files.
    """
    root = Path(root)
    rng = random.Random(seed)
    for name in SHAPES:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            _draw(name, size, rng, clutter).save(root / name / f"{name}_{i:04d}.png")
    return list(SHAPES)


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randint(0, 255) for _ in range(3))


def _draw(name: str, size: int, rng: random.Random, clutter: int = 0) -> Image.Image:
    image = Image.new("RGB", (size, size), _colour(rng))
    draw = ImageDraw.Draw(image)
    fg = _colour(rng)
    if clutter:
        _clutter(draw, size, rng, clutter, fg)
    r = size * (rng.uniform(0.14, 0.3) if clutter else rng.uniform(0.18, 0.38))
    cx, cy = (size / 2 + rng.uniform(-0.5, 0.5) * (size - 2 * r) for _ in range(2))
    angle = rng.uniform(0, 2 * math.pi)
    if name == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif name in ("square", "triangle"):
        corners = 4 if name == "square" else 3
        draw.polygon([(cx + r * math.cos(angle + 2 * math.pi * k / corners),
                       cy + r * math.sin(angle + 2 * math.pi * k / corners))
                      for k in range(corners)], fill=fg)
    elif name == "cross":
        w = r * 0.35
        for a in (angle, angle + math.pi / 2):
            dx, dy, px, py = r * math.cos(a), r * math.sin(a), w * -math.sin(a), w * math.cos(a)
            draw.polygon([(cx - dx - px, cy - dy - py), (cx + dx - px, cy + dy - py),
                          (cx + dx + px, cy + dy + py), (cx - dx + px, cy - dy + py)], fill=fg)
    else:  # stripes: a texture class, over a patch of the image when cluttered
        period = rng.uniform(0.08, 0.2) * size
        layer = Image.new("L", (size, size), 0)
        strokes = ImageDraw.Draw(layer)
        for k in range(-size, 2 * size, int(period)):
            strokes.line([(k, 0), (k + size * math.tan(angle % 1.2 - 0.6), size)], fill=255,
                         width=max(1, int(period / 2)))
        if clutter:
            outside = Image.new("L", (size, size), 255)
            ImageDraw.Draw(outside).rectangle([cx - 1.6 * r, cy - 1.6 * r, cx + 1.6 * r,
                                               cy + 1.6 * r], fill=0)
            layer.paste(0, mask=outside)
        image.paste(fg, mask=layer)
    if clutter:  # a few distractors may cover the object
        _clutter(draw, size, rng, rng.randint(0, max(1, clutter // 4)), fg)
    # Noise from the seeded generator (PIL's effect_noise has its own, unseeded one).
    noise = Image.frombytes("L", (size, size), rng.randbytes(size * size)).convert("RGB")
    amount = rng.uniform(0.1, 0.3) if clutter else rng.uniform(0.05, 0.2)
    blurred = Image.blend(image, noise, amount)
    return blurred.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1)))


def _clutter(draw: ImageDraw.ImageDraw, size: int, rng: random.Random, count: int,
             fg: tuple[int, int, int]) -> None:
    """``count`` small distractors: blobs, bars and lines, now and then in the object's colour
    so colour alone does not find the object."""
    for _ in range(count):
        colour = fg if rng.random() < 0.2 else _colour(rng)
        x, y, r = rng.uniform(0, size), rng.uniform(0, size), size * rng.uniform(0.03, 0.1)
        kind = rng.randrange(3)
        if kind == 0:
            draw.ellipse([x - r, y - r * rng.uniform(0.4, 1), x + r, y + r], fill=colour)
        elif kind == 1:
            draw.rectangle([x - r, y - r / 3, x + r, y + r / 3], fill=colour)
        else:
            a = rng.uniform(0, 2 * math.pi)
            draw.line([(x, y), (x + 3 * r * math.cos(a), y + 3 * r * math.sin(a))], fill=colour,
                      width=max(1, int(size / 48)))
