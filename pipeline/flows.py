"""Job flows: a job config in, the stages called in order, a result out.

Each ``python -m jobs.X`` validates its config, starts Ray and calls one of these; the same
functions run from Python with a running Ray.

Example (needs a running Ray):

    >>> from pipeline.config import FeaturizeJobConfig
    >>> from pipeline.flows import run_featurize
    >>> cfg = FeaturizeJobConfig(model={"name": "tiny:cnn"}, cuts=["pool", "flatten"],
    ...                          data={"sources": [shapes]},
    ...                          featurize={"out": str(tmp / "features")})
    >>> [list(fs.shapes) for fs in run_featurize(cfg).feature_sets]
    [['pool'], ['flatten']]
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from pipeline.config import FeaturizeJobConfig, PredictJobConfig, TrainJobConfig, TuneJobConfig
from pipeline.featurize import FeaturizeResult, featurize
from pipeline.loading import from_files, load
from pipeline.networks import build_network
from pipeline.predict import accuracy, predict, read_predictions
from pipeline.runs import absolute_uri, default_name, mark_latest
from pipeline.settings import NetworkConfig
from pipeline.sources import Items, list_items
from pipeline.surgery import TransferLearning

if TYPE_CHECKING:
    from pipeline.sweep_results import SweepResult
    from pipeline.train import FitResult

log = logging.getLogger(__name__)


def run_featurize(cfg: FeaturizeJobConfig) -> FeaturizeResult:
    """``jobs.featurize``: one pass over the images, one feature set per cut."""
    model = cfg.model
    net = TransferLearning(
        model.name, weights=model.weights, image_size=model.image_size, **model.kwargs
    ).build()
    return featurize(net, list_items(cfg.data), cfg.featurize, cuts=cfg.cuts)


def run_train(cfg: TrainJobConfig) -> FitResult:
    """``jobs.train``: build the net (frozen through ``cfg.cut``, head resized to the classes),
    featurize unless the feature set is cached (``mode: features``), fit, report, export."""
    # Ray Train and Tune load with the flows that use them (~1 s, ~35 MiB a featurize job skips)
    from pipeline.train import fit, fit_featurized

    items = list_items(cfg.data)
    net = build_network(cfg.network(), items.classes, cfg.train.fine_tune)
    if cfg.mode == "end_to_end":
        return fit(net, items, cfg.train)
    feature_set = featurize(net, items, cfg.featurize).feature_sets[0]
    return fit_featurized(net, feature_set, cfg.train)


def run_predict(cfg: PredictJobConfig) -> str:
    """``jobs.predict``: load the exported network, classify the images, log a summary (with
    accuracy when the images carry labels of the network's classes)."""
    net = load(cfg.model)
    items = list_items(cfg.data)
    out = predict(net, items, cfg.predict)
    table = read_predictions(out)
    line = f"predict: {table.num_rows} predictions -> {out}"
    if net.spec.get("classes") == items.classes and table.num_rows:
        line += f"; accuracy against the folder labels {accuracy(table):.3f}"
    log.info(line)
    return out


def run_sweep(cfg: TuneJobConfig) -> SweepResult:
    """``jobs.tune``: featurize every cut once, run the trials on Ray Tune (resuming an
    interrupted sweep of the same name), then write the table, the plots, the best network and
    the report."""
    from pipeline.sweep_results import sweep_outputs
    from pipeline.train import check_rows
    from pipeline.tune import plan_sweep, run_trials, used_items

    start = time.perf_counter()
    items = used_items(
        list_items(cfg.data), [cfg.train.train_split, cfg.train.val_split, *cfg.test_splits()]
    )
    sweep = cfg.sweep()
    # before any trial starts: a sweep ranks its trials by the metric, and val_* needs val rows
    metric = sweep.train.model_copy(update={"metric": sweep.metric})
    check_rows(items.count(metric.train_split), items.count(metric.val_split), metric, "the data")
    name = cfg.name or sweep_name(cfg, items)
    path = f"{absolute_uri(cfg.storage).rstrip('/')}/{name}"
    plan = plan_sweep(sweep, NetworkConfig(model=cfg.model, head=cfg.head), items, path)
    featurize_seconds = 0.0
    frozen = plan.frozen_cuts()
    if frozen and sweep.feature_cache == "shared":
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
    mark_latest(absolute_uri(cfg.storage), name)
    log.info(out.summary())
    return out


def sweep_name(cfg: TuneJobConfig, items: Items) -> str:
    """The default sweep name: ``<label>-<hash>`` of every setting that changes the result and
    of the data, so re-running the same sweep resumes it and changing anything starts a new
    one."""
    settings = cfg.model_dump(
        mode="json",
        exclude={"name", "label", "storage", "ray_address", "max_concurrent_trials"},
    )
    return default_name(cfg.label or cfg.preset, [settings, items.fingerprint])
