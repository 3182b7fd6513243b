"""Ray Tune sweeps over fine-tune settings and unfreeze depth, cheap because they reuse features.

Every distinct cut in the search space is featurized once, in one pass over the images, before
any trial starts; a trial then trains its network's trainable part on the matching feature set,
in its own process (seconds for a head). A trial that asks for several workers or a GPU runs a
``TorchTrainer`` instead (Ray Train V2's Tune pattern), and one that asks for augmentation or for
nothing frozen (the compare preset's "scratch" row) reads images every epoch.

Example::

    >>> import ray
    >>> from pipeline.config import TuneJobConfig
    >>> from pipeline.tune import run_sweep
    >>> ray.init()
    >>> cfg = TuneJobConfig.model_validate({
    ...     "data": {"sources": ["images/"]},
    ...     "space": {"unfreeze": [0, 2], "lr": {"loguniform": [1e-4, 1e-2]}}})
    >>> sweep = run_sweep(cfg)      # sweep.table, sweep.best_model, sweep.report
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline import zoo
from pipeline.featureset import SPLIT, FeatureSet
from pipeline.finetune import FineTuneConfig
from pipeline.sources import Items
from pipeline.surgery import TransferNet
from pipeline.train import absolute_uri

if TYPE_CHECKING:
    from pipeline.config import TuneJobConfig

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")


def _check_param(value: Any) -> Any:
    """A search-space value: a constant, a list (a choice), or ``{kind: args}`` with kind in
    DISTRIBUTIONS (``{"loguniform": [1e-4, 1e-1]}``, ``{"grid": [0, 2, 4]}``)."""
    if isinstance(value, dict):
        if len(value) != 1 or next(iter(value)) not in DISTRIBUTIONS:
            raise ValueError(f"{value!r}: give one of {', '.join(DISTRIBUTIONS)}, e.g. "
                             "{'loguniform': [0.0001, 0.1]}, or a value, or a list to choose from")
        kind, args = next(iter(value.items()))
        if not isinstance(args, list) or not args:
            raise ValueError(f"{value!r}: {kind} takes a non-empty list")
        if kind in ("uniform", "loguniform", "randint") and len(args) != 2:
            raise ValueError(f"{value!r}: {kind} takes [low, high]")
    elif isinstance(value, list) and not value:
        raise ValueError("an empty list leaves nothing to choose from")
    return value


class SearchSpace(BaseModel):
    """What a sweep samples. Each field is a value, a list to choose from, or a distribution
    (``{"loguniform": [lo, hi]}``, ``{"uniform": ...}``, ``{"randint": ...}``, ``{"grid": [...]}``).

    ``unfreeze`` says where the frozen prefix ends: ``N`` or ``"top:N"`` unfreezes the network's
    top N blocks (see ``TransferNet.blocks()``; 0 trains only the head), a node name freezes
    through that node, ``"all"`` freezes nothing."""

    model_config = ConfigDict(extra="forbid")
    unfreeze: Any = Field([0], description="unfreeze depths: N, 'top:N', a node name or 'all'")
    lr: Any = Field({"loguniform": [1e-4, 1e-2]})
    weight_decay: Any = 0.0
    width: Any = Field(0, description="width of each hidden Linear+ReLU+Dropout block")
    depth: Any = Field(0, description="hidden blocks inserted before the head")
    dropout: Any = 0.0
    optimizer: Any = "adamw"
    batch_size: Any = 32
    epochs: Any = 5

    _values = field_validator("*")(classmethod(lambda cls, v: _check_param(v)))

    def choices(self, name: str) -> list:
        """Every value field ``name`` can take (only for values, lists, choice and grid)."""
        value = getattr(self, name)
        if isinstance(value, dict):
            kind, args = next(iter(value.items()))
            if kind in ("choice", "grid"):
                return list(args)
            raise ValueError(f"space.{name} must be a value or a list, not {kind}")
        return list(value) if isinstance(value, list) else [value]

    def param_space(self) -> dict:
        from ray import tune

        def domain(value):
            if isinstance(value, list):
                return tune.choice(value)
            if isinstance(value, dict):
                kind, args = next(iter(value.items()))
                return {"choice": lambda: tune.choice(args), "grid": lambda: tune.grid_search(args),
                        "uniform": lambda: tune.uniform(*args),
                        "loguniform": lambda: tune.loguniform(*args),
                        "randint": lambda: tune.randint(*args)}[kind]()
            return value

        space = {name: domain(getattr(self, name)) for name in type(self).model_fields}
        # a sampled unfreeze value is looked up as a string key (see TrialPlan)
        space["unfreeze"] = domain([str(v) for v in self.choices("unfreeze")])
        if isinstance(self.unfreeze, dict) and "grid" in self.unfreeze:
            space["unfreeze"] = tune.grid_search([str(v) for v in self.choices("unfreeze")])
        return space


class AshaConfig(BaseModel):
    """Asynchronous successive halving: stop trials whose metric trails at each rung."""

    model_config = ConfigDict(extra="forbid")
    grace_period: int = Field(2, ge=1, description="epochs every trial gets")
    reduction_factor: float = Field(2, gt=1)


class CompareConfig(BaseModel):
    """The compare preset: (a) from scratch, all trainable, (b) frozen pretrained prefix + head,
    (c) the top blocks unfrozen, continuing from (b)'s best checkpoint at a lower learning rate
    (the two-stage recipe of the TensorFlow transfer-learning tutorial this follows). Same data,
    batch size and epochs per stage; (c)'s table row counts only its own stage."""

    model_config = ConfigDict(extra="forbid")
    unfreeze: int | str = Field(2, description="row (c): the top N blocks, or a node to freeze "
                                               "through")
    epochs: int = Field(5, gt=0)
    batch_size: int = Field(32, gt=0)
    scratch: FineTuneConfig = FineTuneConfig(optimizer="adamw", lr=1e-3, weight_decay=0.01,
                                             schedule="cosine")
    frozen: FineTuneConfig = FineTuneConfig(optimizer="adamw", lr=3e-3, weight_decay=0.01,
                                            schedule="cosine")
    fine_tuned: FineTuneConfig = FineTuneConfig(optimizer="adamw", lr=3e-4, weight_decay=0.01,
                                                schedule="cosine")


