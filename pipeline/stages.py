"""The Ray Data pass every image job shares: items -> decode tasks -> model actors -> writers.

Featurizing and predicting differ only in the model actor (a callable class: load once in
``__init__``, batch in, batch out) and the writer (a function writing its batch's rows and
rejected items, returning counts); :func:`run_pass` wires them with the decode tasks of
:mod:`pipeline.decode`. The network reaches the actors as a saved directory
(:func:`stage_network`), so nothing large travels as an actor argument and nothing is unpickled.

Example:

    >>> from pipeline.stages import stage_network
    >>> from pipeline.surgery import TransferLearning
    >>> from pipeline.loading import load
    >>> net = TransferLearning("tiny:cnn").set_feature_extractor("pool").build()
    >>> uri = stage_network(net, str(tmp))
    >>> load(uri).frontier(), stage_network(net, str(tmp)) == uri
    (['pool'], True)
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow as pa
import ray.data

from pipeline import featureset as fset
from pipeline.decode import ERROR, decode_batch
from pipeline.featureset import ID, LABEL, SOURCE, SPLIT, VIEW
from pipeline.graph import TransferNet
from pipeline.logs import Progress
from pipeline.settings import AugmentConfig, Preprocess, StageConfig

log = logging.getLogger(__name__)
NETWORKS = ".networks"  # under an output root: networks staged for the model actors


@dataclass(frozen=True)
class Pass:
    """One pass over images: how they are decoded, what the model actors run (a callable class
    and its constructor arguments) and what the writers do with each batch."""

    name: str
    preprocess: Preprocess
    model: type
    model_kwargs: dict
    write: Callable[..., dict[str, np.ndarray]]
    write_kwargs: dict
    views: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def run_pass(items: pa.Table, cfg: StageConfig, spec: Pass) -> tuple[int, int]:
    """Run ``spec`` over ``items`` on Ray Data (the caller's Ray); returns (images, errors) as
    the writers counted them, with one progress line on the way."""
    block = max(1, cfg.batch_size // (1 + spec.views))
    blocks = [items.slice(i, block) for i in range(0, items.num_rows, block)]
    ds = (
        ray.data.from_arrow(blocks)
        .map_batches(
            decode_batch,
            batch_size=None,
            batch_format="numpy",
            num_cpus=cfg.decode_cpus,
            fn_kwargs=dict(
                preprocess=spec.preprocess,
                views=spec.views,
                augment=spec.augment,
                max_pixels=cfg.max_image_pixels,
            ),
        )
        .map_batches(
            spec.model,
            batch_size=cfg.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=cfg.actors),
            num_cpus=cfg.actor_cpus,
            num_gpus=cfg.actor_gpus,
            fn_constructor_kwargs=spec.model_kwargs,
        )
        .map_batches(
            spec.write,
            batch_size=None,
            batch_format="numpy",
            num_cpus=cfg.write_cpus,
            fn_kwargs=spec.write_kwargs,
        )
    )
    progress = Progress(spec.name, total=items.num_rows)
    images = errors = 0
    for done in ds.iter_batches(batch_size=None, batch_format="numpy"):
        images, errors = images + int(done["images"].sum()), errors + int(done["errors"].sum())
        progress.update(
            images + errors, f"images ({errors} errors), {images / progress.seconds:.1f} images/s"
        )
    return images, errors


def stage_network(net: TransferNet, root: str) -> str:
    """Save ``net`` under ``<root>/.networks/<hash>`` (once) for model actors to load."""
    files = net.to_files()
    digest = hashlib.sha256(b"".join(files.values())).hexdigest()[:16]
    uri = f"{root.rstrip('/')}/{NETWORKS}/{digest}"
    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.exists(f"{path}/model.safetensors"):
        fs.makedirs(path, exist_ok=True)
        for name in ("spec.json", "model.safetensors"):  # the weights last: their presence
            with fs.open(f"{path}/{name}", "wb") as f:  # means the directory is complete
                f.write(files[name])
    return uri


def write_errors(uri: str, batch: dict[str, np.ndarray]) -> None:
    """Record the batch's unreadable items under ``uri/_errors/`` (merged by finalize)."""
    bad = batch[ERROR] != ""
    if not bad.any():
        return
    fs, root = fsspec.core.url_to_fs(uri)
    errors = pa.table(
        {**{k: batch[k][bad] for k in (ID, SOURCE, LABEL, SPLIT)}, fset.REASON: batch[ERROR][bad]},
        schema=fset.ERROR_SCHEMA,
    )
    fs.makedirs(f"{root}/{fset.ERROR_PARTS}", exist_ok=True)
    fset.write_atomic(fs, f"{root}/{fset.ERROR_PARTS}/{fset.part_name(batch[ID][bad])}", errors)


def counts(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A writer's output: images done and errors, for the driver's progress line."""
    ok = batch[ERROR] == ""
    return {
        "images": np.array([int((ok & (batch[VIEW] == 0)).sum())]),
        "errors": np.array([int((~ok).sum())]),
    }


def actor_threads(cfg: StageConfig) -> int:
    """torch threads per model actor: the configured number, else the cores split evenly."""
    if cfg.torch_threads:
        return cfg.torch_threads
    return max(1, len(os.sched_getaffinity(0)) // cfg.actors)


def device_of(cfg: StageConfig) -> str:
    return "cuda" if cfg.actor_gpus else "cpu"
