"""Job flows: a job config in, the stages called in order, a result out.

Each ``python -m jobs.X`` validates its config, starts Ray and calls one of these; the same
functions run from Python with a running Ray.

Example (needs a running Ray):

    >>> from pipeline.settings import FeaturizeJobConfig
    >>> from pipeline.flows.run import run_featurize
    >>> cfg = FeaturizeJobConfig(model={"name": "tiny:cnn"}, cuts=["pool", "flatten"],
    ...                          data={"sources": [shapes]},
    ...                          featurize={"out": str(tmp / "features")})
    >>> [list(fs.shapes) for fs in run_featurize(cfg).feature_sets]
    [['pool'], ['flatten']]
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from pipeline.data.featureset import FeatureSet
from pipeline.data.listing import plan_data
from pipeline.data.plan import DataPlan
from pipeline.features.plan import FeatureSetMismatch, check_feature_set
from pipeline.features.run import FeaturizeResult, featurize
from pipeline.inference.batch import accuracy, predict, read_predictions
from pipeline.net.graph import TransferNet
from pipeline.net.heads import build_network, cut_for, head_of, zoo_network
from pipeline.net.saving import from_files, load
from pipeline.runs.storage import absolute_uri, default_name, mark_latest
from pipeline.settings import (
    FeaturizeJobConfig,
    PredictJobConfig,
    TrainJobConfig,
    TuneJobConfig,
)

if TYPE_CHECKING:
    from pipeline.train.fit import FitResult
    from pipeline.tune.results import SweepResult

log = logging.getLogger(__name__)


def run_featurize(cfg: FeaturizeJobConfig, base: TransferNet | None = None) -> FeaturizeResult:
    """``jobs.featurize``: one pass over the images, one feature set per cut. ``base``: the zoo
    network the job's checks built (built here when not given)."""
    net = base if base is not None else zoo_network(cfg.model)
    cuts = cfg.cuts or [cfg.model.cuts() or cut_for(net, 0, head_of(net, cfg.model))]
    return featurize(net, plan_data(cfg.data), cfg.featurize, cuts=cuts)


def run_train(cfg: TrainJobConfig, base: TransferNet | None = None) -> FitResult:
    """``jobs.train``: build the net (frozen through ``model.cut``, head resized to the
    classes), featurize unless the feature set is cached (``mode: features``), fit, report,
    export. ``base``: the zoo (or ``start_from``) network the job's checks built."""
    # Ray Train and Tune load with the flows that use them (~1 s, ~35 MiB a featurize job skips)
    from pipeline.train.fit import fit, fit_featurized

    items = plan_data(cfg.data)
    base = base if base is not None else _base(cfg.model)
    found = None if items.classes else _featurized_first(base, items, cfg)
    classes = items.classes or found.classes
    net = build_network(cfg.model, classes, cfg.train.fine_tune, base)
    saved = net.saved()  # once: the actors' copy, the run's name and the workers' copy
    if cfg.mode == "end_to_end":
        return fit(net, items, cfg.train, saved=saved)
    if found is None or not _made_by(net, found):
        found = featurize(net, items, cfg.featurize, saved=saved).feature_sets[0]
    return fit_featurized(net, found, cfg.train, saved=saved)


def _made_by(net: TransferNet, fs: FeatureSet) -> bool:
    try:
        check_feature_set(net, fs)
    except FeatureSetMismatch:
        return False
    return True


def _base(model) -> TransferNet:
    """The network a flow edits: the exported ``start_from``, else the zoo model."""
    return load(model.start_from) if model.start_from else zoo_network(model)


def _featurized_first(base: TransferNet, items: DataPlan, cfg: TrainJobConfig) -> FeatureSet:
    """Class names only reading the shards can tell: featurize first, with the frozen prefix
    the fit uses (it does not depend on the head), and fit on that set."""
    if cfg.mode == "end_to_end":
        raise ValueError(
            "the shards' labels have no names, so the classes are known only after reading "
            "every shard: give the source's label_names, or train with mode: features"
        )
    head = head_of(base, cfg.model)
    cut = cfg.model.cuts() if cfg.model.cut is not None else cut_for(base, 0, head)
    (feature_set,) = featurize(base, items, cfg.featurize, cuts=[cut]).feature_sets
    return feature_set


