"""The epoch loop every fit runs, in a Ray Train worker or in a Ray Tune trial's own process.

A :class:`WorkerSpec` says what to train (the network's files, the data, the settings); a
:class:`Session` says where (rank, world, device, how to report and find checkpoints). The loop
reads this rank's shard, resumes from the session's checkpoint, trains and validates each
epoch, and reports metrics with a checkpoint (:mod:`pipeline.checkpoints`).

Example (no Ray: the same epoch in this process):

    >>> import torch
    >>> from pipeline.loop import fit_local
    >>> from pipeline.surgery import TransferLearning
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
from dataclasses import dataclass

import fsspec
import ray.train
import ray.train.torch
import torch
import torch.nn.functional as F
from ray import tune
from tensorboardX import SummaryWriter

from pipeline.checkpoints import restore, save_checkpoint
from pipeline.finetune import build_optimizer, clip_gradients
from pipeline.graph import TransferNet
from pipeline.loading import from_files
from pipeline.logs import worker_setup
from pipeline.metrics import Counts, Evaluation, evaluate_batches, should_stop
from pipeline.settings import FineTuneConfig, TrainConfig
from pipeline.shards import ImageData, Input, epoch_order, in_order, open_shards

log = logging.getLogger(__name__)


@dataclass
class WorkerSpec:
    """What one fit trains: the network (its save-format files), the data, how many training
    rows the whole split has (every rank takes the same number of steps), the settings, where
    the run lives and the class names; ``progress``: a queue rank 0 puts each epoch's metrics
    on, for the driver's progress line."""

    train: TrainConfig
    network: dict[str, bytes]
    data: Input
    rows: int
    run_dir: str
    classes: list[str]
    progress: object | None = None  # a ray.util.queue.Queue


@dataclass
class Session:
    """Where the epoch loop runs: a Ray Train worker, or a Ray Tune trial training in its own
    process. The loop, its checkpoints and its resume are the same in both."""

    rank: int
    world: int
    device: torch.device
    get_checkpoint: Callable
    report: Callable  # (metrics, checkpoint=...)
    checkpoint_type: type
    prepare: Callable  # the trainable module -> what the loop trains (DDP under Ray Train)
    board: bool = True  # TensorBoard events (Tune writes its own)


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


def tune_session(device: str = "cpu") -> Session:
    """The session of a Tune trial that trains in its own process (one rank)."""
    return Session(
        0,
        1,
        torch.device(device),
        tune.get_checkpoint,
        tune.report,
        tune.Checkpoint,
        lambda model: model,
        board=False,
    )


def train_worker(config: dict) -> None:
    """One Ray Train worker (``train_loop_config={"spec": WorkerSpec}``)."""
    train_loop(config["spec"], train_session())


# ---------------------------------------------------------------------------- the loop


def train_loop(spec: WorkerSpec, session: Session) -> None:
    """Read this rank's shard, train ``spec.train.epochs`` epochs (resuming from the session's
    checkpoint), report metrics and a checkpoint every epoch."""
    worker_setup()  # Ray Train reset this process's logging; the job's log file comes back
    cfg, rank, world, device = spec.train, session.rank, session.world, session.device
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    net = from_files(spec.network).to(device)
    fine_tune = cfg.fine_tune or FineTuneConfig(**net.spec.get("fine_tune", {}))
    train_data, val_data = open_shards(spec.data, net, cfg, (rank, world), device)
    per_rank = math.ceil(spec.rows / world)
    steps = math.ceil(per_rank / cfg.batch_size)
    opt, sched = build_optimizer(net, fine_tune, total_steps=cfg.epochs * steps)
    state = {"history": [], "attempts": []}
    if (checkpoint := session.get_checkpoint()) is not None:
        state = restore(net, opt, sched, checkpoint)
    if rank == 0 and isinstance(train_data, ImageData):
        train_data.say_every = 30.0
    model = session.prepare(net.trainable())
    history, attempts = state["history"], state["attempts"] + [[]]
    classes = len(spec.classes)
    board = _board(spec.run_dir) if rank == 0 and session.board else None
    for epoch in range(len(history) + 1, cfg.epochs + 1):
        if should_stop(history, cfg.metric, cfg.mode, cfg.patience):
            break
        start = time.perf_counter()
        torch.manual_seed(fine_tune.seed * 1_000_003 + epoch)  # dropout: same on a resumed run
        order = epoch_order(len(train_data), per_rank, cfg.batch_size, fine_tune.seed, epoch)
        train = train_epoch(
            model,
            train_data.batches(order, epoch, device),
            opt,
            sched,
            fine_tune,
            cfg.label_smoothing,
            cfg.bn_eval,
        ).all_reduce(world, 1)
        val = evaluate_batches(
            model, val_data.batches(in_order(len(val_data)), 0, device), min(cfg.top_k, classes)
        ).all_reduce(world, classes)
        metrics = {
            "epoch": epoch,
            **train.metrics("train"),
            **val.metrics("val"),
            "lr": sched.get_last_lr()[0],
            "seconds": time.perf_counter() - start,
        }
        if isinstance(train_data, ImageData):  # unreadable images, skipped in every epoch
            metrics["skipped_images"] = _sum(train_data.skipped + val_data.skipped, world)
            train_data.skipped = val_data.skipped = 0
        history.append(metrics)
        attempts[-1].append(epoch)
        evaluation = Evaluation.from_counts(val, spec.classes).to_json()
        _report(
            metrics,
            session,
            net,
            opt,
            sched,
            {"history": history, "attempts": attempts, "evaluation": evaluation},
        )
        if rank == 0:
            _log(metrics, cfg, board, spec.progress)
            _maybe_fail(cfg, epoch, spec.run_dir)
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


def _sum(value: float, world: int) -> float:
    if world == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64)
    torch.distributed.all_reduce(total)
    return total.item()


def _report(metrics: dict, session: Session, net, opt, sched, state: dict) -> None:
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if session.rank == 0:  # one copy of the weights; the other ranks hold the same (DDP)
            save_checkpoint(directory, net, opt, sched, state)
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


def _maybe_fail(cfg: TrainConfig, epoch: int, run_dir: str) -> None:
    if cfg.fail_after_epoch != epoch:
        return
    fs, path = fsspec.core.url_to_fs(f"{run_dir}/.injected-failure")
    if not fs.exists(path):  # once per run: the restarted worker group carries on
        fs.touch(path)
        raise RuntimeError(f"injected failure after epoch {epoch} (train.fail_after_epoch)")


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
