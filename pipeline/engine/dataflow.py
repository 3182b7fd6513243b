"""The Ray Data pass every image job shares: units -> decode tasks -> model actors -> writer.

Featurizing and predicting differ only in the model actor (a callable class: load once in
``__init__``, batch in, batch out) and what the writer writes (feature sets or predictions);
:func:`run_pass` wires them with the decode stage of :mod:`pipeline.data.rows` and the writer
actor of :mod:`pipeline.data.writers`. The pass's input is the plan's units, one per task, so a
shard's members are enumerated by the task that decodes them and the driver never holds a row
per image. The network reaches the actors as a saved directory (:func:`stage_network`), so
nothing large travels as an actor argument and nothing is unpickled.

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

import json
import logging
import os
from dataclasses import dataclass, field, replace

import fsspec
import ray.data

from pipeline.data.parts import clear_unfinished, finished_units
from pipeline.data.plan import DataPlan, Unit
from pipeline.data.rows import decode_units
from pipeline.data.writers import PartWriter
from pipeline.engine.export import Normalized, export
from pipeline.engine.runtime import EngineSpec, choose
from pipeline.net.graph import TransferNet
from pipeline.net.saved import SavedNet
from pipeline.runs.logs import Progress
from pipeline.settings import AugmentConfig, PassConfig, Preprocess

log = logging.getLogger(__name__)
NETWORKS = ".networks"  # under an output root: networks staged for the model actors


@dataclass(frozen=True)
class Pass:
    """One pass over images: how they are decoded (labels indexed by ``classes``; ``None``: by
    the plan's), what the model actors run (a callable class and its constructor arguments)
    and what the writer writes (:class:`~pipeline.data.writers.PartWriter`'s arguments)."""

    name: str
    preprocess: Preprocess
    model: type
    model_kwargs: dict
    writer_kwargs: dict
    views: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    classes: list[str] | None = None


STEADY_BATCHES = 4  # fewer, and a pass has no steady state to speak of


@dataclass
class PassStats:
    """What a pass did: images written and rejected (as the writer counted them), its wall
    time, its steady-state rate (the images the model stage finished after its first batch
    over the time from that batch's end to its last one's: start-up, and what decoders read
    ahead during it, excluded; 0 when the pass was too short to have one), when its first part
    was written, and the bytes its decoders had read by then."""

    images: int = 0
    errors: int = 0
    seconds: float = 0.0
    steady_images_per_s: float = 0.0
    batches: dict[float, int] = field(default_factory=dict)  # model batch end -> its images
    first_part_at: float | None = None  # epoch seconds
    reads: dict[str, list] = field(default_factory=dict)  # unit -> [(read at, bytes by then)]

    def add(self, report: dict) -> None:
        """Count one report of the writer (see :class:`~pipeline.data.writers.PartWriter`)."""
        for end, images, errors in report["images"]:
            self.images, self.errors = self.images + images, self.errors + errors
            if end == end:  # not NaN
                self.batches[end] = self.batches.get(end, 0) + images
        if report["parts"]:
            first = min(report["parts"])
            self.first_part_at = min(self.first_part_at or first, first)
        for unit, at, read in report["read"]:
            self.reads.setdefault(unit, []).append((at, read))

    def steady(self) -> float:
        """The rate the model stage sustained after its first batch (see the class doc)."""
        ends = sorted(self.batches)
        if len(ends) < STEADY_BATCHES or ends[-1] <= ends[0]:
            return 0.0
        return sum(self.batches[t] for t in ends[1:]) / (ends[-1] - ends[0])

    def bytes_before_first_part(self) -> int:
        """What the decoders had read from storage when the first part was written."""
        if self.first_part_at is None:
            return 0
        return sum(
            max((read for at, read in events if at <= self.first_part_at), default=0)
            for events in self.reads.values()
        )


def run_pass(units: list[Unit], plan: DataPlan, cfg: PassConfig, spec: Pass) -> PassStats:
    """Run ``spec`` over ``units`` of ``plan`` on Ray Data (the caller's Ray), with one
    progress line on the way."""
    slim = replace(plan, units=[])  # every decode task gets the plan; the units travel as rows
    ds = (
        ray.data.from_items([{"unit": u.to_json()} for u in units], override_num_blocks=len(units))
        .map_batches(
            decode_units,
            batch_size=1,
            batch_format="numpy",
            num_cpus=cfg.decode_cpus,
            compute=_decoders(cfg),
            fn_kwargs=dict(
                plan=slim,
                preprocess=spec.preprocess,
                views=spec.views,
                augment=spec.augment,
                block_rows=max(1, cfg.batch_size // (1 + spec.views)),
                classes=spec.classes,
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
            PartWriter,
            batch_size=None,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=1),
            num_cpus=cfg.write_cpus,
            fn_constructor_kwargs=spec.writer_kwargs,
        )
    )
    total = sum(u.size or 0 for u in units) if all(u.size for u in units) else None
    progress, stats = Progress(spec.name, total=total), PassStats()
    for done in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for report in done["report"]:
            stats.add(json.loads(report))
        rate = stats.images / progress.seconds
        progress.update(
            stats.images + stats.errors, f"images ({stats.errors} errors), {rate:.1f} images/s"
        )
    stats.seconds = progress.seconds
    stats.steady_images_per_s = stats.steady()
    return stats


ATTEMPTS = 3  # passes over the units a lost node took with it, before giving up


def run_until_done(
    units: list[Unit], plan: DataPlan, cfg: PassConfig, spec: Pass, outputs: list[str]
) -> PassStats:
    """:func:`run_pass` over ``units``, then again over any that left no completion marker in
    every output (their rows were in the writer when its node was lost), each time after
    removing what they left, up to :data:`ATTEMPTS` passes."""
    stats = run_pass(units, plan, cfg, spec)
    for attempt in range(2, ATTEMPTS + 1):
        done = set.intersection(*(finished_units(uri) for uri in outputs))
        lost = [u for u in units if u.digest not in done]
        if not lost:
            break
        log.warning(
            "%s: %d unit(s) left unfinished (a node lost mid-run?); running them again (pass %d)",
            spec.name,
            len(lost),
            attempt,
        )
        for uri in outputs:
            clear_unfinished(uri, keep=done)
        again = run_pass(lost, plan, cfg, spec)
        stats.images, stats.errors = stats.images + again.images, stats.errors + again.errors
        stats.seconds += again.seconds
    return stats


# Cores of model one decode task keeps fed. Measured on 2 cores: a decoder turns out 875 images/s
# of flowers128 (293 of 500-px JPEGs, drafted), mobilenet_v2's prefix on ONNX Runtime ~110 per
# core; a second decoder beside a 2-core model added nothing but a process (~250 MiB).
MODEL_CORES_PER_DECODER = 4


def decode_tasks(cfg: PassConfig) -> int | None:
    """How many decode tasks run at a time: enough to feed the CPU actors' model threads (and
    no more: each is a process, and the cores are the model's), while a GPU's model wants every
    CPU decoding (``None``: no cap)."""
    model_cores = cfg.actors * actor_threads(cfg)
    return cfg.decoders or (None if cfg.actor_gpus else -(-model_cores // MODEL_CORES_PER_DECODER))


def _decoders(cfg: PassConfig) -> ray.data.TaskPoolStrategy | None:
    size = decode_tasks(cfg)
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
