"""The Ray Data pass every image job shares: items -> decode tasks -> model actors -> writers.

Featurizing and predicting differ only in the model actor (a callable class: load once in
``__init__``, batch in, batch out) and the writer (a function writing its batch's rows and
rejected items, returning counts); :func:`run_pass` wires them with the decode tasks of
:mod:`pipeline.data.decode`. The network reaches the actors as a saved directory
(:func:`stage_network`), so nothing large travels as an actor argument and nothing is unpickled.

Example:

    >>> from pipeline.engine.dataflow import stage_network
    >>> from pipeline.net.builder import TransferLearning
    >>> from pipeline.net.saving import load
    >>> net = TransferLearning("tiny:cnn").set_feature_extractor("pool").build()
    >>> uri = stage_network(net.saved(), str(tmp))
    >>> load(uri).frontier(), stage_network(net.saved(), str(tmp)) == uri
    (['pool'], True)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray.data

from pipeline.data.decode import MODEL_DONE, decode_batch
from pipeline.data.schema import LABEL, UNLABELED
from pipeline.engine.export import Normalized, export
from pipeline.engine.runtime import EngineSpec, choose
from pipeline.net.graph import TransferNet
from pipeline.net.saved import SavedNet
from pipeline.runs.logs import Progress
from pipeline.settings import MAX_IMAGE_PIXELS, AugmentConfig, PassConfig, Preprocess

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
    max_pixels: int = MAX_IMAGE_PIXELS


STEADY_BATCHES = 4  # fewer, and a pass has no steady state to speak of


@dataclass
class PassStats:
    """What a pass did: images written and rejected (as the writers counted them), its wall
    time, and its steady-state rate: the images the model stage finished after its first batch
    over the time from that batch's end to its last one's (start-up, and what decoders read
    ahead during it, excluded; 0 when the pass was too short to have one)."""

    images: int = 0
    errors: int = 0
    seconds: float = 0.0
    steady_images_per_s: float = 0.0
    batches: dict[float, int] = field(default_factory=dict)  # model batch end -> its images

    def add(self, done: dict[str, np.ndarray]) -> None:
        """Count one writer output (see :func:`pipeline.data.writers.counts`)."""
        self.images += int(done["images"].sum())
        self.errors += int(done["errors"].sum())
        for end, images in zip(done[MODEL_DONE].tolist(), done["images"].tolist()):
            if end == end:  # not NaN
                self.batches[end] = self.batches.get(end, 0) + int(images)

    def steady(self) -> float:
        """The rate the model stage sustained after its first batch (see the class doc)."""
        ends = sorted(self.batches)
        if len(ends) < STEADY_BATCHES or ends[-1] <= ends[0]:
            return 0.0
        return sum(self.batches[t] for t in ends[1:]) / (ends[-1] - ends[0])


def run_pass(items: pa.Table, cfg: PassConfig, spec: Pass) -> PassStats:
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
                max_pixels=spec.max_pixels,
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
    progress, stats = Progress(spec.name, total=items.num_rows), PassStats()
    for done in ds.iter_batches(batch_size=None, batch_format="numpy"):
        stats.add(done)
        rate = stats.images / progress.seconds
        progress.update(
            stats.images + stats.errors, f"images ({stats.errors} errors), {rate:.1f} images/s"
        )
    stats.seconds = progress.seconds
    stats.steady_images_per_s = stats.steady()
    return stats


# Cores of model one decode task keeps fed. Measured on 2 cores: a decoder turns out 875 images/s
# of flowers128 (293 of 500-px JPEGs, drafted), mobilenet_v2's prefix on ONNX Runtime ~110 per
# core; a second decoder beside a 2-core model added nothing but a process (~250 MiB).
MODEL_CORES_PER_DECODER = 4


def _decoders(cfg: PassConfig) -> ray.data.TaskPoolStrategy | None:
    """How many decode tasks run at a time: enough to feed the CPU actors' model threads (and
    no more: each is a process, and the cores are the model's), while a GPU's model wants every
    CPU decoding (no cap)."""
    model_cores = cfg.actors * actor_threads(cfg)
    size = cfg.decoders or (None if cfg.actor_gpus else -(-model_cores // MODEL_CORES_PER_DECODER))
    return ray.data.TaskPoolStrategy(size=size) if size else None


def stage_network(saved: SavedNet, root: str) -> str:
    """Write a network's save format under ``<root>/.networks/<digest>`` (once) for model
    actors to load."""
    uri = f"{root.rstrip('/')}/{NETWORKS}/{saved.digest[:16]}"
    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.exists(f"{path}/model.safetensors"):  # written last: its presence means complete
        saved.write(uri)
    return uri


def prepare_engine(
    net: TransferNet,
    names: list[str],
    preprocess: Preprocess,
    cfg: PassConfig,
    what: str,
    saved: SavedNet | None = None,
) -> EngineSpec:
    """What the model actors run, settled once on the driver: ``net`` staged in its save
    format (``saved``, when the caller has it already) and, when the stage runs on ONNX
    Runtime, the part the actors run (the prefix up to ``names``, or the whole network when
    ``names`` is empty) exported and checked beside it."""
    network = stage_network(saved or net.saved(), cfg.out)
    device = device_of(cfg)
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


def actor_threads(cfg: PassConfig) -> int:
    """torch threads per model actor: the configured number, else the cores split evenly."""
    if cfg.threads:
        return cfg.threads
    return max(1, len(os.sched_getaffinity(0)) // cfg.actors)


def device_of(cfg: PassConfig) -> str:
    return "cuda" if cfg.actor_gpus else "cpu"
