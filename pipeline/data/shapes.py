"""A generated, seeded image dataset: coloured shapes and textures in a folder per class, or
in WebDataset tars.

The demo's default data and the tests' images: five classes (circle, cross, square, stripes,
triangle) that need shape, not colour, to tell apart; byte-identical on every run.

Example:

    >>> from pipeline.data.shapes import generate_shapes
    >>> generate_shapes("/tmp/shapes-doc", per_class=2, size=32)
    ['circle', 'cross', 'square', 'stripes', 'triangle']
    >>> generate_shards("/tmp/shards-doc", 25, per_shard=10)
    3
"""

from __future__ import annotations

import io
import math
import random
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "cross", "square", "stripes", "triangle")


def generate_shapes(
    root: str | Path, per_class: int = 40, size: int = 96, seed: int = 0, clutter: int = 0
) -> list[str]:
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


def generate_shards(root: str | Path, n: int, per_shard: int = 1000, size: int = 16) -> int:
    """``n`` images as WebDataset tars ``shard-NNNNNN.tar`` of ``per_shard`` samples under
    ``root`` (``<key>.png``, and ``<key>.cls`` holding the class's index in :data:`SHAPES`);
    returns the number of shards. Members cycle through 20 drawings (4 a class), so a million
    are written in minutes; a ``.complete`` marker keeps finished tars between calls."""
    root, shards = Path(root), -(-n // per_shard)
    marker = root / ".complete"
    if marker.exists() and marker.read_text() == f"{n} {per_shard} {size}":
        return shards
    root.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)  # an interrupted rewrite is never taken for a finished one
    for old in root.glob("shard-*.tar"):  # a larger set's shards would still be read
        old.unlink()
    rng = random.Random(0)
    drawings = [
        (_encoded_png(_draw(name, size, rng)), i) for i, name in enumerate(SHAPES) for _ in "1234"
    ]
    for s in range(shards):
        with tarfile.open(root / f"shard-{s:06d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(s * per_shard, min(n, (s + 1) * per_shard)):
                data, label = drawings[i % len(drawings)]
                _add(tar, f"{i:09d}.png", data)
                _add(tar, f"{i:09d}.cls", str(label).encode())
    marker.write_text(f"{n} {per_shard} {size}")
    return shards


def _encoded_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), 0
    tar.addfile(info, io.BytesIO(data))


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
        draw.polygon(
            [
                (
                    cx + r * math.cos(angle + 2 * math.pi * k / corners),
                    cy + r * math.sin(angle + 2 * math.pi * k / corners),
                )
                for k in range(corners)
            ],
            fill=fg,
        )
    elif name == "cross":
        w = r * 0.35
        for a in (angle, angle + math.pi / 2):
            dx, dy, px, py = r * math.cos(a), r * math.sin(a), w * -math.sin(a), w * math.cos(a)
            draw.polygon(
                [
                    (cx - dx - px, cy - dy - py),
                    (cx + dx - px, cy + dy - py),
                    (cx + dx + px, cy + dy + py),
                    (cx - dx + px, cy - dy + py),
                ],
                fill=fg,
            )
    else:  # stripes: a texture class, over a patch of the image when cluttered
        period = rng.uniform(0.08, 0.2) * size
        layer = Image.new("L", (size, size), 0)
        strokes = ImageDraw.Draw(layer)
        for k in range(-size, 2 * size, int(period)):
            strokes.line(
                [(k, 0), (k + size * math.tan(angle % 1.2 - 0.6), size)],
                fill=255,
                width=max(1, int(period / 2)),
            )
        if clutter:
            outside = Image.new("L", (size, size), 255)
            ImageDraw.Draw(outside).rectangle(
                [cx - 1.6 * r, cy - 1.6 * r, cx + 1.6 * r, cy + 1.6 * r], fill=0
            )
            layer.paste(0, mask=outside)
        image.paste(fg, mask=layer)
    if clutter:  # a few distractors may cover the object
        _clutter(draw, size, rng, rng.randint(0, max(1, clutter // 4)), fg)
    # Noise from the seeded generator (PIL's effect_noise has its own, unseeded one).
    noise = Image.frombytes("L", (size, size), rng.randbytes(size * size)).convert("RGB")
    amount = rng.uniform(0.1, 0.3) if clutter else rng.uniform(0.05, 0.2)
    blurred = Image.blend(image, noise, amount)
    return blurred.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1)))


def _clutter(
    draw: ImageDraw.ImageDraw, size: int, rng: random.Random, count: int, fg: tuple[int, int, int]
) -> None:
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
            draw.line(
                [(x, y), (x + 3 * r * math.cos(a), y + 3 * r * math.sin(a))],
                fill=colour,
                width=max(1, int(size / 48)),
            )
