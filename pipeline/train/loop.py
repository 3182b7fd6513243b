"""The epoch loop every fit runs, in a Ray Train worker or in a Ray Tune trial's own process.

A :class:`WorkerSpec` says what to train (the network's files, the data, the settings); :class:`Fit`
trains it an epoch at a time (this rank's shard, the optimizer, the history, the checkpoint format
of :mod:`pipeline.train.checkpoints`). The Ray Train loop drives a ``Fit`` through a
:class:`Session` (rank, world, device, how to report and find checkpoints); a sweep trial drives one
from a Tune ``Trainable`` (:mod:`pipeline.tune.trials`), a step per epoch.

Example (no Ray: the same epoch in this process):

    >>> import torch
    >>> from pipeline.train.loop import fit_local
    >>> from pipeline.net.builder import TransferLearning
    >>> net = TransferLearning("tiny:cnn").set_feature_extractor("flatten").build()
    >>> features = net.featurize(torch.randn(8, 3, 32, 32))
    >>> losses = fit_local(net, features, torch.arange(8) % 2, epochs=2, batch_size=4)
    >>> len(losses)
    2
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import fsspec
import ray.train
import ray.train.torch
import torch
import torch.nn.functional as F
from tensorboardX import SummaryWriter

from pipeline.net.finetune import build_optimizer, clip_gradients
from pipeline.net.graph import TransferNet
from pipeline.net.saved import SavedNet
from pipeline.net.saving import from_files
from pipeline.runs.logs import current_file, worker_setup
from pipeline.settings import FineTuneConfig, TrainConfig
from pipeline.train.checkpoints import restore, save_checkpoint
from pipeline.train.data import Input, epoch_order, in_order, open_shards
from pipeline.train.images import ImageData, StreamedImages
from pipeline.train.metrics import Counts, Evaluation, evaluate_batches, should_stop

log = logging.getLogger(__name__)
FAIL_AFTER_EPOCH = "PIPELINE_FAIL_AFTER_EPOCH"  # tests only: see injected_failure


def injected_failure() -> int | None:
    """The epoch after which rank 0 fails once, from the environment variable
    :data:`FAIL_AFTER_EPOCH` of the process that builds the spec (the tests' fault injection;
    the spec carries it to the workers)."""
    value = os.environ.get(FAIL_AFTER_EPOCH)
    return int(value) if value else None


@dataclass
class WorkerSpec:
    """What one fit trains: the network (its save-format files), the data, how many training
    rows the whole split has (every rank takes the same number of steps), the settings, where
    the run lives and the class names; ``progress``: a queue rank 0 puts each epoch's metrics
    on, for the driver's progress line."""

    train: TrainConfig
    network: SavedNet | None  # None: the caller hands Fit the network it built
    data: Input
    rows: int | None  # None: the ranks count their shards of images
    run_dir: str
    classes: list[str]
    progress: object | None = None  # a ray.util.queue.Queue
    log_file: str | None = field(default_factory=current_file)  # the driver's, when built
    # fault injection for tests, never a setting: rank 0 raises once after this epoch
    fail_after_epoch: int | None = field(default_factory=injected_failure)


@dataclass
class Session:
    """Where the Ray Train loop runs: this worker's rank, world and device, and Ray Train's
    checkpoint and report calls."""

    rank: int
    world: int
    device: torch.device
    get_checkpoint: Callable
    report: Callable  # (metrics, checkpoint=...)
    checkpoint_type: type
    prepare: Callable  # the trainable module -> what the loop trains (DDP under Ray Train)
    board: bool = True  # TensorBoard events under the run directory


def train_session() -> Session:
    """The session of a Ray Train worker."""
    ctx = ray.train.get_context()
    return Session(
        ctx.get_world_rank(),
        ctx.get_world_size(),
        ray.train.torch.get_device(),
        ray.train.get_checkpoint,
        ray.train.report,
        ray.train.Checkpoint,
        ray.train.torch.prepare_model,
    )


def train_worker(config: dict) -> None:
    """One Ray Train worker (``train_loop_config={"spec": WorkerSpec}``)."""
    train_loop(config["spec"], train_session())


# ---------------------------------------------------------------------------- the loop