COMPARE_ROWS = ("scratch", "frozen", "fine-tuned")


# ---------------------------------------------------------------------------- cuts

def cut_for(net: TransferNet, unfreeze: int | str, head: str) -> list[str]:
    """The nodes to freeze through for an unfreeze value: ``N``/``"top:N"`` keeps the top N of
    ``net.blocks()`` trainable (0: only the head), a node name freezes through it, ``"all"``
    freezes nothing (``[]``)."""
    text = str(unfreeze)
    if text == "all":
        return []
    if text.isdigit() or text.startswith("top:"):
        n, blocks = int(text.removeprefix("top:")), net.blocks()
        if n == 0:
            return net.inputs_of(head)
        if n >= len(blocks):
            raise ValueError(f"unfreeze {text}: the network has {len(blocks)} blocks "
                             f"({', '.join(blocks)}); use 'all' to train everything")
        return [blocks[-n - 1]]
    net.select(text)  # an unknown name raises, listing the valid ones
    return [text]


# ---------------------------------------------------------------------------- one trial

@dataclass
class TrialPlan:
    """What one trial trains: the job config of a single fit, and where its data comes from."""

    job: Any  # TrainJobConfig
    unfreeze: str
    data_kind: Literal["features", "images", "featurize_once"]
    row: str = ""


