"""Where the images are: sources (folders, manifests, shards), how items without a split are
split, and the augmented views drawn from them.

Example:

    >>> from pipeline.settings import DataConfig
    >>> DataConfig(sources=["images/", {"uri": "val/", "split": "val"}]).sources[1].split
    'val'
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline.settings.base import MAX_IMAGE_PIXELS, Settings


class SourceConfig(Settings):
    """One source of images: a folder (a folder per class, or just images: unlabeled), a
    manifest (``.csv``/``.parquet`` with ``path``, optionally a label and ``split``; relative
    paths are relative to the manifest), or shards: Parquet files of encoded images (the
    Hugging Face ``datasets`` layout) or WebDataset ``.tar`` files, as one file, a folder of
    them or a glob."""

    uri: str
    split: str | None = Field(None, description="put every item of this source in this split")
    format: Literal["folder", "manifest", "parquet", "webdataset"] | None = Field(
        None,
        description="default: inferred: .csv a manifest, .tar WebDataset, .parquet a manifest "
        "when it has a path column and no image column, else Parquet shards; a folder holding "
        "only .tar (or .parquet) files, shards; any other folder, images",
    )
    image_column: str = Field(
        "image", description="Parquet shards: the image column (struct {bytes, path} or binary)"
    )
    label_column: str | None = Field(
        None,
        description="default: 'label' (Parquet shards, manifests); WebDataset: the .cls file, "
        "else the .json file's 'label'. Absent from the data: the images are unlabeled",
    )
    label_names: list[str] | None = Field(
        None,
        description="class names when labels are indexes; default: a datasets Parquet file's "
        "own (schema metadata), else the labels as they are",
    )


class DataConfig(Settings):
    """Where the images are and how items without a split are split."""

    sources: list[SourceConfig]
    splits: dict[str, float] = Field(
        default_factory=lambda: {"train": 0.8, "val": 0.2},
        description="ratios for items whose source gives no split",
    )
    files_per_unit: int = Field(
        1000,
        gt=0,
        description="images per unit of work of a folder or a manifest (a shard is one unit): "
        "a unit is read by one task, written as its own parts and resumed as a whole",
    )
    max_image_pixels: int = Field(
        MAX_IMAGE_PIXELS, gt=0, description="larger images are refused as decompression bombs"
    )
    listing: Literal["auto", "tasks", "local"] = Field(
        "auto",
        description="where a folder's class folders are listed: tasks (a Ray task each), "
        "local (this process), auto (tasks on object stores, local on a mounted disk, where "
        "a scan beats starting tasks: jobs.benchmark listing); shards and manifests are "
        "planned in this process, which lists shards without reading them",
    )

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


class AugmentConfig(Settings):
    """Augmented views (random resized crop, flip), seeded by (image id, view, seed)."""

    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    splits: list[str] = ["train"]
    seed: int = 0
