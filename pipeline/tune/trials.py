"""Running a sweep's trials on Ray Tune: each trial trains in its own process, an epoch a step
(seconds for a head), or drives a ``TorchTrainer`` when it asks for several workers or a GPU
(Ray Train V2's Tune pattern); ASHA stops trailing trials; an interrupted sweep resumes.

:func:`pipeline.flows.run.run_sweep` runs a whole sweep. Example: the trials' names

    >>> from pipeline.tune.trials import trial_name
    >>> class Sampled:
    ...     config = {"unfreeze": "2", "lr": 0.001}
    >>> trial_name(Sampled())[:23]
    'unfreeze-2-lr1.0e-03-...'
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field, replace

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from pipeline.runs.logs import Progress, captured_stdout, worker_setup
from pipeline.runs.storage import checkpoint_uri
from pipeline.settings import SearchSpace, SweepConfig, Unfreeze
from pipeline.train.fit import torch_trainer
from pipeline.train.loop import Fit, epoch_line
from pipeline.tune.plan import SweepPlan, trial_spec

log = logging.getLogger(__name__)


class TrialTrainable(tune.Trainable):
    """A sweep trial training in its own process, one epoch a step, a checkpoint each step.
    Tune reuses the process for the next trial (:meth:`reset_config`), so a trial pays no
    process start, no torch import and no Ray worker set-up: only its own network and data."""

    def setup(self, config: dict, sweep: SweepConfig, plan: SweepPlan) -> None:
        self.sweep, self.plan = sweep, plan
        self._start(config)

    def _start(self, config: dict) -> None:
        worker_setup(self.plan.log_file)
        spec, net = trial_spec(self.sweep, self.plan, config, self.logdir)
        self.fit = Fit(spec, net=net)  # built here, trained here: never serialized

    def step(self) -> dict:
        metrics = self.fit.epoch()
        log.info(epoch_line(metrics, self.fit.spec.train.epochs))
        return {**metrics, "done": self.fit.finished}

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        self.fit.save(checkpoint_dir)

    def load_checkpoint(self, checkpoint: str) -> None:
        self.fit.restore(checkpoint)

    def reset_config(self, new_config: dict) -> bool:
        self._start(new_config)
        return True


def _distributed_trial(params: dict, cfg: SweepConfig, plan: SweepPlan) -> None:
    """A trial asking for several workers or a GPU: the driver of a TorchTrainer whose rank 0
    reports reach Tune through ``TuneReportCallback`` (Ray Train V2's Tune pattern)."""
    trial_dir = tune.get_context().get_trial_dir()
    spec, net = trial_spec(cfg, plan, params, trial_dir)
    spec = replace(spec, network=net.saved())  # the workers rebuild it from its save format
    torch_trainer(spec, "train", trial_dir, [TuneReportCallback()]).fit()


# ---------------------------------------------------------------------------- the trials


@dataclass
class Trials:
    """A sweep's finished trials (Tune's results) and each one's wall time on the driver, from
    its start to its end (trials that ran under this driver)."""

    results: list
    walls: dict[str, float] = field(default_factory=dict)


def run_trials(cfg: SweepConfig, plan: SweepPlan) -> Trials:
    """Run the sweep's trials on Ray Tune (resuming an interrupted sweep at ``plan.path``);
    the compare preset runs its fine-tuned row as a second stage, from the frozen row's best
    checkpoint."""
    progress = _SweepProgress(cfg.metric, cfg.mode)
    if cfg.preset != "compare":
        return Trials(_tuned(_tuner(cfg, plan.path, plan, progress)), progress.walls)
    results = _tuned(_tuner(cfg, plan.path, plan, progress, ["scratch", "frozen"]))
    frozen = next(r for r in results if r.config["row"] == "frozen")
    start_from = best_checkpoint(frozen, cfg.metric, cfg.mode)
    if start_from is None:
        raise RuntimeError(f"the frozen row of {plan.path} left no checkpoint: {frozen.error}")
    second = replace(plan, start_from=start_from)
    results += _tuned(_tuner(cfg, f"{plan.path}/fine-tuned", second, progress, ["fine-tuned"]))
    return Trials(results, progress.walls)


def _tuned(tuner: tune.Tuner) -> list:
    with captured_stdout("ray.tune"):  # Tune prints its tables; they go to the log file
        return list(tuner.fit())


def _tuner(
    cfg: SweepConfig,
    path: str,
    plan: SweepPlan,
    progress: _SweepProgress,
    rows: list[str] | None = None,
) -> tune.Tuner:
    train = plan.train
    if train.distributed:  # a TorchTrainer trial is only a driver; its workers ask for theirs
        trainable = tune.with_resources(
            tune.with_parameters(_distributed_trial, cfg=cfg, plan=plan), {"cpu": 0.1}
        )
    else:
        trainable = tune.with_resources(
            tune.with_parameters(TrialTrainable, sweep=cfg, plan=plan), {"cpu": cfg.cpus_per_trial}
        )
    if tune.Tuner.can_restore(path):
        log.info(
            "sweep: resuming %s: finished trials are kept, unfinished ones continue from "
            "their last checkpoint",
            path,
        )
        return tune.Tuner.restore(path, trainable, resume_errored=True)
    per_trial = (
        train.workers * train.cpus_per_worker + 0.1 if train.distributed else cfg.cpus_per_trial
    )
    concurrent = cfg.max_concurrent_trials or max(
        1, math.floor(ray.cluster_resources().get("CPU", 1) / per_trial)
    )
    compare = cfg.preset == "compare"
    space = {"row": tune.grid_search(rows)} if compare else param_space(cfg.space)
    scheduler = (
        ASHAScheduler(
            time_attr="training_iteration",
            max_t=cfg.max_epochs(),
            grace_period=cfg.asha.grace_period,
            reduction_factor=cfg.asha.reduction_factor,
        )
        if cfg.asha and not compare
        else None
    )
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=cfg.metric,
            mode=cfg.mode,
            scheduler=scheduler,
            num_samples=1 if compare else cfg.num_samples,
            # the generator takes the concurrency limit itself: Tune ignores
            # max_concurrent_trials when given a SearchGenerator
            search_alg=BasicVariantGenerator(random_state=cfg.seed, max_concurrent=concurrent),
            reuse_actors=not train.distributed,  # trial processes serve trial after trial
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            name=os.path.basename(path),
            storage_path=os.path.dirname(path),
            verbose=0,
            callbacks=[progress],
            failure_config=tune.FailureConfig(max_failures=train.max_failures),
            # every checkpoint is kept while trials run: Tune deletes surplus ones before its
            # next experiment snapshot, so a driver killed in between would resume a trial from
            # a deleted checkpoint. Finished trials are pruned afterwards.
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=None, checkpoint_frequency=0 if train.distributed else 1
            ),
        ),
    )