def trial_plan(cfg: TuneJobConfig, params: dict, cuts: dict[str, list[str]],
               start_from: str | None = None) -> TrialPlan:
    """Turn a trial's sampled ``params`` into the fit it runs (``start_from``: the compare
    preset's frozen-row checkpoint its fine-tuned row continues from)."""
    from pipeline.config import TrainJobConfig

    model, row = cfg.model, params.get("row", "")
    if row:
        compare = cfg.compare
        unfreeze = {"scratch": "all", "frozen": "0", "fine-tuned": str(compare.unfreeze)}[row]
        fine_tune = {"scratch": compare.scratch, "frozen": compare.frozen,
                     "fine-tuned": compare.fine_tuned}[row]
        hidden, dropout = [], 0.0
        epochs, batch_size = compare.epochs, compare.batch_size
        if row == "scratch":
            model = model.model_copy(update={"name": zoo.untrained(model.name), "weights": None})
    else:
        unfreeze = str(params["unfreeze"])
        fine_tune = FineTuneConfig(optimizer=params["optimizer"], lr=params["lr"],
                                   weight_decay=params["weight_decay"], schedule="cosine",
                                   seed=cfg.seed)
        width, depth = int(params["width"]), int(params["depth"])
        hidden, dropout = ([width] * depth if width > 0 else []), params["dropout"]
        epochs, batch_size = int(params["epochs"]), int(params["batch_size"])
    update = {"epochs": epochs, "batch_size": batch_size, "fine_tune": fine_tune,
              "metric": cfg.metric, "mode": cfg.mode}
    if not (cfg.train.workers > 1 or cfg.train.use_gpu):  # trains in the trial's own process
        update["cpus_per_worker"] = cfg.cpus_per_trial
    train = cfg.train.model_copy(update=update)
    cut = cuts[unfreeze]
    end_to_end = not cut or train.augment is not None
    kind = ("images" if end_to_end else
            "featurize_once" if cfg.feature_cache == "per_trial" else "features")
    job = TrainJobConfig(model=model, cut=cut, head=cfg.head, hidden=hidden,
                         hidden_dropout=dropout, data=cfg.data, train=train,
                         start_from=start_from if row == "fine-tuned" else None,
                         mode="end_to_end" if end_to_end else "features")
    return TrialPlan(job, unfreeze, kind, row)


def _trial(params: dict, setup: dict) -> None:
    """A Tune trial: build its network, train it here (or with a TorchTrainer), report each
    epoch with a checkpoint; a restarted trial resumes from its checkpoint."""
    import ray.tune

    from pipeline.config import TuneJobConfig
    from pipeline.train import build_network, check_feature_set, train_loop, tune_session

    cfg = TuneJobConfig.model_validate(setup["cfg"])
    plan = trial_plan(cfg, params, setup["cuts"], setup.get("start_from"))
    net = build_network(plan.job, setup["classes"])
    if plan.data_kind == "features":
        uri = setup["feature_sets"][plan.unfreeze]
        fs = FeatureSet.open(uri)
        check_feature_set(net, fs)
        # the set's own count: unreadable images were recorded and left out of it
        data = {"kind": "features", "uri": uri, "rows": fs.count(plan.job.train.train_split)}
    else:
        data = {"kind": plan.data_kind, "items": setup["items"], "rows": setup["rows"],
                "preprocess": net.spec["preprocess"]}
    config = {"train": plan.job.train.model_dump(mode="json"), "files": net.to_files(),
              "data": data, "run_dir": ray.tune.get_context().get_trial_dir(),
              "classes": setup["classes"]}
    if plan.job.train.workers > 1 or plan.job.train.use_gpu:
        _trial_on_ray_train(config, plan)
    else:
        train_loop(config, tune_session())


def _trial_on_ray_train(config: dict, plan: TrialPlan) -> None:
    """Ray Train V2's Tune pattern: this trial is the driver of a TorchTrainer whose rank 0
    reports reach Tune through ``TuneReportCallback`` (with the checkpoint's path)."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipeline.train import torch_trainer

    trial_dir = ray.tune.get_context().get_trial_dir()
    torch_trainer(config, plan.job.train, "train", trial_dir, [TuneReportCallback()]).fit()


# ---------------------------------------------------------------------------- the sweep

@dataclass
class SweepResult:
    """What a sweep left: one row per trial, the best trial's exported network, the report."""

    path: str
    table: list[dict]
    best: dict
    best_model: str
    report: str
    compare: list[dict] = field(default_factory=list)
    featurize_seconds: float = 0.0
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"{len(self.table)} trials in {self.seconds:.0f} s (featurize "
                 f"{self.featurize_seconds:.0f} s); best {self.best['trial']}: "
                 f"{self.best['metric']} {self.best['best']:.4f} "
                 f"(unfreeze {self.best['unfreeze']})"]
        for row in self.compare:
            lines.append(f"  {row['row']:>10}: train {row['train_accuracy']:.3f} val "
                         f"{row['val_accuracy']:.3f} test {row['test_accuracy']:.3f} "
                         f"({row['seconds']:.0f} s)")
        lines.append(f"best model: {self.best_model}  report: {self.report}")
        return "\n".join(lines)