class Fit:
    """One rank's fit, an epoch at a time: the network rebuilt from its files, this rank's
    shards, the optimizer and schedule, the history. The Ray Train loop and a Tune trial drive
    the same object, so their checkpoints, resume and metrics are the same."""

    def __init__(
        self,
        spec: WorkerSpec,
        rank: int = 0,
        world: int = 1,
        device: torch.device | str = "cpu",
        prepare: Callable = lambda model: model,
        net: TransferNet | None = None,
    ):
        cfg, self.spec, self.rank, self.world = spec.train, spec, rank, world
        self.device = torch.device(device)
        torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
        self.net = (net if net is not None else from_files(spec.network)).to(self.device)
        self.fine_tune = cfg.fine_tune or FineTuneConfig(**self.net.spec.get("fine_tune", {}))
        self.train_data, self.val_data = open_shards(
            spec.data, self.net, cfg, (rank, world), self.device, cache=f"{spec.run_dir}/.engine"
        )
        self.per_rank = self._per_rank(spec.rows)
        steps = math.ceil(self.per_rank / cfg.batch_size)
        self.opt, self.sched = build_optimizer(
            self.net, self.fine_tune, total_steps=cfg.epochs * steps
        )
        self.history: list[dict] = []
        self.attempts: list[list[int]] = [[]]
        self.evaluation: dict = {}
        if rank == 0 and isinstance(self.train_data, ImageData | StreamedImages):
            self.train_data.say_every = 30.0
        self.model = prepare(self.net.trainable())

    def _per_rank(self, rows: int | None) -> int:
        """Training rows every rank steps through an epoch: a streamed shard holds whole files,
        so the busiest rank's rows set every rank's steps; unknown rows (shards of images) are
        counted by the ranks themselves."""
        streamed = getattr(self.train_data, "per_rank", None)
        if streamed:
            return streamed
        if rows is None:
            local = len(self.train_data)
            if not _sum(local, self.world):
                raise ValueError(f"no {self.spec.train.train_split!r} rows to train on")
            return int(_sum(local, self.world, "MAX"))
        return math.ceil(rows / self.world)

    def restore(self, checkpoint) -> None:
        """Continue from a checkpoint (a directory or a Ray ``Checkpoint``)."""
        state = restore(self.net, self.opt, self.sched, checkpoint)
        self.history, self.attempts = state["history"], state["attempts"] + [[]]
        self.evaluation = state.get("evaluation", {})

    @property
    def finished(self) -> bool:
        cfg = self.spec.train
        return len(self.history) >= cfg.epochs or should_stop(
            self.history, cfg.metric, cfg.mode, cfg.patience
        )

    def epoch(self) -> dict:
        """Train and validate the next epoch; return its metrics."""
        cfg, world, epoch = self.spec.train, self.world, len(self.history) + 1
        classes, start = len(self.spec.classes), time.perf_counter()
        torch.manual_seed(self.fine_tune.seed * 1_000_003 + epoch)  # dropout: same on a resume
        order = epoch_order(
            len(self.train_data), self.per_rank, cfg.batch_size, self.fine_tune.seed, epoch
        )
        train = train_epoch(
            self.model,
            self.train_data.batches(order, epoch, self.device),
            self.opt,
            self.sched,
            self.fine_tune,
            cfg.label_smoothing,
            cfg.bn_eval,
        ).all_reduce(world, 1)
        val = evaluate_batches(
            self.model,
            self.val_data.batches(in_order(len(self.val_data)), 0, self.device),
            min(cfg.top_k, classes),
        )
        val = val.all_reduce(world, classes)
        metrics = {
            "epoch": epoch,
            **train.metrics("train"),
            **val.metrics("val"),
            "lr": self.sched.get_last_lr()[0],
            "seconds": time.perf_counter() - start,
            # the busiest worker's peak memory: what streaming a shard (or not) costs
            "worker_peak_mib": _sum(peak_rss_mib(), world, "MAX"),
        }
        if isinstance(self.train_data, ImageData | StreamedImages):  # skipped every epoch
            skipped = self.train_data.skipped + self.val_data.skipped
            metrics["skipped_images"] = _sum(skipped, world)
            self.train_data.skipped = self.val_data.skipped = 0
        self.history.append(metrics)
        self.attempts[-1].append(epoch)
        self.evaluation = Evaluation.from_counts(val, self.spec.classes).to_json()
        return metrics

    def save(self, directory: str) -> None:
        """This fit's checkpoint (network, optimizer, history) into ``directory``."""
        save_checkpoint(
            directory,
            self.net,
            self.opt,
            self.sched,
            {"history": self.history, "attempts": self.attempts, "evaluation": self.evaluation},
        )


def train_loop(spec: WorkerSpec, session: Session) -> None:
    """Read this rank's shard, train ``spec.train.epochs`` epochs (resuming from the session's
    checkpoint), report metrics and a checkpoint every epoch."""
    worker_setup(spec.log_file)  # Ray Train reset this worker's logging: the job's file back
    fit = Fit(spec, session.rank, session.world, session.device, session.prepare)
    if (checkpoint := session.get_checkpoint()) is not None:
        fit.restore(checkpoint)
    board = _board(spec.run_dir) if session.rank == 0 and session.board else None
    while not fit.finished:
        metrics = fit.epoch()
        _report(metrics, session, fit)
        if session.rank == 0:
            _log(metrics, spec.train, board, spec.progress)
            _maybe_fail(spec.fail_after_epoch, metrics["epoch"], spec.run_dir)
    if board is not None:
        board.close()


