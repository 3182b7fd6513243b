"""Featurize at scale: images -> the frozen prefix, once -> Parquet feature sets.

One pass computes the frontier of every requested cut and writes one feature set per cut (see
:mod:`pipeline.features.plan`). A feature set that already exists is a cache hit; an unfinished
one is completed unit by unit, reusing the units it finished. The model actor
(:class:`~pipeline.engine.actors.PrefixModel`) and the writer
(:class:`~pipeline.data.writers.PartWriter`) are callable classes, testable without Ray;
:func:`featurize` runs them in the shared Ray Data pass (:mod:`pipeline.engine.dataflow`).

Example (needs a running Ray):

    >>> from pipeline.data.listing import plan_data
    >>> from pipeline.features.run import featurize
    >>> from pipeline.net.builder import TransferLearning
    >>> from pipeline.settings import DataConfig, FeaturizeConfig
    >>> net = TransferLearning("tiny:cnn").set_feature_extractor("pool").build()
    >>> items = plan_data(DataConfig(sources=[shapes]))
    >>> result = featurize(net, items, FeaturizeConfig(out=str(tmp / "features")))
    >>> features, labels = result.feature_sets[0].tensors(split="train")
    >>> features["pool"].shape[1:], len(labels) == items.count("train")
    (torch.Size([16, 1, 1]), True)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import pyarrow
import ray
import torch
import torchvision

from pipeline.data.featureset import FeatureSet
from pipeline.data.parts import clear_unfinished, finalize, finished_units
from pipeline.data.plan import DataPlan, Unit
from pipeline.data.schema import FeatureSetError
from pipeline.engine.actors import PrefixModel
from pipeline.engine.dataflow import Pass, PassStats, prepare_engine, run_until_done
from pipeline.features.plan import Target, plan, preprocess_of
from pipeline.net.builder import TransferLearning
from pipeline.net.graph import TransferNet
from pipeline.net.saved import SavedNet
from pipeline.runs.storage import absolute_uri
from pipeline.settings import FeaturizeConfig

log = logging.getLogger(__name__)


@dataclass
class FeaturizeResult:
    """What a featurize call did: the feature sets, the images it computed and rejected in this
    run, how long the pass took and what its model stage sustained, when its first part was
    written (seconds into the pass) and the bytes its decoders had read by then."""

    feature_sets: list[FeatureSet]
    images: int = 0
    errors: int = 0
    seconds: float = 0.0
    cached: list[str] = field(default_factory=list)
    engine: str = ""  # what ran the prefix: onnxruntime or torch (none when all was cached)
    steady_images_per_s: float = 0.0  # what the model stage sustained after its first batch
    units: tuple[int, int] = (0, 0)  # units this run read, of all the plan's
    first_part_s: float | None = None
    bytes_before_first_part: int = 0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        uris = ", ".join(fs.uri for fs in self.feature_sets)
        if self.images == 0 and len(self.cached) == len(self.feature_sets):
            return f"featurize: cache hit, nothing computed -> {uris}"
        steady = f"{self.steady_images_per_s:.1f} steady, " if self.steady_images_per_s else ""
        read, total = self.units
        kept = ""
        if read < total and self.feature_sets:  # resumed: what this run added to what it found
            rows = self.feature_sets[0].manifest["rows"]
            kept = f"; resumed: {read} of {total} units computed now, {rows} rows in all"
        line = (
            f"featurize: {self.images} images, {self.errors} errors, "
            f"{self.images_per_s:.1f} images/s ({steady}{self.engine}){kept} -> {uris}"
        )
        skipped = self.feature_sets[0].skipped() if self.errors and self.feature_sets else ""
        return f"{line}\nfeaturize: {skipped}" if skipped else line


def featurize(
    net: TransferNet,
    items: DataPlan,
    cfg: FeaturizeConfig,
    cuts: list[str | list[str]] | None = None,
    saved: SavedNet | None = None,
) -> FeaturizeResult:
    """Run ``net``'s frozen prefix (or each cut's) over the planned images once; return the
    feature sets.

    Needs a running Ray (the caller's ``ray.init``). Complete feature sets are reused; unfinished
    ones are completed unit by unit: the units they hold a marker for are skipped, the rest
    are done again from scratch (whatever a killed run left of them is removed first)."""
    cfg = cfg.model_copy(update={"out": absolute_uri(cfg.out)})
    targets = plan(net, items.fingerprint, cfg, cuts)
    done = {t.uri: _open_complete(t.uri) for t in targets}
    pending = [t for t in targets if done[t.uri] is None]
    result = FeaturizeResult([], cached=[t.uri for t in targets if done[t.uri] is not None])
    for uri in result.cached:
        log.debug("cache hit: %s is complete; reusing it", uri)
    if pending:
        planned = {u.digest for u in items.units}  # markers of another grouping: not these
        finished = set.intersection(planned, *(finished_units(t.uri) for t in pending))
        todo = [u for u in items.units if u.digest not in finished]
        for t in pending:
            clear_unfinished(t.uri, keep=finished)
        result.units = (len(todo), len(items.units))
        start = time.perf_counter()
        if todo:
            stats, result.engine = _run(net, pending, todo, items, cfg, saved)
            result.images, result.errors = stats.images, stats.errors
            result.steady_images_per_s = stats.steady_images_per_s
            result.bytes_before_first_part = stats.bytes_before_first_part()
            if stats.first_part_at is not None:
                result.first_part_s = stats.first_part_at - (time.time() - stats.seconds)
        result.seconds = time.perf_counter() - start
        digests = [u.digest for u in items.units]
        for t in pending:
            manifest = _manifest(t, items, cfg, net, result.engine)
            done[t.uri] = finalize(t.uri, manifest, digests, items.classes)
        log.debug(
            "featurize: %d of %d units read; first part after %s s of the pass, %d bytes read "
            "before it",
            *result.units,
            f"{result.first_part_s:.1f}" if result.first_part_s is not None else "-",
            result.bytes_before_first_part,
        )
    result.feature_sets = [done[t.uri] for t in targets]
    log.info(result.summary())
    return result


def _open_complete(uri: str) -> FeatureSet | None:
    try:
        return FeatureSet.open(uri)
    except FeatureSetError:
        return None


def _run(
    net: TransferNet,
    pending: list[Target],
    units: list[Unit],
    items: DataPlan,
    cfg: FeaturizeConfig,
    saved: SavedNet | None,
) -> tuple[PassStats, str]:
    """One pass computing every pending target's frontier: ``net`` itself when it is their
    network (its save form ``saved`` staged for the actors), else ``net`` frozen through the
    union of their cuts."""
    if any(t.net is not net for t in pending):
        cut = {c for t in pending for c in t.cut}
        union, saved = TransferLearning(net).set_feature_extractor(*cut).build(), None
    else:
        union = net
    shapes = {name: shape for t in pending for name, shape in t.shapes.items()}
    preprocess = preprocess_of(net, cfg)
    base = (net.spec.get("base") or {}).get("model", "the network")
    engine = prepare_engine(
        union,
        list(shapes),
        preprocess,
        cfg,
        what=f"the frozen prefix of {base} (up to {', '.join(shapes)})",
        saved=saved,
    )
    writer = dict(
        targets=[(t.uri, t.shapes) for t in pending],
        dtype=cfg.dtype,
        named=items.classes is None,
        part_rows=cfg.part_rows,
        part_mib=cfg.part_mib,
    )
    stats = run_until_done(
        units,
        items,
        cfg,
        Pass(
            "featurize",
            preprocess,
            PrefixModel,
            dict(engine=engine, shapes=shapes, dtype=cfg.dtype),
            writer,
            views=cfg.views,
            augment=cfg.augment,
        ),
        [t.uri for t in pending],
    )
    return stats, engine.kind


def _manifest(
    t: Target, items: DataPlan, cfg: FeaturizeConfig, net: TransferNet, engine: str
) -> dict:
    # the engine is recorded, not fingerprinted: onnxruntime and torch agree to ~1e-5, below
    # float16 storage rounding, so a set made by either serves both
    return dict(
        t.identity,
        uri=t.uri,
        engine=engine,
        classes=items.classes,
        weights=net.spec.get("weights"),
        config=cfg.model_dump(mode="json"),
        versions={
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "ray": ray.__version__,
            "pyarrow": pyarrow.__version__,
        },
    )