def sweep_name(cfg: TuneJobConfig, items: Items) -> str:
    """The default sweep name: a hash of every setting that changes the result and of the data,
    so re-running the same sweep resumes it and changing anything starts a new one."""
    settings = cfg.model_dump(mode="json", exclude={"name", "storage", "ray_address",
                                                    "max_concurrent_trials"})
    digest = hashlib.sha256(json.dumps([settings, items.fingerprint], sort_keys=True).encode())
    return f"{cfg.preset}-{digest.hexdigest()[:12]}"


def _trial_name(trial) -> str:
    """Deterministic, readable trial names: the row or the unfreeze depth and lr, and a hash of
    the whole config (so a resumed sweep finds the same directories)."""
    config = trial.config
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    if "row" in config:
        return f"{config['row']}-{digest.hexdigest()[:6]}"
    return (f"unfreeze-{config['unfreeze']}-lr{config['lr']:.1e}-{digest.hexdigest()[:6]}"
            .replace(":", ""))


def used_items(items: Items, splits: list[str]) -> Items:
    """Only the rows in ``splits`` (a share of the data can be set aside under another split
    name, e.g. ``rest``, and is then never decoded)."""
    table = items.table.filter(pc.is_in(items.table.column(SPLIT), pa.array(splits)))
    if table.num_rows == items.table.num_rows:  # the same data: share jobs.train's feature sets
        return items
    digest = hashlib.sha256(f"{items.fingerprint}{sorted(splits)}".encode()).hexdigest()
    return Items(table, items.classes, digest)


def plan_cuts(cfg: TuneJobConfig, classes: list[str]) -> dict[str, list[str]]:
    """Every unfreeze value the sweep can sample -> the nodes it freezes through."""
    from pipeline.config import TrainJobConfig
    from pipeline.train import build_network

    base = build_network(TrainJobConfig(model=cfg.model, cut=[], head=cfg.head, data=cfg.data),
                         classes)
    values = ([str(v) for v in cfg.space.choices("unfreeze")] if cfg.preset == "sweep"
              else ["all", "0", str(cfg.compare.unfreeze)])
    return {v: cut_for(base, v, cfg.head) for v in values}


def run_sweep(cfg: TuneJobConfig, progress=print) -> SweepResult:
    """Featurize every cut once, run the trials on Ray Tune (resuming an interrupted sweep of
    the same name), then write the table, the plots, the best network and the report."""
    from pipeline.config import TrainJobConfig
    from pipeline.featurize import featurize
    from pipeline.sources import list_items
    from pipeline.train import build_network

    start = time.perf_counter()
    splits = [cfg.train.train_split, cfg.train.val_split, *cfg.test_splits()]
    items = used_items(list_items(cfg.data), splits)
    cuts = plan_cuts(cfg, items.classes)
    name = cfg.name or sweep_name(cfg, items)
    path = f"{absolute_uri(cfg.storage).rstrip('/')}/{name}"
    feature_sets, featurize_seconds = {}, 0.0
    frozen_cuts = {v: c for v, c in cuts.items() if c}
    if frozen_cuts and cfg.feature_cache == "shared":
        net = build_network(TrainJobConfig(model=cfg.model, cut=next(iter(frozen_cuts.values())),
                                           head=cfg.head, data=cfg.data), items.classes)
        t0 = time.perf_counter()
        done = featurize(net, items, cfg.featurize, cuts=list(frozen_cuts.values()),
                         progress=progress)
        featurize_seconds = time.perf_counter() - t0
        feature_sets = {v: absolute_uri(fs.uri) for v, fs in zip(frozen_cuts, done.feature_sets)}
    rows = items.table.column(SPLIT).to_pylist().count(cfg.train.train_split)
    setup = {"cfg": cfg.model_dump(mode="json"), "cuts": cuts, "feature_sets": feature_sets,
             "items": items.table, "classes": items.classes, "rows": rows}
    if cfg.preset == "compare":  # (c) continues from (b): a second stage
        results = list(_tuner(cfg, path, setup, ["scratch", "frozen"]).fit())
        frozen = next(r for r in results if r.config["row"] == "frozen")
        start_from = _best_checkpoint(frozen, cfg.metric, cfg.mode)
        if start_from is None:
            raise RuntimeError(f"the frozen row of {path} left no checkpoint: {frozen.error}")
        results += list(_tuner(cfg, f"{path}/fine-tuned", dict(setup, start_from=start_from),
                               ["fine-tuned"]).fit())
    else:
        results = list(_tuner(cfg, path, setup).fit())
    out = _outputs(cfg, path, results, items, feature_sets)
    out.featurize_seconds, out.seconds = featurize_seconds, time.perf_counter() - start
    if progress is not None:
        progress(out.summary())
    return out