def train_epoch(
    model: torch.nn.Module,
    batches: Iterable,
    opt,
    sched,
    config: FineTuneConfig,
    label_smoothing: float = 0.0,
    bn_eval: bool = False,
) -> Counts:
    """One pass of SGD over ``batches`` of (frontier tensors, labels)."""
    model.train()
    if bn_eval:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    total = Counts()
    for inputs, labels in batches:
        logits = model(*inputs)
        loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(opt, config)
        opt.step()
        sched.step()
        total = total + Counts.of(logits.detach(), labels, 1, confusion=False)
    return total


def _sum(value: float, world: int, op: str = "SUM") -> float:
    if world == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64)
    torch.distributed.all_reduce(total, op=getattr(torch.distributed.ReduceOp, op))
    return total.item()


def peak_rss_mib(pid: int | str = "self") -> float:
    """A process's peak resident memory so far (VmHWM), in MiB (this one's by default); 0
    where /proc has none or the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(x.split()[1]) for x in f if x.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return 0.0


def _report(metrics: dict, session: Session, fit: Fit) -> None:
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if session.rank == 0:  # one copy of the weights; the other ranks hold the same (DDP)
            fit.save(directory)
            checkpoint = session.checkpoint_type.from_directory(directory)
        session.report(metrics, checkpoint=checkpoint)


def _board(run_dir: str) -> SummaryWriter | None:
    """TensorBoard events under the run directory (local storage only)."""
    if "://" in run_dir and not run_dir.startswith("file://"):
        return None
    return SummaryWriter(os.path.join(run_dir.removeprefix("file://"), "tensorboard"))


def epoch_line(metrics: dict, epochs: int) -> str:
    """One epoch's metrics as a line for people."""
    top = next((k for k in metrics if k.startswith("val_top")), None)
    return (
        f"epoch {metrics['epoch']}/{epochs}: train loss {metrics['train_loss']:.4f} "
        f"acc {metrics['train_accuracy']:.3f} | val loss {metrics['val_loss']:.4f} "
        f"acc {metrics['val_accuracy']:.3f}"
        + (f" {top[4:]} {metrics[top]:.3f}" if top else "")
        + f" | lr {metrics['lr']:.2e} | {metrics['seconds']:.1f} s"
        + (
            f" | {metrics['skipped_images']:.0f} unreadable images skipped"
            if metrics.get("skipped_images")
            else ""
        )
    )


def _log(metrics: dict, cfg: TrainConfig, board, progress) -> None:
    log.info(epoch_line(metrics, cfg.epochs))
    if progress is not None:
        progress.put(metrics)
    if board is not None:
        for key, value in metrics.items():
            if key != "epoch":
                board.add_scalar(key.replace("_", "/", 1), value, metrics["epoch"])
        board.flush()


def _maybe_fail(after: int | None, epoch: int, run_dir: str) -> None:
    if after != epoch:
        return
    fs, path = fsspec.core.url_to_fs(f"{run_dir}/.injected-failure")
    if not fs.exists(path):  # once per run: the restarted worker group carries on
        fs.touch(path)
        raise RuntimeError(f"injected failure after epoch {epoch} ({FAIL_AFTER_EPOCH})")


# ---------------------------------------------------------------------------- without Ray


def fit_local(
    net: TransferNet,
    features: dict[str, torch.Tensor],
    labels: torch.Tensor,
    config: FineTuneConfig | None = None,
    epochs: int = 10,
    batch_size: int = 32,
) -> list[float]:
    """Train ``net``'s trainable part on in-memory frontier ``features``, in this process;
    returns the mean loss per epoch. The same epoch as a Ray fit, without Ray."""
    config = config or FineTuneConfig(**net.spec.get("fine_tune", {}))
    inputs = [features[name].float() for name in net.frontier()]
    steps = math.ceil(len(labels) / batch_size)
    opt, sched = build_optimizer(net, config, total_steps=epochs * steps)
    head, history = net.trainable(), []
    for epoch in range(1, epochs + 1):
        torch.manual_seed(config.seed * 1_000_003 + epoch)
        order = epoch_order(len(labels), len(labels), batch_size, config.seed, epoch)
        batches = (([x[i] for x in inputs], labels[i]) for i in order)
        counts = train_epoch(head, batches, opt, sched, config)
        history.append(counts.loss / counts.n)
    return history


@torch.inference_mode()
def accuracy_from_features(
    net: TransferNet, features: dict[str, torch.Tensor], labels: torch.Tensor
) -> float:
    """Top-1 accuracy of ``net`` on frontier features."""
    net.eval()
    logits = net.output_from_featurized({k: v.float() for k, v in features.items()})
    return (logits.argmax(1) == labels).float().mean().item()