def run_predict(cfg: PredictJobConfig, net: TransferNet | None = None) -> str:
    """``jobs.predict``: the exported network (loaded by the job's checks, or here), classify
    the images, log a summary (with accuracy when the images carry labels of the network's
    classes)."""
    net = net if net is not None else load(cfg.model)
    out = predict(net, plan_data(cfg.data), cfg.predict)
    table = read_predictions(out)
    line = f"predict: {table.num_rows} predictions -> {out}"
    score = accuracy(table) if table.num_rows else float("nan")
    if score == score:  # some images carry labels among the network's classes
        line += f"; accuracy against the data's labels {score:.3f}"
    skipped = FeatureSet.open(out).skipped()
    log.info(f"{line}\npredict: {skipped}" if skipped else line)
    return out


def run_sweep(cfg: TuneJobConfig, base: TransferNet | None = None) -> SweepResult:
    """``jobs.tune``: featurize every cut once, run the trials on Ray Tune (resuming an
    interrupted sweep of the same name), then write the table, the plots, the best network and
    the report. ``base``: the zoo network the job's checks built."""
    from pipeline.train.fit import check_rows
    from pipeline.tune.plan import plan_sweep
    from pipeline.tune.results import sweep_outputs
    from pipeline.tune.trials import run_trials

    start, sweep, train = time.perf_counter(), cfg.sweep, cfg.train
    splits = [train.train_split, train.val_split, *cfg.test_splits()]
    items = plan_data(cfg.data).only(splits)
    # before any trial starts: a sweep ranks its trials by the metric, and val_* needs val rows
    metric = train.model_copy(update={"metric": sweep.metric})
    if items.counts is not None:  # shards: only reading them can tell (their feature sets do)
        where = "the data"
        check_rows(items.count(metric.train_split), items.count(metric.val_split), metric, where)
    name = sweep.name or sweep_name(cfg, items)
    path = f"{absolute_uri(sweep.storage).rstrip('/')}/{name}"
    base = base if base is not None else zoo_network(cfg.model)
    found, cuts = [], []
    if items.classes is None:  # found while featurizing, which a sweep does first anyway
        head = head_of(base, cfg.model)
        cuts = [cut_for(base, d, head) for d in sweep.depths() if not d.everything]
        found = featurize(base, items, cfg.featurize, cuts=cuts).feature_sets
        items = replace(items, classes=found[0].classes)
    plan = plan_sweep(sweep, train, cfg.model, base, items, path)
    featurize_seconds = 0.0
    frozen = plan.frozen_cuts()
    if found and sweep.feature_cache == "shared" and list(frozen.values()) == cuts:
        plan.feature_sets = {key: absolute_uri(fs.uri) for key, fs in zip(frozen, found)}
    elif frozen and sweep.feature_cache == "shared":
        t0 = time.perf_counter()
        net = from_files(plan.networks[next(iter(frozen))])
        done = featurize(net, items, cfg.featurize, cuts=list(frozen.values()))
        featurize_seconds = time.perf_counter() - t0
        plan.feature_sets = {
            key: absolute_uri(fs.uri) for key, fs in zip(frozen, done.feature_sets)
        }
    log.info(
        "sweep: %s -> %s",
        "the compare preset"
        if sweep.preset == "compare"
        else f"{sweep.num_samples} sample(s) of the search space",
        path,
    )
    out = sweep_outputs(sweep, plan, run_trials(sweep, plan), cfg.test_splits())
    out.featurize_seconds, out.seconds = featurize_seconds, time.perf_counter() - start
    mark_latest(absolute_uri(sweep.storage), name)
    log.info(out.summary())
    return out


def sweep_name(cfg: TuneJobConfig, items: DataPlan) -> str:
    """The default sweep name: ``<label>-<hash>`` of every setting that changes the result and
    of the data, so re-running the same sweep resumes it and changing anything starts a new
    one."""
    settings = cfg.model_dump(
        mode="json",
        exclude={
            "ray_address": True,
            "storage_options": True,
            "sweep": {"name", "label", "storage", "max_concurrent_trials"},
        },
    )
    return default_name(cfg.sweep.label or cfg.sweep.preset, [settings, items.fingerprint])
