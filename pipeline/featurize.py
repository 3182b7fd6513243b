"""Featurize at scale: list -> decode (task pool) -> frozen prefix (actor pool) -> Parquet.

One pass computes the frontier of every requested cut and writes one feature set per cut (see
:mod:`pipeline.featureset`). A feature set that already exists is a cache hit; an unfinished one is
completed, reusing what was written. The three stages are plain functions and a callable class,
testable without Ray; :func:`featurize` wires them into a Ray Data pipeline.

Example::

    >>> import ray
    >>> from pipeline import sources
    >>> from pipeline.featurize import FeaturizeConfig, featurize
    >>> from pipeline.surgery import TransferLearning
    >>> net = TransferLearning("tiny:cnn").set_feature_extractor("pool").build()
    >>> items = sources.list_items(sources.DataConfig(sources=["/tmp/shapes"]))
    >>> result = featurize(net, items, FeaturizeConfig(out="/tmp/features"))  # doctest: +SKIP
    >>> features, labels = result.feature_sets[0].tensors(split="train")       # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import fsspec
import numpy as np
import pyarrow as pa
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline import featureset as fset
from pipeline.featureset import ID, LABEL, SOURCE, SPLIT, VIEW, FeatureSet
from pipeline.sources import Items
from pipeline.surgery import SurgeryError, TransferLearning, TransferNet, from_files
from pipeline.zoo import Preprocess

ERROR = "error"  # in-flight column: why a row's image could not be read ("" when it could)
IMAGE = "image"  # in-flight column: the uint8 crop; dropped by the model stage


class AugmentConfig(BaseModel):
    """Augmented views (random resized crop, flip), seeded by (image id, view, seed)."""

    model_config = ConfigDict(extra="forbid")
    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    splits: list[str] = ["train"]
    seed: int = 0


class StageConfig(BaseModel):
    """How the decode -> model -> write stages run on Ray Data (featurize and predict)."""

    model_config = ConfigDict(extra="forbid")
    out: str = Field("runs/features", description="where the output directories go")
    batch_size: int = Field(64, gt=0, description="images per model call")
    actors: int = Field(1, gt=0, description="model actors (one per GPU on a GPU cluster)")
    actor_cpus: float = Field(0.5, gt=0, description="fractional, so decoders keep running")
    actor_gpus: float = Field(0, ge=0)
    torch_threads: int | None = Field(None, description="per actor; default: the node's cores "
                                                        "divided by actors")
    decode_cpus: float = Field(0.25, gt=0, description="per decode task; must differ from "
                                                       "actor_cpus on CPU-only actors")
    write_cpus: float = Field(0.25, gt=0)
    channels_last: bool = True
    max_image_pixels: int = Field(89_478_485, gt=0, description="larger images are rejected "
                                                                "as decompression bombs")

    @model_validator(mode="after")
    def _separate_stages(self):
        # Ray Data fuses a task stage into the next actor stage when their resources are equal;
        # decoding would then run inside the model actors, in series with the forward pass.
        if self.decode_cpus == self.actor_cpus and not self.actor_gpus:
            raise ValueError(f"decode_cpus and actor_cpus are both {self.decode_cpus}: make them "
                             "differ (e.g. decode_cpus=0.25, actor_cpus=0.5) so decoding stays a "
                             "separate stage that overlaps the model")
        return self


class FeaturizeConfig(StageConfig):
    """How featurization runs and what it stores."""

    out: str = Field("runs/features", description="root under which feature sets are cached")
    dtype: Literal["float16", "float32"] = "float16"
    views: int = Field(0, ge=0, description="augmented views per image of augment.splits, "
                                            "beside the plain view 0")
    augment: AugmentConfig = AugmentConfig()
    preprocess: Preprocess | None = Field(None, description="override the network's own")


# ---------------------------------------------------------------------------- stage 1: decode

class BadImage(ValueError):
    """An input that is not a readable image; the reason goes to ``_errors.parquet``."""


def read_image(source: str, max_pixels: int) -> Image.Image:
    """Read and decode one image as RGB, upright per its EXIF orientation."""
    with fsspec.open(source, "rb") as f:
        data = f.read()
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImage("not an image: no decoder recognizes its content") from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"decompression bomb: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:  # what PIL raises for damaged headers
        raise BadImage(f"truncated or corrupt: {e}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise BadImage(f"decompression bomb: {width}x{height} = {width * height} pixels exceeds "
                       f"max_image_pixels={max_pixels} (raise it to accept such images)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked above
            image.load()
        return ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:  # ... and for damaged image data
        raise BadImage(f"truncated or corrupt: {e}") from None


def view_seed(item_id: str, view: int, seed: int) -> int:
    """A seed per (item, view or epoch, seed): the same crop on every run and worker."""
    return int.from_bytes(hashlib.sha256(f"{item_id}:{view}:{seed}".encode()).digest()[:7], "big")


def augmentation(crop: int, cfg: AugmentConfig):
    from torchvision.transforms import v2

    steps = [v2.ToImage(), v2.RandomResizedCrop(crop, scale=cfg.scale, ratio=cfg.ratio,
                                                antialias=True)]
    return v2.Compose(steps + ([v2.RandomHorizontalFlip()] if cfg.flip else []))


def decode_batch(batch: dict, *, preprocess: Preprocess, views: int, augment: AugmentConfig,
                 max_pixels: int) -> dict[str, np.ndarray]:
    """Items -> rows with a uint8 ``image`` (3, crop, crop): view 0 is the network's own resize
    and crop; views 1..K (for ``augment.splits``) are seeded random crops. An unreadable item
    becomes one row with ``error`` set and a blank image, so the rest of its block carries on."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    plain, augmented = preprocess.resize_crop(), augmentation(preprocess.crop_size, augment)
    blank = np.zeros((3, preprocess.crop_size, preprocess.crop_size), np.uint8)
    rows: dict[str, list] = {k: [] for k in (ID, SOURCE, LABEL, SPLIT, VIEW, ERROR, IMAGE)}

    def add(item, view, error, image):
        for key, value in zip((ID, SOURCE, LABEL, SPLIT), item):
            rows[key].append(value)
        rows[VIEW].append(view)
        rows[ERROR].append(error)
        rows[IMAGE].append(image)

    for item in zip(*(list(batch[k]) for k in (ID, SOURCE, LABEL, SPLIT))):
        try:
            image = read_image(item[1], max_pixels)
        except (BadImage, OSError) as e:  # OSError: the storage could not give the bytes
            add(item, 0, str(e) or type(e).__name__, blank)
            continue
        add(item, 0, "", plain(image).numpy())
        for view in range(1, 1 + (views if item[3] in augment.splits else 0)):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(view_seed(item[0], view, augment.seed))
                add(item, view, "", augmented(image).numpy())
    out = {k: np.array(v, dtype=object) for k, v in rows.items() if k in (ID, SOURCE, SPLIT, ERROR)}
    out[LABEL] = np.array(rows[LABEL], np.int32)
    out[VIEW] = np.array(rows[VIEW], np.int16)
    out[IMAGE] = np.stack(rows[IMAGE]) if rows[IMAGE] else np.zeros((0, *blank.shape), np.uint8)
    return out


