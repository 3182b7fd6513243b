"""Image sources: a folder per class, and the embedded generated dataset.

Class index = position in the sorted class names, so every source agrees on it.

Example::

    >>> from pipeline import sources
    >>> classes = sources.generate_shapes("/tmp/shapes", per_class=2, size=32)
    >>> sources.folder_items("/tmp/shapes")[2] == classes
    True
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SHAPES = ("circle", "cross", "square", "stripes", "triangle")


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
                    seed: int = 0) -> list[str]:
    """Write a seeded folder-per-class dataset of coloured shapes and textures.

    Five classes (circle, cross, square, stripes, triangle) vary in colour, scale, position,
    rotation, background and noise, so a classifier has to learn shape, not a pixel recipe.
    Regenerating with the same arguments gives byte-identical files.
    """
    root = Path(root)
    rng = random.Random(seed)
    for name in SHAPES:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            _draw(name, size, rng).save(root / name / f"{name}_{i:04d}.png")
    return list(SHAPES)


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randint(0, 255) for _ in range(3))


def _draw(name: str, size: int, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (size, size), _colour(rng))
    draw = ImageDraw.Draw(image)
    fg = _colour(rng)
    r = size * rng.uniform(0.18, 0.38)
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
    else:  # stripes: a texture class
        period = rng.uniform(0.08, 0.2) * size
        for k in range(-size, 2 * size, int(period)):
            draw.line([(k, 0), (k + size * math.tan(angle % 1.2 - 0.6), size)], fill=fg,
                      width=max(1, int(period / 2)))
    # Noise from the seeded generator (PIL's effect_noise has its own, unseeded one).
    noise = Image.frombytes("L", (size, size), rng.randbytes(size * size)).convert("RGB")
    blurred = Image.blend(image, noise, rng.uniform(0.05, 0.2))
    return blurred.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1)))
