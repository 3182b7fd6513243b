"""Fit the trainable part of a network on Ray Train: from a feature set, or end to end.

``fit_featurized`` (DL4J's ``fitFeaturized``) trains ``net.trainable()`` on a feature set; ``fit``
trains it on images, running the frozen prefix under no-grad and augmenting on the fly. Both run the
epoch loop of :mod:`pipeline.train.loop` in a ``TorchTrainer``: every epoch reports metrics and a
checkpoint, the best ``keep`` checkpoints survive, ``patience`` stops early, and a failed worker
group restarts from the last checkpoint. When a fit returns, the trained weights are in ``net``
(DL4J's copy-back) and the run directory holds TensorBoard events, ``report.html`` with PNG curves,
and the exported model.

Example (needs a running Ray):

    >>> from pipeline.settings import TrainConfig
    >>> from pipeline.train.fit import fit_featurized
    >>> result = fit_featurized(net, feature_set, TrainConfig(epochs=2, storage=str(tmp)))
    >>> result.epochs
    [1, 2]
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field

import fsspec
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.util.queue import Empty, Queue

from pipeline.data.featureset import FeatureSet
from pipeline.data.plan import DataPlan
from pipeline.features.plan import check_feature_set
from pipeline.net.graph import TransferNet
from pipeline.net.saved import SavedNet
from pipeline.net.saving import load
from pipeline.runs import report
from pipeline.runs.logs import Progress
from pipeline.runs.storage import absolute_uri, current_fs, default_name, mark_latest
from pipeline.settings import ConfigError, Preprocess, TrainConfig
from pipeline.train.checkpoints import copy_back, read_checkpoint
from pipeline.train.data import FeatureInput, ImageInput
from pipeline.train.loop import WorkerSpec, epoch_line, train_worker
from pipeline.train.metrics import Evaluation

log = logging.getLogger(__name__)
RESULT = "result.json"  # written when a run has finished
SKIPPED_ROWS = 20  # inputs the report lists of those the data skipped


@dataclass
class FitResult:
    """What a fit left: the trained net (weights copied back), its run and its report."""

    net: TransferNet
    run_dir: str
    history: list[dict]
    attempts: list[list[int]] = field(default_factory=list)
    checkpoint: str = ""
    evaluation: Evaluation | None = None
    report: str = ""
    model: str = ""
    seconds: float = 0.0

    @property
    def epochs(self) -> list[int]:
        return [h["epoch"] for h in self.history]

    restored_epoch: int | None = None
    finished_before: bool = False  # the run was complete: nothing trained, nothing written

    def summary(self) -> str:
        """Two lines: what was trained and restored, where the model and report are."""
        evaluation = self.evaluation.summary() if self.evaluation else "no evaluation"
        done = f"{len(self.history)} epochs in {self.seconds:.0f} s"
        if self.finished_before:
            done = f"{self.run_dir} was finished already ({len(self.history)} epochs); nothing ran"
        return (
            f"fit: {done}; epoch {self.restored_epoch} restored: {evaluation}\n"
            f"fit: model {self.model}, report {self.report}"
        )

    def to_json(self) -> dict:
        """What a finished run keeps in ``result.json`` (the net aside: that is ``model``)."""
        fields = ("run_dir", "history", "attempts", "checkpoint", "report", "model", "seconds")
        out = {name: getattr(self, name) for name in fields}
        out["restored_epoch"] = self.restored_epoch
        out["evaluation"] = self.evaluation.to_json() if self.evaluation else None
        return out


def fit_featurized(
    net: TransferNet,
    feature_set: FeatureSet | str,
    config: TrainConfig | None = None,
    saved: SavedNet | None = None,
) -> FitResult:
    """Train ``net.trainable()`` on a feature set made by ``net``'s frozen prefix (refused,
    naming the field, if it was not). Needs a running Ray (the caller's ``ray.init``).
    ``saved``: ``net``'s save form when the caller made it already."""
    config = config or TrainConfig()
    fs = FeatureSet.open(feature_set) if isinstance(feature_set, str) else feature_set
    check_feature_set(net, fs)
    rows = fs.count(config.train_split)
    check_rows(rows, fs.count(config.val_split, plain=True), config, fs.uri)
    check_labeled(fs.unlabeled, config, fs.uri)
    skipped = None
    if fs.manifest.get("errors"):  # listed in the report: the first rows of the errors table
        first = fs.errors().select(["source", "reason"]).slice(0, SKIPPED_ROWS).to_pylist()
        skipped = (fs.skipped(), first)
    return _fit_on(
        net,
        FeatureInput(absolute_uri(fs.uri)),
        rows,
        fs.manifest["fingerprint"],
        fs.classes,
        config,
        saved,
        skipped,
    )


def fit(
    net: TransferNet,
    items: DataPlan,
    config: TrainConfig | None = None,
    saved: SavedNet | None = None,
) -> FitResult:
    """Train ``net.trainable()`` end to end on images: each batch is decoded (and augmented when
    ``config.augment`` is set) and run through the frozen prefix under no-grad."""
    config = config or TrainConfig()
    if not net.spec.get("preprocess"):
        raise ValueError(
            "the network has no preprocessing (resize, crop, mean, std) to read "
            "images with; build it from a zoo model"
        )
    if items.classes is None:
        raise ValueError(
            "end-to-end training needs the class names before it starts, and these shards "
            "label their images without names: give the source's label_names"
        )
    rows = items.count(config.train_split)  # None (shards): the workers count theirs
    if rows is not None:
        check_rows(rows, items.count(config.val_split), config, "the data")
        check_labeled(items.unlabeled, config, "the data")
    data = ImageInput(items, Preprocess(**net.spec["preprocess"]))
    return _fit_on(net, data, rows, items.fingerprint, items.classes, config, saved)


def check_rows(train: int, val: int, cfg: TrainConfig, where: str) -> None:
    """Refuse data without rows to train on, or without the split the metric needs."""
    if not train:
        raise ValueError(f"{where} has no {cfg.train_split!r} rows to train on (train.train_split)")
    if not val and cfg.metric.startswith("val_"):
        raise ValueError(
            f"{where} has no {cfg.val_split!r} rows, so {cfg.metric} cannot be "
            "measured: give data a val split, or set train.metric=train_loss "
            "train.mode=min"
        )


def check_labeled(unlabeled, cfg: TrainConfig, where: str) -> None:
    """Refuse to train on, or select by, images without labels (``unlabeled(split)`` counts
    them): they come from a folder without class folders or a manifest without labels."""
    for split in (cfg.train_split, cfg.val_split):
        missing = unlabeled(split)
        if missing:
            raise ValueError(
                f"{where} has {missing} unlabeled images in split {split!r}: training needs "
                "labels (class folders, or a label column); unlabeled images can be "
                "featurized and predicted"
            )


def run_name(saved: SavedNet, data_identity: str, cfg: TrainConfig) -> str:
    """The default run name: ``<label>-<hash>``, the hash of the network (spec and weights), the
    data and every setting that changes the result, so changing any of them starts a new run
    instead of resuming."""
    spec = saved.spec
    unchanged = {"name", "label", "storage", "max_failures"}
    if cfg.memory_budget is None:  # unset: the names of runs from before the setting hold
        unchanged.add("memory_budget")
    settings = cfg.model_dump(mode="json", exclude=unchanged)
    model = str((spec.get("base") or {}).get("model", "net")).replace(":", "_")
    return default_name(cfg.label or model, [spec, data_identity, settings])


def torch_trainer(
    spec: WorkerSpec, name: str, storage: str, callbacks: list | None = None
) -> TorchTrainer:
    """The TorchTrainer of a fit: ``train_worker`` on ``spec.train.workers`` ranks, best-k
    checkpoints by the metric, restarts from the last checkpoint on failure."""
    cfg = spec.train
    return TorchTrainer(
        train_worker,
        train_loop_config={"spec": spec},
        scaling_config=ScalingConfig(
            num_workers=cfg.workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker={"CPU": cfg.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            callbacks=callbacks or [],
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.keep,
                checkpoint_score_attribute=cfg.metric,
                checkpoint_score_order=cfg.mode,
            ),
        ),
    )


def _fit_on(
    net: TransferNet,
    data: FeatureInput | ImageInput,
    rows: int | None,
    identity: str,
    classes: list[str],
    cfg: TrainConfig,
    saved: SavedNet | None = None,
    skipped: tuple[str, list[dict]] | None = None,
) -> FitResult:
    saved = saved or net.saved()  # once: the run's name and the workers' copy
    settings = run_name(saved, identity, cfg)  # names the network, data and settings
    name = cfg.name or settings
    storage = absolute_uri(cfg.storage)
    run_dir = f"{storage.rstrip('/')}/{name}"
    finished = _finished(net, run_dir, classes, settings, named=cfg.name is not None)
    if finished is not None:
        mark_latest(storage, name)  # `latest` is the run this command stands for
        log.info(finished.summary())
        return finished
    start = time.perf_counter()
    log.info(
        "fit: %s, %s training rows, up to %d epochs (Ray Train) -> %s",
        "feature set" if isinstance(data, FeatureInput) else "images",
        rows if rows is not None else "the shards'",
        cfg.epochs,
        run_dir,
    )
    with _EpochProgress(cfg.epochs) as progress:
        spec = WorkerSpec(cfg, saved, data, rows, run_dir, classes, progress.queue)
        result = torch_trainer(spec, name, storage).fit()
    if result.checkpoint is None:
        raise RuntimeError(f"run {run_dir} reported no checkpoint; see its logs")
    state, _, _ = read_checkpoint(result.checkpoint)
    chosen = (
        result.get_best_checkpoint(cfg.metric, cfg.mode)
        if cfg.restore == "best"
        else result.checkpoint
    )
    copy_back(net, chosen)
    net.spec["classes"] = classes  # so the exported network names its outputs
    chosen_state = read_checkpoint(chosen)[0]
    out = FitResult(
        net,
        run_dir,
        state["history"],
        state["attempts"],
        chosen.path,
        seconds=time.perf_counter() - start,
        restored_epoch=chosen_state["history"][-1]["epoch"],
    )
    # the workers validated the restored weights in the epoch that saved them
    out.evaluation = Evaluation.from_json(chosen_state["evaluation"], classes)
    out.report = report.write_report(
        run_dir,
        out.history,
        out.evaluation,
        title=f"{name}: {cfg.metric} ({cfg.restore} checkpoint, epoch {out.restored_epoch})",
        skipped=skipped,
    )
    out.model = f"{run_dir}/model"
    net.save(out.model)
    mark_latest(storage, name)
    with fsspec.open(f"{run_dir}/{RESULT}", "w") as f:  # last: the run is finished
        json.dump(dict(out.to_json(), settings=settings), f, indent=1)
    log.info(out.summary())
    return out


def _finished(
    net: TransferNet, run_dir: str, classes: list[str], settings: str, named: bool
) -> FitResult | None:
    """A run finished with these ``settings``: its result, its model's weights copied into
    ``net``. ``None`` when it is not (new or interrupted: Ray Train resumes it). A run named
    by ``train.name`` that finished with other settings is refused: resuming it would train
    nothing and export its old weights as these settings' result."""
    fs, path = current_fs(f"{run_dir}/{RESULT}")
    if not fs.exists(path):
        return None
    data = json.loads(fs.cat_file(path))
    if data.pop("settings", None) != settings:
        if named:
            raise ConfigError(
                "train.name",
                f"{run_dir} finished with other settings (network, data or training); choose "
                "another train.name, or remove that run to train it again",
            )
        return None
    net.load_state_dict(load(data["model"]).state_dict())
    net.spec["classes"] = classes
    evaluation = data.pop("evaluation")
    out = FitResult(net, **data, finished_before=True)
    out.evaluation = Evaluation.from_json(evaluation, classes) if evaluation else None
    return out


class _EpochProgress:
    """The driver's progress line for a fit: rank 0 puts each epoch's metrics on a queue (a
    small Ray actor), a thread here turns them into the line."""

    def __init__(self, epochs: int):
        self.epochs, self.progress = epochs, Progress("fit", total=epochs)
        self.queue = Queue(actor_options={"num_cpus": 0})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)

    def __enter__(self) -> _EpochProgress:
        self._thread.start()
        return self

    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                metrics = self.queue.get(timeout=1)
            except Empty:
                continue
            except Exception:  # the queue actor is gone: the run is ending
                return
            self.progress.update(
                metrics["epoch"], epoch_line(metrics, self.epochs).partition(": ")[2]
            )

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.queue.shutdown()