# ---------------------------------------------------------------------------- stage 2: prefix

class PrefixModel:
    """The frozen prefix in an actor: built once from the network's files (safetensors, no
    pickle), then uint8 images -> frontier tensors per batch."""

    def __init__(self, files: dict[str, bytes], shapes: dict[str, tuple[int, ...]],
                 preprocess: Preprocess, dtype: str = "float32", device: str | None = None, threads: int | None = None,
                 channels_last: bool = True):
        if threads:
            torch.set_num_threads(threads)  # Ray sets OMP_NUM_THREADS=1 for fractional CPUs
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.shapes, self.dtype = {k: tuple(v) for k, v in shapes.items()}, np.dtype(dtype)
        self.channels_last = channels_last and self.device.type in ("cpu", "cuda")
        model = self.build(from_files(files)).to(self.device)
        self.model = model.to(memory_format=torch.channels_last) if self.channels_last else model
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(preprocess.mean, device=self.device).view(shape) * 255
        self.std = torch.tensor(preprocess.std, device=self.device).view(shape) * 255

    def build(self, net: TransferNet) -> torch.nn.Module:
        """What the actor runs: the frozen prefix up to the requested nodes."""
        return net.prefix(list(self.shapes))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = batch.pop(IMAGE)
        ok = batch[ERROR] == ""
        out = {name: np.zeros((len(ok), *shape), self.dtype) for name, shape in self.shapes.items()}
        if ok.any():
            for name, value in self.forward(torch.from_numpy(images[ok])).items():
                out[name][ok] = value.float().cpu().numpy()
        batch.update(out)
        return batch

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """uint8 (n, 3, h, w) -> {node: features}; fp16 autocast only on a GPU (CPUs without
        half-precision units run it hundreds of times slower)."""
        x = images.to(self.device, non_blocking=True).float().sub_(self.mean).div_(self.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cuda", torch.float16,
                                                    enabled=self.device.type == "cuda"):
            return self.model(x)


