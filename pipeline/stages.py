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
import pyarrow.compute as pc
import ray.data

from pipeline.decode import decode_batch
from pipeline.engine import Normalized, export
from pipeline.featureset import LABEL, UNLABELED
from pipeline.graph import TransferNet
from pipeline.logs import Progress
from pipeline.runtime import EngineSpec, choose
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


STEADY_BATCHES = 4  # fewer, and a pass has no steady state to speak of


@dataclass
class PassStats:
    """What a pass did: images written and rejected (as the writers counted them), its wall
    time, and its steady-state rate (after the first batch came out: start-up excluded; 0 when
    the pass was too short to have one)."""

    images: int = 0
    errors: int = 0
    seconds: float = 0.0
    first_batch_s: float = 0.0
    steady_images_per_s: float = 0.0


def run_pass(items: pa.Table, cfg: StageConfig, spec: Pass) -> PassStats:
    """Run ``spec`` over ``items`` on Ray Data (the caller's Ray), with one progress line on
    the way."""
    # unlabeled images (null labels) travel as UNLABELED through NumPy; writers restore null
    labels = pc.fill_null(items.column(LABEL), UNLABELED)
    items = items.set_column(items.schema.get_field_index(LABEL), LABEL, labels)
    block = max(1, cfg.batch_size // (1 + spec.views))
    blocks = [items.slice(i, block) for i in range(0, items.num_rows, block)]
    ds = (
        ray.data.from_arrow(blocks)
        .map_batches(
            decode_batch,
            batch_size=None,
            batch_format="numpy",
            num_cpus=cfg.decode_cpus,
            compute=_decoders(cfg),
            fn_kwargs=dict(
                preprocess=spec.preprocess,
                views=spec.views,
                augment=spec.augment,
                max_pixels=cfg.max_image_pixels,
                gpu_jpeg=cfg.gpu_decode,
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
    progress, stats, first, batches = Progress(spec.name, total=items.num_rows), PassStats(), 0, 0
    for done in ds.iter_batches(batch_size=None, batch_format="numpy"):
        stats.images += int(done["images"].sum())
        stats.errors += int(done["errors"].sum())
        batches += 1
        if not stats.first_batch_s:
            stats.first_batch_s, first = progress.seconds, stats.images
        rate = stats.images / progress.seconds
        progress.update(
            stats.images + stats.errors, f"images ({stats.errors} errors), {rate:.1f} images/s"
        )
    stats.seconds = progress.seconds
    steady = stats.seconds - stats.first_batch_s
    # a steady rate needs a few batches after the first (they can arrive all at once)
    if batches >= STEADY_BATCHES and steady > 0:
        stats.steady_images_per_s = (stats.images - first) / steady
    return stats


# Cores of model one decode task keeps fed. Measured on 2 cores: a decoder turns out 875 images/s
# of flowers128 (293 of 500-px JPEGs, drafted), mobilenet_v2's prefix on ONNX Runtime ~110 per
# core; a second decoder beside a 2-core model added nothing but a process (~250 MiB).
MODEL_CORES_PER_DECODER = 4


def _decoders(cfg: StageConfig) -> ray.data.TaskPoolStrategy | None:
    """How many decode tasks run at a time: enough to feed the CPU actors' model threads (and
    no more: each is a process, and the cores are the model's), while a GPU's model wants every
    CPU decoding (no cap)."""
    model_cores = cfg.actors * actor_threads(cfg)
    size = cfg.decoders or (None if cfg.actor_gpus else -(-model_cores // MODEL_CORES_PER_DECODER))
    return ray.data.TaskPoolStrategy(size=size) if size else None


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


def prepare_engine(
    net: TransferNet, names: list[str], preprocess: Preprocess, cfg: StageConfig, what: str
) -> EngineSpec:
    """What the model actors run, settled once on the driver: ``net`` staged in its save
    format and, when the stage runs on ONNX Runtime, the part the actors run (the prefix up to
    ``names``, or the whole network when ``names`` is empty) exported and checked beside it."""
    network, device = stage_network(net, cfg.out), device_of(cfg)
    kind, onnx = choose(cfg.engine, device), None
    if kind == "onnxruntime":
        module = net.prefix(names) if names else net
        onnx = export(
            Normalized(module, names or ["output"], preprocess),
            preprocess.crop_size,
            network,
            key=network,
            what=what,
        )
        kind = "onnxruntime" if onnx else "torch"
    log.debug("%s runs on %s (%s)", what, kind, onnx or network)
    return EngineSpec(
        kind,
        network,
        onnx,
        list(names),
        preprocess.model_dump(),
        device,
        actor_threads(cfg),
        cfg.channels_last,
    )


def actor_threads(cfg: StageConfig) -> int:
    """torch threads per model actor: the configured number, else the cores split evenly."""
    if cfg.threads:
        return cfg.threads
    return max(1, len(os.sched_getaffinity(0)) // cfg.actors)


def device_of(cfg: StageConfig) -> str:
    return "cuda" if cfg.actor_gpus else "cpu"