def _tuner(cfg: TuneJobConfig, path: str, setup: dict, rows: list[str] | None = None):
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    train = cfg.train
    on_ray_train = train.workers > 1 or train.use_gpu
    # a TorchTrainer trial is only a driver; its workers ask for their own resources
    resources = {"cpu": 0.1} if on_ray_train else {"cpu": cfg.cpus_per_trial}
    trainable = tune.with_resources(tune.with_parameters(_trial, setup=setup), resources)
    if tune.Tuner.can_restore(path):
        print(f"resuming sweep {path}: finished trials are kept, unfinished ones continue "
              "from their last checkpoint")
        return tune.Tuner.restore(path, trainable, resume_errored=True)
    per_trial = (train.workers * train.cpus_per_worker + 0.1 if on_ray_train
                 else cfg.cpus_per_trial)
    concurrent = cfg.max_concurrent_trials or max(
        1, math.floor(ray.cluster_resources().get("CPU", 1) / per_trial))
    compare = cfg.preset == "compare"
    space = {"row": tune.grid_search(rows)} if compare else cfg.space.param_space()
    epochs = cfg.compare.epochs if compare else max(map(int, cfg.space.choices("epochs")))
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=int(epochs),
                               grace_period=cfg.asha.grace_period,
                               reduction_factor=cfg.asha.reduction_factor)
                 if cfg.asha and not compare else None)
    return tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(
            metric=cfg.metric, mode=cfg.mode, scheduler=scheduler,
            num_samples=1 if compare else cfg.num_samples,
            # the generator takes the concurrency limit itself: Tune ignores
            # max_concurrent_trials when given a SearchGenerator
            search_alg=BasicVariantGenerator(random_state=cfg.seed, max_concurrent=concurrent),
            reuse_actors=False,
            trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=tune.RunConfig(
            name=os.path.basename(path), storage_path=os.path.dirname(path), verbose=0,
            failure_config=tune.FailureConfig(max_failures=train.max_failures),
            # every checkpoint is kept while trials run: Tune deletes surplus ones before its
            # next experiment snapshot, so a driver killed in between would resume a trial from
            # a deleted checkpoint. Finished trials are pruned afterwards (_prune).
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None)))


# ---------------------------------------------------------------------------- outputs

def _best_checkpoint(result, metric: str, mode: str) -> str | None:
    """The trial's best checkpoint directory: Tune's own, or (TorchTrainer trials) the path the
    best reported epoch carried."""
    checkpoint = result.get_best_checkpoint(metric, mode) if result.best_checkpoints else None
    if checkpoint is not None:
        return checkpoint.path
    frame = result.metrics_dataframe
    if frame is None or "checkpoint_path" not in frame or frame[metric].isna().all():
        return None
    best = frame[metric].idxmax() if mode == "max" else frame[metric].idxmin()
    return frame.loc[best, "checkpoint_path"]


def _row(cfg: TuneJobConfig, result) -> dict:
    config, frame = result.config, result.metrics_dataframe
    row = {"trial": os.path.basename(result.path), **{k: config[k] for k in sorted(config)},
           "status": "error" if result.error else "ok"}
    if frame is None or not len(frame) or cfg.metric not in frame:
        return {**row, "epochs_run": 0, "metric": cfg.metric, "best": math.nan, "final": math.nan}
    best = frame[cfg.metric].idxmax() if cfg.mode == "max" else frame[cfg.metric].idxmin()
    return {**row, "epochs_run": int(frame["epoch"].max()), "metric": cfg.metric,
            "best": float(frame.loc[best, cfg.metric]), "best_epoch": int(frame.loc[best, "epoch"]),
            "final": float(frame[cfg.metric].iloc[-1]),
            **{f"best_{k}": float(frame.loc[best, k]) for k in
               ("train_loss", "train_accuracy", "val_loss", "val_accuracy") if k in frame},
            "seconds": (float(frame["time_total_s"].iloc[-1]) if "time_total_s" in frame
                        else math.nan)}


