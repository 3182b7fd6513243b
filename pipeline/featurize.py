"""Featurize at scale: images -> the frozen prefix, once -> Parquet feature sets.

One pass computes the frontier of every requested cut and writes one feature set per cut (see
:mod:`pipeline.featureset`). A feature set that already exists is a cache hit; an unfinished one is
completed, reusing what was written. The model actor (:class:`PrefixModel`) and the writer
(:func:`write_batch`) are a callable class and a function, testable without Ray;
:func:`featurize` runs them in the shared Ray Data pass (:mod:`pipeline.stages`).

Example (needs a running Ray):

    >>> from pipeline import sources
    >>> from pipeline.featurize import featurize
    >>> from pipeline.settings import DataConfig, FeaturizeConfig
    >>> from pipeline.surgery import TransferLearning
    >>> net = TransferLearning("tiny:cnn").set_feature_extractor("pool").build()
    >>> items = sources.list_items(DataConfig(sources=[shapes]))
    >>> result = featurize(net, items, FeaturizeConfig(out=str(tmp / "features")))
    >>> features, labels = result.feature_sets[0].tensors(split="train")
    >>> features["pool"].shape[1:], len(labels) == items.count("train")
    (torch.Size([16, 1, 1]), True)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import fsspec
import pyarrow
import pyarrow as pa
import ray
import torch
import torchvision

from pipeline import featureset as fset
from pipeline.actors import PrefixModel
from pipeline.decode import DECODER, GPU_DECODER
from pipeline.featureset import ID, SPLIT, FeatureSet
from pipeline.graph import SurgeryError, TransferNet
from pipeline.runs import absolute_uri
from pipeline.settings import FeaturizeConfig, Preprocess
from pipeline.sources import Items
from pipeline.stages import Pass, PassStats, prepare_engine, run_pass
from pipeline.surgery import TransferLearning
from pipeline.writers import write_features

log = logging.getLogger(__name__)


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
    engine: str = ""  # what ran the prefix: onnxruntime or torch (none when all was cached)
    steady_images_per_s: float = 0.0  # after the first batch: the pass's start-up excluded

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        uris = ", ".join(fs.uri for fs in self.feature_sets)
        if self.images == 0 and len(self.cached) == len(self.feature_sets):
            return f"featurize: cache hit, nothing computed -> {uris}"
        steady = f"{self.steady_images_per_s:.1f} steady, " if self.steady_images_per_s else ""
        return (
            f"featurize: {self.images} images, {self.errors} errors, "
            f"{self.images_per_s:.1f} images/s ({steady}{self.engine}) -> {uris}"
        )


def plan(
    net: TransferNet, items: Items, cfg: FeaturizeConfig, cuts: list[str | list[str]] | None = None
) -> list[Target]:
    """The feature sets to produce: the net's own frozen set, or one per cut in ``cuts`` (each
    a node name or list of names to freeze through), each named by its fingerprint."""
    preprocess = preprocess_of(net, cfg)
    variants = (
        [(net.frontier(), net)]
        if not cuts
        else [
            (c, TransferLearning(net).set_feature_extractor(*c).build())
            for c in ([c] if isinstance(c, str) else list(c) for c in cuts)
        ]
    )
    base = net.spec.get("base") or {}
    targets = []
    for cut, variant in variants:
        if not variant.frozen:
            raise SurgeryError("nothing is frozen: call set_feature_extractor(...) or give cuts")
        identity = {
            "format": fset.FORMAT,
            "model": base.get("model"),
            "model_kwargs": base.get("kwargs"),
            "weights_sha256": net.spec.get("weights_sha256"),
            "cut": cut,
            "frozen": sorted(variant.frozen),
            "prefix_sha256": variant.prefix_sha256(),
            "frontier": {k: list(v) for k, v in variant.frontier_shapes().items()},
            "preprocess": preprocess.model_dump(),
            "decoder": GPU_DECODER if cfg.gpu_decode else DECODER,
            "dtype": cfg.dtype,
            "views": cfg.views,
            "augment": cfg.augment.model_dump() if cfg.views else None,
            "data": items.fingerprint,
        }
        # the cut's name is kept for people, not hashed: "features.16" and "features.16.add"
        # freeze the same nodes, and the frozen set, frontier and prefix hash say so
        digest = fset.fingerprint({k: v for k, v in identity.items() if k != "cut"})
        name = fset.directory_name(str(base.get("model", "net")), variant.frontier(), digest)
        targets.append(
            Target(
                cut, variant, dict(identity, fingerprint=digest), f"{cfg.out.rstrip('/')}/{name}"
            )
        )
    return targets


def featurize(
    net: TransferNet, items: Items, cfg: FeaturizeConfig, cuts: list[str | list[str]] | None = None
) -> FeaturizeResult:
    """Run ``net``'s frozen prefix (or each cut's) over ``items`` once; return the feature sets.

    Needs a running Ray (the caller's ``ray.init``). Complete feature sets are reused; unfinished
    ones are completed without redoing finished rows."""
    cfg = cfg.model_copy(update={"out": absolute_uri(cfg.out)})
    targets = plan(net, items, cfg, cuts)
    done = {t.uri: _open_complete(t.uri) for t in targets}
    pending = [t for t in targets if done[t.uri] is None]
    result = FeaturizeResult([], cached=[t.uri for t in targets if done[t.uri] is not None])
    for uri in result.cached:
        log.debug("cache hit: %s is complete; reusing it", uri)
    if pending:
        expected = _expected_views(items, cfg)
        remaining = _remaining(items, pending, expected)
        start = time.perf_counter()
        if remaining.num_rows:
            stats, result.engine = _run(net, pending, remaining, cfg)
            result.images, result.errors = stats.images, stats.errors
            result.steady_images_per_s = stats.steady_images_per_s
        result.seconds = time.perf_counter() - start
        for t in pending:
            done[t.uri] = fset.finalize(
                t.uri, _manifest(t, items, cfg, net, result.engine), expected
            )
    result.feature_sets = [done[t.uri] for t in targets]
    log.info(result.summary())
    return result


class FeatureSetMismatch(fset.FeatureSetError):
    """The feature set was made by another prefix than the network's."""


def check_feature_set(net: TransferNet, fs: FeatureSet) -> None:
    """Refuse a feature set that another prefix made, naming the first field that differs
    (the fields :func:`plan` put in its identity)."""
    m, base = fs.manifest, net.spec.get("base") or {}
    preprocess = net.spec.get("preprocess")
    checks = [
        ("model", m.get("model"), base.get("model")),
        ("model_kwargs", m.get("model_kwargs"), base.get("kwargs")),
        ("weights_sha256", m.get("weights_sha256"), net.spec.get("weights_sha256")),
        ("frozen", m.get("frozen"), sorted(net.frozen)),
        ("frontier", m.get("frontier"), {k: list(v) for k, v in net.frontier_shapes().items()}),
        (
            "preprocess",
            m.get("preprocess") and Preprocess(**m["preprocess"]),
            preprocess and Preprocess(**preprocess),
        ),
        ("prefix_sha256", m.get("prefix_sha256"), net.prefix_sha256()),
    ]
    for name, made, have in checks:
        if made != have:
            raise FeatureSetMismatch(
                f"feature set {fs.uri} was not made by this network's frozen prefix: {name} "
                f"differs ({_difference(made, have)}). Featurize with this network (python -m "
                "jobs.featurize, or jobs.train which featurizes when needed), or train the "
                "network the set was made with."
            )


def _difference(made, have) -> str:
    if isinstance(made, list) and isinstance(have, list):
        only_made = [x for x in made if x not in have]
        only_have = [x for x in have if x not in made]
        return f"only in the feature set: {only_made[:8]}; only in the network: {only_have[:8]}"
    return f"the feature set has {str(made)[:300]}, the network {str(have)[:300]}"


def preprocess_of(net: TransferNet, cfg: FeaturizeConfig) -> Preprocess:
    """The configured preprocessing, else the network's own."""
    if cfg.preprocess is not None:
        return cfg.preprocess
    if not net.spec.get("preprocess"):
        raise ValueError(
            "the network has no preprocessing (resize, crop, mean, std): set "
            "featurize.preprocess in the config"
        )
    return Preprocess(**net.spec["preprocess"])


def _open_complete(uri: str) -> FeatureSet | None:
    try:
        return FeatureSet.open(uri)
    except fset.FeatureSetError:
        return None


def _expected_views(items: Items, cfg: FeaturizeConfig) -> dict[str, int]:
    ids, splits = items.table.column(ID).to_pylist(), items.table.column(SPLIT).to_pylist()
    return {i: 1 + (cfg.views if s in cfg.augment.splits else 0) for i, s in zip(ids, splits)}


def _remaining(items: Items, pending: list[Target], expected: dict[str, int]) -> pa.Table:
    """Items some pending feature set still lacks (every view of it, or its error record)."""
    done = None
    for t in pending:
        finished = fset.scan(t.uri).done_items(expected)
        done = finished if done is None else done & finished
    mask = [i not in done for i in items.table.column(ID).to_pylist()]
    return items.table.filter(pa.array(mask, pa.bool_()))


def _run(
    net: TransferNet, pending: list[Target], remaining: pa.Table, cfg: FeaturizeConfig
) -> tuple[PassStats, str]:
    union = (
        (TransferLearning(net).set_feature_extractor(*{c for t in pending for c in t.cut}).build())
        if any(t.net is not net for t in pending)
        else net
    )
    shapes = {name: shape for t in pending for name, shape in t.shapes.items()}
    for t in pending:
        fs, root = fsspec.core.url_to_fs(t.uri)
        fs.makedirs(root, exist_ok=True)
    preprocess = preprocess_of(net, cfg)
    base = (net.spec.get("base") or {}).get("model", "the network")
    engine = prepare_engine(
        union,
        list(shapes),
        preprocess,
        cfg,
        what=f"the frozen prefix of {base} (up to {', '.join(shapes)})",
    )
    stats = run_pass(
        remaining,
        cfg,
        Pass(
            "featurize",
            preprocess,
            PrefixModel,
            dict(engine=engine, shapes=shapes, dtype=cfg.dtype),
            write_features,
            dict(targets=[(t.uri, t.shapes) for t in pending], dtype=cfg.dtype),
            views=cfg.views,
            augment=cfg.augment,
        ),
    )
    return stats, engine.kind


def _manifest(t: Target, items: Items, cfg: FeaturizeConfig, net: TransferNet, engine: str) -> dict:
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