# ---------------------------------------------------------------------------- stage 3: write

def write_batch(batch: dict[str, np.ndarray], *, targets: list[tuple[str, dict]],
                dtype: str) -> dict[str, np.ndarray]:
    """Write one part per feature set (named by its rows, atomically) and the batch's rejected
    items to each set's ``_errors/``; return counts for the driver's progress line."""
    ok = batch[ERROR] == ""
    meta = {k: batch[k] for k in (ID, SOURCE, LABEL, SPLIT, VIEW)}
    for uri, shapes in targets:
        fs, root = fsspec.core.url_to_fs(uri)
        if ok.any():
            table = fset.to_table({k: v[ok] for k, v in meta.items()},
                                  {name: batch[name][ok] for name in shapes},
                                  fset.feature_schema(shapes, dtype))
            fset.write_atomic(fs, f"{root}/{fset.part_name(fset.row_keys(table))}", table)
        write_errors(uri, batch)
    return counts(batch)


def write_errors(uri: str, batch: dict[str, np.ndarray]) -> None:
    """Record the batch's unreadable items under ``uri/_errors/`` (merged by finalize)."""
    bad = batch[ERROR] != ""
    if not bad.any():
        return
    fs, root = fsspec.core.url_to_fs(uri)
    errors = pa.table({**{k: batch[k][bad] for k in (ID, SOURCE, LABEL, SPLIT)},
                       fset.REASON: batch[ERROR][bad]}, schema=fset.ERROR_SCHEMA)
    fs.makedirs(f"{root}/{fset.ERROR_PARTS}", exist_ok=True)
    fset.write_atomic(fs, f"{root}/{fset.ERROR_PARTS}/{fset.part_name(batch[ID][bad])}", errors)