def _outputs(cfg: TuneJobConfig, path: str, results, items: Items,
             feature_sets: dict[str, str]) -> SweepResult:
    import pandas as pd

    from pipeline import report
    from pipeline.surgery import load

    table, chosen = [], None
    # in trial-name order, so ties on the metric pick the same best trial on every run
    results = sorted(results, key=lambda r: os.path.basename(r.path))
    for result in results:
        row = _row(cfg, result)
        row["unfreeze"] = row.get("unfreeze") or trial_unfreeze(cfg, result.config)
        row["checkpoint"] = _best_checkpoint(result, cfg.metric, cfg.mode)
        table.append(row)
        better = (chosen is None or (row["best"] > chosen["best"] if cfg.mode == "max"
                                     else row["best"] < chosen["best"]))
        if row["checkpoint"] and not math.isnan(row["best"]) and better:
            chosen = row
    _prune(results, table)
    errors = [r for r in results if r.error]
    if chosen is None:
        raise RuntimeError(f"no trial of {path} finished an epoch; first error: "
                           f"{errors[0].error if errors else 'none reported'}")
    frame = pd.DataFrame(table)
    frame.to_csv(f"{path}/results.csv", index=False)
    frame.to_parquet(f"{path}/results.parquet", index=False)
    net = load(chosen["checkpoint"])
    net.spec["classes"] = items.classes
    best_model = f"{path}/best/model"
    net.save(best_model)
    compare = _compare_rows(cfg, table, items, feature_sets) if cfg.preset == "compare" else []
    page = report.write_sweep_report(path, table, chosen, best_model, compare,
                                     title=f"{os.path.basename(path)}: {cfg.metric}")
    if errors:
        print(f"{len(errors)} trial(s) failed; see results.csv and their logs under {path}")
    return SweepResult(path, table, chosen, best_model, page, compare)


def _prune(results, table: list[dict]) -> None:
    """Delete the checkpoints of finished trials but their best and their last (a later resume
    of an errored sibling never needs them)."""
    import shutil

    for result, row in zip(results, table):
        if result.error or not result.best_checkpoints:
            continue
        keep = {row["checkpoint"], result.checkpoint.path if result.checkpoint else None}
        for checkpoint, _ in result.best_checkpoints:
            if checkpoint.path not in keep:
                shutil.rmtree(checkpoint.path, ignore_errors=True)


def trial_unfreeze(cfg: TuneJobConfig, config: dict) -> str:
    row = config.get("row")
    return {"scratch": "all", "frozen": "0", "fine-tuned": str(cfg.compare.unfreeze)}.get(
        row, str(config.get("unfreeze", "")))


def _compare_rows(cfg: TuneJobConfig, table: list[dict], items: Items,
                  feature_sets: dict[str, str]) -> list[dict]:
    """The compare preset's three rows: train/val accuracy at the best epoch, test accuracy of
    the restored best checkpoint (when the data has a test split), wall time."""
    from pipeline.surgery import load
    from pipeline.train import evaluate

    rows = []
    for name in COMPARE_ROWS:
        row = next((r for r in table if r.get("row") == name), None)
        if row is None or not row["checkpoint"]:
            continue
        test = math.nan
        for split in cfg.test_splits():
            net = load(row["checkpoint"])
            source = feature_sets.get(row["unfreeze"]) or items
            test = evaluate(net, source, split=split).accuracy
        rows.append({"row": name, "unfreeze": row["unfreeze"],
                     "train_accuracy": row.get("best_train_accuracy", math.nan),
                     "val_accuracy": row.get("best_val_accuracy", math.nan),
                     "test_accuracy": test, "seconds": row.get("seconds", math.nan),
                     "epochs": row["epochs_run"]})
    return rows