def param_space(space: SearchSpace) -> dict:
    """The Tune search space of ``space`` (unfreeze values sampled as their canonical keys)."""

    def domain(value):
        if isinstance(value, list):
            return tune.choice(value)
        if isinstance(value, dict):
            kind, args = next(iter(value.items()))
            return {
                "choice": lambda: tune.choice(args),
                "grid": lambda: tune.grid_search(args),
                "uniform": lambda: tune.uniform(*args),
                "loguniform": lambda: tune.loguniform(*args),
                "randint": lambda: tune.randint(*args),
            }[kind]()
        return value

    params = {name: domain(getattr(space, name)) for name in type(space).model_fields}
    # listed depths are each tried (a grid); {choice: [...]} samples among them
    keys = [d.key for d in space.depths()]
    random = isinstance(space.unfreeze, dict) and "choice" in space.unfreeze
    params["unfreeze"] = tune.choice(keys) if random else tune.grid_search(keys)
    return params


def trial_name(trial) -> str:
    """Deterministic, readable trial names: the row or the unfreeze depth and lr, and a hash of
    the whole config (so a resumed sweep finds the same directories)."""
    config = trial.config
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    if "row" in config:
        return f"{config['row']}-{digest.hexdigest()[:6]}"
    return f"unfreeze-{config['unfreeze']}-lr{config['lr']:.1e}-{digest.hexdigest()[:6]}".replace(
        ":", ""
    )


def trial_depth(cfg: SweepConfig, config: dict) -> Unfreeze:
    """The unfreeze depth a finished trial trained at."""
    row = config.get("row")
    return cfg.compare.depth(row) if row else Unfreeze.parse(config.get("unfreeze", "all"))


def best_checkpoint(result, metric: str, mode: str) -> str | None:
    """The trial's best checkpoint directory: Tune's own, or (TorchTrainer trials) the path the
    best reported epoch carried."""
    checkpoint = result.get_best_checkpoint(metric, mode) if result.best_checkpoints else None
    if checkpoint is not None:
        return checkpoint_uri(checkpoint)
    frame = result.metrics_dataframe
    if frame is None or "checkpoint_path" not in frame or frame[metric].isna().all():
        return None
    best = frame[metric].idxmax() if mode == "max" else frame[metric].idxmin()
    return frame.loc[best, "checkpoint_path"]


class _SweepProgress(tune.Callback):
    """The sweep's progress line on the driver: trials finished and the best so far."""

    def __init__(self, metric: str, mode: str):
        self.metric, self.mode = metric, mode
        self.finished, self.best = 0, None
        self.progress = Progress("sweep")
        self.started: dict[str, float] = {}
        self.walls: dict[str, float] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial_name(trial)] = time.perf_counter()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if value is not None and (
            self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        ):
            self.best = value
        self._update(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finished += 1
        name = trial_name(trial)
        if name in self.started:
            self.walls[name] = time.perf_counter() - self.started[name]
        self._update(trials)

    def _update(self, trials) -> None:
        best = f", best {self.metric} {self.best:.3f}" if self.best is not None else ""
        self.progress.update(self.finished, f"of {len(trials)} trials finished{best}")