def counts(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A write stage's output: images done and errors, for the driver's progress line."""
    ok = batch[ERROR] == ""
    return {"images": np.array([int((ok & (batch[VIEW] == 0)).sum())]),
            "errors": np.array([int((~ok).sum())])}


# ---------------------------------------------------------------------------- the driver

@dataclass
class Target:
    """One feature set to produce: a cut, the network frozen at it, and where it goes."""

    cut: list[str]
    net: TransferNet
    identity: dict
    uri: str

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self.net.frontier_shapes()


@dataclass
class FeaturizeResult:
    feature_sets: list[FeatureSet]
    images: int = 0
    errors: int = 0
    seconds: float = 0.0
    cached: list[str] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        uris = ", ".join(fs.uri for fs in self.feature_sets)
        if self.images == 0 and len(self.cached) == len(self.feature_sets):
            return f"cache hit: {uris} already complete; nothing computed"
        return (f"featurized {self.images} images, {self.errors} errors, "
                f"{self.images_per_s:.1f} images/s -> {uris}")


def plan(net: TransferNet, items: Items, cfg: FeaturizeConfig,
         cuts: list[str | list[str]] | None = None) -> list[Target]:
    """The feature sets to produce: the net's own frozen set, or one per cut in ``cuts`` (each
    a node name or list of names to freeze through), each named by its fingerprint."""
    preprocess = _preprocess(net, cfg)
    variants = ([(net.frontier(), net)] if not cuts else
                [(c, TransferLearning(net).set_feature_extractor(*c).build())
                 for c in ([c] if isinstance(c, str) else list(c) for c in cuts)])
    base = net.spec.get("base") or {}
    targets = []
    for cut, variant in variants:
        if not variant.frozen:
            raise SurgeryError("nothing is frozen: call set_feature_extractor(...) or give cuts")
        identity = {
            "format": fset.FORMAT, "model": base.get("model"), "model_kwargs": base.get("kwargs"),
            "weights_sha256": net.spec.get("weights_sha256"), "cut": cut,
            "frozen": sorted(variant.frozen), "prefix_sha256": variant.prefix_sha256(),
            "frontier": {k: list(v) for k, v in variant.frontier_shapes().items()},
            "preprocess": preprocess.model_dump(), "dtype": cfg.dtype, "views": cfg.views,
            "augment": cfg.augment.model_dump() if cfg.views else None, "data": items.fingerprint}
        # the cut's name is kept for people, not hashed: "features.16" and "features.16.add"
        # freeze the same nodes, and the frozen set, frontier and prefix hash say so
        digest = fset.fingerprint({k: v for k, v in identity.items() if k != "cut"})
        name = fset.directory_name(str(base.get("model", "net")), variant.frontier(), digest)
        targets.append(Target(cut, variant, dict(identity, fingerprint=digest),
                              f"{cfg.out.rstrip('/')}/{name}"))
    return targets


def featurize(net: TransferNet, items: Items, cfg: FeaturizeConfig,
              cuts: list[str | list[str]] | None = None,
              progress: Callable[[str], None] | None = print) -> FeaturizeResult:
    """Run ``net``'s frozen prefix (or each cut's) over ``items`` once; return the feature sets.

    Needs a running Ray (the caller's ``ray.init``). Complete feature sets are reused; unfinished
    ones are completed without redoing finished rows."""
    targets = plan(net, items, cfg, cuts)
    done = {t.uri: _open_complete(t.uri) for t in targets}
    pending = [t for t in targets if done[t.uri] is None]
    cached = [t.uri for t in targets if done[t.uri] is not None]
    for uri in cached:
        _say(progress, f"cache hit: {uri} is complete; reusing it")
    result = FeaturizeResult([], cached=cached)
    if pending:
        expected = _expected_views(items, cfg)
        remaining = _remaining(items, pending, expected)
        start = time.perf_counter()
        if remaining.num_rows:
            result.images, result.errors = _run(net, pending, remaining, cfg, progress)
        result.seconds = time.perf_counter() - start
        for t in pending:
            manifest = _manifest(t, items, cfg, net)
            done[t.uri] = fset.finalize(t.uri, manifest, expected)
    result.feature_sets = [done[t.uri] for t in targets]
    _say(progress, result.summary())
    return result


def _say(progress, line: str) -> None:
    if progress is not None:
        progress(line)


def _preprocess(net: TransferNet, cfg: FeaturizeConfig) -> Preprocess:
    if cfg.preprocess is not None:
        return cfg.preprocess
    if not net.spec.get("preprocess"):
        raise ValueError("the network has no preprocessing (resize, crop, mean, std): set "
                         "featurize.preprocess in the config")
    return Preprocess(**net.spec["preprocess"])


def _open_complete(uri: str) -> FeatureSet | None:
    try:
        return FeatureSet.open(uri)
    except fset.FeatureSetError:
        return None


def _expected_views(items: Items, cfg: FeaturizeConfig) -> dict[str, int]:
    ids, splits = items.table.column(ID).to_pylist(), items.table.column(SPLIT).to_pylist()
    return {i: 1 + (cfg.views if s in cfg.augment.splits else 0) for i, s in zip(ids, splits)}


def _remaining(items: Items, pending: list[Target], expected: dict[str, int]):
    """Items some pending feature set still lacks (every view of it, or its error record)."""
    done = None
    for t in pending:
        finished = fset.scan(t.uri).done_items(expected)
        done = finished if done is None else done & finished
    mask = [i not in done for i in items.table.column(ID).to_pylist()]
    return items.table.filter(pa.array(mask, pa.bool_()))


def _run(net, pending, remaining, cfg, progress) -> tuple[int, int]:
    union = (TransferLearning(net).set_feature_extractor(*{c for t in pending for c in t.cut})
             .build()) if any(t.net is not net for t in pending) else net
    shapes = {name: shape for t in pending for name, shape in t.shapes.items()}
    for t in pending:
        fs, root = fsspec.core.url_to_fs(t.uri)
        fs.makedirs(root, exist_ok=True)
    preprocess = _preprocess(net, cfg)
    return run_stages(
        remaining, cfg, preprocess, views=cfg.views, augment=cfg.augment,
        model=PrefixModel, model_kwargs=dict(
            files=union.to_files(), shapes=shapes, preprocess=preprocess, dtype=cfg.dtype,
            device="cuda" if cfg.actor_gpus else "cpu", threads=actor_threads(cfg),
            channels_last=cfg.channels_last),
        write=write_batch, write_kwargs=dict(targets=[(t.uri, t.shapes) for t in pending],
                                             dtype=cfg.dtype),
        progress=progress, label="featurize")


def run_stages(remaining: pa.Table, cfg: StageConfig, preprocess: Preprocess, *, views: int,
               augment: AugmentConfig, model: type, model_kwargs: dict, write: Callable,
               write_kwargs: dict, progress, label: str) -> tuple[int, int]:
    """items -> ``decode_batch`` tasks -> ``model`` actors -> ``write`` tasks, on Ray Data;
    returns (images, errors) as the write stage counted them."""
    import ray.data

    block = max(1, cfg.batch_size // (1 + views))
    blocks = [remaining.slice(i, block) for i in range(0, remaining.num_rows, block)]
    ds = (ray.data.from_arrow(blocks)
          .map_batches(decode_batch, batch_size=None, batch_format="numpy",
                       num_cpus=cfg.decode_cpus,
                       fn_kwargs=dict(preprocess=preprocess, views=views, augment=augment,
                                      max_pixels=cfg.max_image_pixels))
          .map_batches(model, batch_size=cfg.batch_size, batch_format="numpy",
                       compute=ray.data.ActorPoolStrategy(size=cfg.actors),
                       num_cpus=cfg.actor_cpus, num_gpus=cfg.actor_gpus,
                       fn_constructor_kwargs=model_kwargs)
          .map_batches(write, batch_size=None, batch_format="numpy", num_cpus=cfg.write_cpus,
                       fn_kwargs=write_kwargs))
    total, images, errors, start, last = remaining.num_rows, 0, 0, time.perf_counter(), 0.0
    for done in ds.iter_batches(batch_size=None, batch_format="numpy"):
        images, errors = images + int(done["images"].sum()), errors + int(done["errors"].sum())
        now = time.perf_counter()
        if progress is not None and (now - last > 5 or images + errors == total):
            last = now
            rate = images / (now - start)
            end = "\r" if sys.stdout.isatty() and images + errors < total else "\n"
            print(f"{label}: {images + errors}/{total} images ({errors} errors), "
                  f"{rate:.1f} images/s", end=end, flush=True)
    return images, errors


def actor_threads(cfg: StageConfig) -> int:
    """torch threads per model actor: the configured number, else the cores split evenly."""
    if cfg.torch_threads:
        return cfg.torch_threads
    return max(1, len(os.sched_getaffinity(0)) // cfg.actors)


def _manifest(t: Target, items: Items, cfg: FeaturizeConfig, net: TransferNet) -> dict:
    import pyarrow
    import ray
    import torchvision

    return dict(t.identity, uri=t.uri, classes=items.classes, weights=net.spec.get("weights"),
                config=cfg.model_dump(mode="json"),
                versions={"torch": torch.__version__, "torchvision": torchvision.__version__,
                          "ray": ray.__version__, "pyarrow": pyarrow.__version__})
