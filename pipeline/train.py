"""Fit the trainable part of a network: from a feature set or end to end, on Ray Train.

``fit_featurized`` (DL4J's ``fitFeaturized``) trains ``net.trainable()`` on a feature set;
``fit`` trains it on raw images, running the frozen prefix under no-grad and augmenting on the
fly. Both run the same per-worker loop in a ``TorchTrainer``: every worker reads its shard, each
epoch reports metrics and a checkpoint (``spec.json`` + ``model.safetensors``, a loadable network,
plus the optimizer state in safetensors), the best ``keep`` checkpoints survive, training stops
early after ``patience`` epochs without improvement, and a failed worker group restarts from the
last checkpoint. When a fit returns, the trained weights are in ``net`` (DL4J's copy-back) and the
run directory holds TensorBoard events, ``report.html`` with PNG curves, and the exported model.

Example::

    >>> import ray
    >>> from pipeline.train import TrainConfig, fit_featurized
    >>> ray.init(address="local", num_cpus=2)                                  # doctest: +SKIP
    >>> result = fit_featurized(net, "runs/features/tiny_cnn-pool-0123",      # doctest: +SKIP
    ...                         TrainConfig(epochs=5, patience=2))
    >>> print(result.summary())                                                 # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from pipeline import report
from pipeline.featureset import ID, LABEL, SOURCE, SPLIT, FeatureSet, FeatureSetError
from pipeline.featurize import (AugmentConfig, BadImage, PrefixModel, augmentation, read_image,
                                view_seed)
from pipeline.finetune import FineTuneConfig, build_optimizer, clip_gradients
from pipeline.sources import Items
from pipeline.surgery import TransferNet, from_files
from pipeline.zoo import Preprocess

if TYPE_CHECKING:
    from pipeline.config import TrainJobConfig


class TrainConfig(BaseModel):
    """How the trainable part is fitted, checkpointed, stopped and scaled."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, description="run name; re-running the same name resumes the "
                                               "run. Default: a hash of the net, data and config")
    storage: str = Field("runs/train", description="runs live in <storage>/<name>; use shared "
                                                   "storage (NFS, s3://) on a multi-node cluster")
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(64, gt=0, description="per worker")
    fine_tune: FineTuneConfig | None = Field(None, description="default: the network's own")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    bn_eval: bool = Field(True, description="keep the trainable part's BatchNorm layers in "
                                            "inference mode (their running statistics fixed; "
                                            "scale and shift still train), as is usual when "
                                            "fine-tuning pretrained blocks on a small dataset")
    metric: str = Field("val_accuracy", description="what best-k, early stopping and restore use")
    mode: Literal["max", "min"] = "max"
    keep: int = Field(2, gt=0, description="best checkpoints kept (the latest is kept too)")
    patience: int | None = Field(None, gt=0, description="stop after this many epochs without "
                                                         "improving the metric")
    restore: Literal["best", "last"] = Field("best", description="which weights end up in the net")
    top_k: int = Field(5, gt=1, description="also report top-k accuracy")
    train_split: str = "train"
    val_split: str = "val"
    workers: int = Field(1, gt=0)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1, gt=0)
    max_failures: int = Field(0, ge=-1, description="worker-group restarts from the last "
                                                    "checkpoint (-1: unlimited)")
    augment: AugmentConfig | None = Field(None, description="end-to-end only: random resized crop "
                                                            "and flip per epoch; none when unset")
    max_image_pixels: int = Field(89_478_485, gt=0)
    fail_after_epoch: int | None = Field(
        None, description="fault injection for tests: rank 0 raises once, after reporting this "
                          "epoch")


# ---------------------------------------------------------------------------- metrics

@dataclass
class Evaluation:
    """Loss, accuracy, top-k, per-class accuracy and the confusion matrix (rows: true class)."""

    classes: list[str]
    n: int
    loss: float
    accuracy: float
    top_k: dict[int, float]
    confusion: list[list[int]]

    @property
    def per_class(self) -> dict[str, float]:
        return {c: (row[i] / sum(row) if sum(row) else float("nan"))
                for i, (c, row) in enumerate(zip(self.classes, self.confusion))}

    @classmethod
    def from_logits(cls, logits: torch.Tensor, labels: torch.Tensor, classes: list[str],
                    k: int = 5) -> Evaluation:
        return cls.from_counts(_Counts.of(logits, labels, k), classes)

    @classmethod
    def from_counts(cls, counts: _Counts, classes: list[str]) -> Evaluation:
        n, size = max(counts.n, 1), len(classes)
        confusion = (counts.confusion if counts.confusion is not None
                     else torch.zeros(size, size, dtype=torch.int64))
        return cls(classes, int(counts.n), counts.loss / n, counts.correct / n,
                   {counts.k: counts.topk / n}, confusion.tolist())

    def to_json(self) -> dict:
        return {"n": self.n, "loss": self.loss, "accuracy": self.accuracy,
                "top_k": {str(k): v for k, v in self.top_k.items()}, "confusion": self.confusion}

    @classmethod
    def from_json(cls, data: dict, classes: list[str]) -> Evaluation:
        return cls(classes, data["n"], data["loss"], data["accuracy"],
                   {int(k): v for k, v in data["top_k"].items()}, data["confusion"])

    def summary(self) -> str:
        tops = ", ".join(f"top-{k} {v:.3f}" for k, v in self.top_k.items())
        worst = sorted(self.per_class.items(), key=lambda kv: kv[1])[:3]
        return (f"{self.n} examples: accuracy {self.accuracy:.3f}, {tops}, loss {self.loss:.4f};"
                f" weakest classes: " + ", ".join(f"{c} {a:.2f}" for c, a in worst))


@dataclass
class _Counts:
    """Sums that add up across batches and workers (the confusion matrix too, when kept)."""

    loss: float = 0.0
    correct: float = 0.0
    topk: float = 0.0
    n: float = 0.0
    k: int = 1
    confusion: torch.Tensor | None = None

    @classmethod
    def of(cls, logits: torch.Tensor, labels: torch.Tensor, k: int,
           confusion: bool = True) -> _Counts:
        k = min(k, logits.shape[1])
        loss = F.cross_entropy(logits.float(), labels, reduction="sum").item()
        top = logits.topk(k, dim=1).indices
        matrix = None
        if confusion:
            matrix = torch.zeros(logits.shape[1], logits.shape[1], dtype=torch.int64)
            matrix.index_put_((labels.cpu(), top[:, 0].cpu()), torch.ones(len(labels),
                              dtype=torch.int64), accumulate=True)
        return cls(loss, (top[:, 0] == labels).sum().item(),
                   (top == labels[:, None]).any(1).sum().item(), len(labels), k, matrix)

    def __add__(self, other: _Counts) -> _Counts:
        if not self.n:
            return other
        matrix = (self.confusion + other.confusion if self.confusion is not None
                  and other.confusion is not None else None)
        return _Counts(self.loss + other.loss, self.correct + other.correct,
                       self.topk + other.topk, self.n + other.n, self.k, matrix)

    def all_reduce(self, world: int, classes: int) -> _Counts:
        """Sum over the workers (a worker with an empty shard contributes zeros)."""
        if world == 1:
            return self
        matrix = (self.confusion if self.confusion is not None
                  else torch.zeros(classes, classes, dtype=torch.int64))
        sums = torch.cat([torch.tensor([self.loss, self.correct, self.topk, self.n],
                                       dtype=torch.float64), matrix.flatten().double()])
        torch.distributed.all_reduce(sums)
        return _Counts(*sums[:4].tolist(), self.k, sums[4:].round().long().view(classes, classes))

    def metrics(self, prefix: str) -> dict[str, float]:
        n = max(self.n, 1)
        out = {f"{prefix}_loss": self.loss / n, f"{prefix}_accuracy": self.correct / n}
        if prefix != "train":
            out[f"{prefix}_top{self.k}"] = self.topk / n
        return out


def should_stop(history: list[dict], metric: str, mode: str, patience: int | None) -> bool:
    """Early stopping: the best ``metric`` is more than ``patience`` epochs old."""
    if not patience or not history:
        return False
    values = [h[metric] for h in history]
    best = values.index(max(values) if mode == "max" else min(values))
    return len(values) - 1 - best >= patience


# ---------------------------------------------------------------------------- data

class FeatureData:
    """A worker's shard of a feature-set split, in memory: frontier tensors -> batches."""

    def __init__(self, fs: FeatureSet | None, split: str = "", shard: tuple[int, int] = (0, 1),
                 plain: bool = False):
        if fs is not None:
            self.features, self.labels = fs.tensors(split, torch.float32, shard=shard,
                                                    plain=plain)
            self.names = list(fs.shapes)

    @classmethod
    def of_images(cls, images: ImageData, device) -> FeatureData:
        """Run the frozen prefix over ``images`` once and hold the result: a trial that
        featurizes for itself (the per-trial baseline of ``jobs.benchmark sweep``)."""
        data, parts, labels = cls(None), [], []
        for inputs, y in images.batches(_in_order(len(images)), 0, device):
            parts.append(inputs)
            labels.append(y)
        data.names = images.names
        data.features = {n: torch.cat([p[i] for p in parts]) for i, n in enumerate(data.names)}
        data.labels = torch.cat(labels)
        return data

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, order: list[torch.Tensor], epoch: int, device) -> Iterator:
        for idx in order:
            yield ([self.features[n][idx].to(device) for n in self.names],
                   self.labels[idx].to(device))


class _ImageDataset(torch.utils.data.Dataset):
    """Items -> uint8 crops: the network's own resize and crop, or a random resized crop and
    flip seeded by (item, epoch) so a resumed run sees the same augmentation."""

    def __init__(self, table: pa.Table, preprocess: Preprocess, augment: AugmentConfig | None,
                 max_pixels: int):
        self.ids, self.sources = table.column(ID).to_pylist(), table.column(SOURCE).to_pylist()
        self.size, self.augment, self.max_pixels = preprocess.crop_size, augment, max_pixels
        self.plain = preprocess.resize_crop()
        self.augmented = augmentation(preprocess.crop_size, augment) if augment else None
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        try:
            image = read_image(self.sources[i], self.max_pixels)
        except (BadImage, OSError):
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), False
        if self.augmented is None:
            return self.plain(image), True
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(view_seed(self.ids[i], self.epoch, self.augment.seed))
            return self.augmented(image), True


class ImageData:
    """A worker's shard of an image split: decode (and augment), then the frozen prefix under
    no-grad, so each batch arrives as frontier tensors like :class:`FeatureData`'s."""

    def __init__(self, items: pa.Table, split: str, shard: tuple[int, int], net: TransferNet,
                 preprocess: Preprocess, augment: AugmentConfig | None, max_pixels: int, device):
        table = items.filter(pc.equal(items.column(SPLIT), split))
        table = table.take(pc.sort_indices(table, [(ID, "ascending")]))
        rank, world = shard
        table = table.take(pa.array(np.arange(rank, table.num_rows, world), pa.int64()))
        self.labels = torch.from_numpy(table.column(LABEL).to_numpy().astype(np.int64))
        self.dataset = _ImageDataset(table, preprocess, augment, max_pixels)
        self.prefix = PrefixModel(net.to_files(), net.frontier_shapes(), preprocess,
                                  device=str(device))
        self.names, self.skipped = net.frontier(), 0
        self.say_every: float | None = None  # seconds between progress lines (rank 0)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, order: list[torch.Tensor], epoch: int, device) -> Iterator:
        self.dataset.epoch = epoch
        # its own generator: drawing the loader's seed from the global one would shift dropout
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=[i.tolist() for i in order], generator=torch.Generator())
        start = last = time.perf_counter()
        for step, (idx, (images, ok)) in enumerate(zip(order, loader), 1):
            now = time.perf_counter()
            if self.say_every and now - last > self.say_every:
                last = now
                print(f"epoch {epoch}: batch {step}/{len(order)}, "
                      f"{sum(map(len, order[:step])) / (now - start):.1f} images/s", flush=True)
            self.skipped += int((~ok).sum())
            if ok.any():
                features = self.prefix.forward(images[ok])
                # inference-mode tensors cannot enter autograd: clone them out of it
                yield ([features[n].float().clone() for n in self.names],
                       self.labels[idx][ok].to(device))


def epoch_order(n: int, per_rank: int, batch_size: int, seed: int,
                epoch: int) -> list[torch.Tensor]:
    """A shard's batches for one epoch: a permutation seeded by (seed, epoch), padded by
    wrapping to ``per_rank`` rows so every worker takes the same number of steps (DDP needs it)."""
    if n == 0:
        return []
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator)
    order = order.repeat(math.ceil(per_rank / n))[:per_rank]
    return [order[i:i + batch_size] for i in range(0, per_rank, batch_size)]


def _in_order(n: int, batch_size: int = 256) -> list[torch.Tensor]:
    return [torch.arange(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


# ---------------------------------------------------------------------------- one epoch

def train_epoch(model: torch.nn.Module, batches: Iterable, opt, sched, config: FineTuneConfig,
                label_smoothing: float = 0.0, bn_eval: bool = False) -> _Counts:
    """One pass of SGD over ``batches`` of (frontier tensors, labels)."""
    model.train()
    if bn_eval:
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    total = _Counts()
    for inputs, labels in batches:
        logits = model(*inputs)
        loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(opt, config)
        opt.step()
        sched.step()
        total = total + _Counts.of(logits.detach(), labels, 1, confusion=False)
    return total


@torch.no_grad()
def evaluate_batches(model: torch.nn.Module, batches: Iterable, k: int) -> _Counts:
    model.eval()
    total = _Counts(k=k)  # what an empty shard reports
    for inputs, labels in batches:
        total = total + _Counts.of(model(*inputs), labels, k)
    return total


def fit_local(net: TransferNet, features: dict[str, torch.Tensor], labels: torch.Tensor,
              config: FineTuneConfig | None = None, epochs: int = 10,
              batch_size: int = 32) -> list[float]:
    """Train ``net``'s trainable part on in-memory frontier ``features``, in this process;
    returns the mean loss per epoch. The same epoch as :func:`fit_featurized`, without Ray."""
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
def accuracy_from_features(net: TransferNet, features: dict[str, torch.Tensor],
                           labels: torch.Tensor) -> float:
    """Top-1 accuracy of ``net`` on frontier features."""
    net.eval()
    logits = net.output_from_featurized({k: v.float() for k, v in features.items()})
    return (logits.argmax(1) == labels).float().mean().item()


# ---------------------------------------------------------------------------- checks

class FeatureSetMismatch(FeatureSetError):
    """The feature set was made by another prefix than the network's."""


def _difference(made, have) -> str:
    if isinstance(made, list) and isinstance(have, list):
        only_made = [x for x in made if x not in have]
        only_have = [x for x in have if x not in made]
        return f"only in the feature set: {only_made[:8]}; only in the network: {only_have[:8]}"
    return f"the feature set has {str(made)[:300]}, the network {str(have)[:300]}"


def check_feature_set(net: TransferNet, fs: FeatureSet) -> None:
    """Refuse a feature set that another prefix made, naming the first field that differs."""
    m, base = fs.manifest, net.spec.get("base") or {}
    preprocess = net.spec.get("preprocess")
    checks = [
        ("model", m.get("model"), base.get("model")),
        ("model_kwargs", m.get("model_kwargs"), base.get("kwargs")),
        ("weights_sha256", m.get("weights_sha256"), net.spec.get("weights_sha256")),
        ("frozen", m.get("frozen"), sorted(net.frozen)),
        ("frontier", m.get("frontier"), {k: list(v) for k, v in net.frontier_shapes().items()}),
        ("preprocess", m.get("preprocess") and Preprocess(**m["preprocess"]),
         preprocess and Preprocess(**preprocess)),
        ("prefix_sha256", m.get("prefix_sha256"), net.prefix_sha256()),
    ]
    for name, made, have in checks:
        if made != have:
            raise FeatureSetMismatch(
                f"feature set {fs.uri} was not made by this network's frozen prefix: {name} "
                f"differs ({_difference(made, have)}). Featurize with this network (python -m "
                "jobs.featurize, or jobs.train which featurizes when needed), or train the "
                "network the set was made with.")


# ---------------------------------------------------------------------------- checkpoints

STATE, OPTIMIZER = "state.json", "optimizer.safetensors"


def _save_checkpoint(directory: str, net: TransferNet, opt, sched, state: dict) -> None:
    from safetensors.torch import save_file

    for name, data in net.to_files().items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
    opt_state = opt.state_dict()
    tensors = {f"{i}.{k}": v.detach().cpu().contiguous() for i, s in opt_state["state"].items()
               for k, v in s.items() if torch.is_tensor(v)}
    save_file(tensors, os.path.join(directory, OPTIMIZER))
    with open(os.path.join(directory, STATE), "w") as f:
        json.dump(dict(state, param_groups=opt_state["param_groups"],
                       scheduler=sched.state_dict()), f)


def _read_checkpoint(checkpoint) -> tuple[dict, bytes, dict[str, torch.Tensor]]:
    """(state.json, model.safetensors bytes, optimizer tensors) of a checkpoint; no pickle."""
    from safetensors.torch import load_file

    with checkpoint.as_directory() as d:
        with open(os.path.join(d, STATE)) as f:
            state = json.load(f)
        with open(os.path.join(d, "spec.json"), "rb") as f:
            spec = json.load(f)
        with open(os.path.join(d, "model.safetensors"), "rb") as f:
            blob = f.read()
        optimizer = load_file(os.path.join(d, OPTIMIZER))
    if hashlib.sha256(blob).hexdigest() != spec.get("safetensors_sha256"):
        raise RuntimeError(f"checkpoint {checkpoint.path}: model.safetensors does not match its "
                           "spec.json; the checkpoint is damaged")
    return state, blob, optimizer


def _load_optimizer(opt, sched, state: dict, tensors: dict[str, torch.Tensor]) -> None:
    per_param: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    opt.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
    sched.load_state_dict(state["scheduler"])


def _copy_back(net: TransferNet, checkpoint) -> None:
    """Load a checkpoint's weights into ``net``; the frozen tensors must not have changed."""
    from safetensors.torch import load as load_tensors

    _, blob, _ = _read_checkpoint(checkpoint)
    trained, current = load_tensors(blob), net.state_dict()
    changed = [k for k in sorted(net.frozen_parameter_names())
               if not torch.equal(trained[k], current[k].detach().cpu())]
    if changed:
        raise RuntimeError(f"frozen tensors changed during training: {changed[:5]}; refusing to "
                           "copy the result back (this is a bug: please report it)")
    net.load_state_dict(trained, strict=True)


# ---------------------------------------------------------------------------- the worker

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


def _train_session() -> Session:
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    return Session(ctx.get_world_rank(), ctx.get_world_size(), ray.train.torch.get_device(),
                   ray.train.get_checkpoint, ray.train.report, ray.train.Checkpoint,
                   ray.train.torch.prepare_model)


def tune_session(device: str = "cpu") -> Session:
    """The session of a Tune trial that trains in its own process (one rank)."""
    from ray import tune

    return Session(0, 1, torch.device(device), tune.get_checkpoint, tune.report, tune.Checkpoint,
                   lambda model: model, board=False)


def train_worker(config: dict) -> None:
    """One Ray Train worker: read its shard, train, report a checkpoint every epoch."""
    train_loop(config, _train_session())


def train_loop(config: dict, session: Session) -> None:
    """Read this rank's shard, train ``config["train"]["epochs"]`` epochs (resuming from the
    session's checkpoint), report metrics and a checkpoint every epoch."""
    cfg = TrainConfig.model_validate(config["train"])
    rank, world, device = session.rank, session.world, session.device
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    net = from_files(config["files"]).to(device)
    fine_tune = cfg.fine_tune or FineTuneConfig(**net.spec.get("fine_tune", {}))
    train_data, val_data = _shards(config["data"], net, cfg, (rank, world), device)
    per_rank = math.ceil(config["data"]["rows"] / world)
    steps = math.ceil(per_rank / cfg.batch_size)
    opt, sched = build_optimizer(net, fine_tune, total_steps=cfg.epochs * steps)
    state = {"history": [], "attempts": []}
    if (checkpoint := session.get_checkpoint()) is not None:
        from safetensors.torch import load as load_tensors

        state, blob, optimizer = _read_checkpoint(checkpoint)
        net.load_state_dict(load_tensors(blob), strict=True)  # copied onto the device
        _load_optimizer(opt, sched, state, optimizer)
    if rank == 0 and isinstance(train_data, ImageData):
        train_data.say_every = 30.0
    model = session.prepare(net.trainable())
    history, attempts = state["history"], state["attempts"] + [[]]
    classes = len(config["classes"])
    board = _board(config["run_dir"]) if rank == 0 and session.board else None
    for epoch in range(len(history) + 1, cfg.epochs + 1):
        if should_stop(history, cfg.metric, cfg.mode, cfg.patience):
            break
        start = time.perf_counter()
        torch.manual_seed(fine_tune.seed * 1_000_003 + epoch)  # dropout: same on a resumed run
        order = epoch_order(len(train_data), per_rank, cfg.batch_size, fine_tune.seed, epoch)
        train = train_epoch(model, train_data.batches(order, epoch, device), opt, sched,
                            fine_tune, cfg.label_smoothing, cfg.bn_eval).all_reduce(world, 1)
        val = evaluate_batches(model, val_data.batches(_in_order(len(val_data)), 0, device),
                               min(cfg.top_k, classes)).all_reduce(world, classes)
        metrics = {"epoch": epoch, **train.metrics("train"), **val.metrics("val"),
                   "lr": sched.get_last_lr()[0], "seconds": time.perf_counter() - start}
        if isinstance(train_data, ImageData):  # unreadable images, skipped in every epoch
            metrics["skipped_images"] = _sum(train_data.skipped + val_data.skipped, world)
            train_data.skipped = val_data.skipped = 0
        history.append(metrics)
        attempts[-1].append(epoch)
        evaluation = Evaluation.from_counts(val, config["classes"]).to_json()
        _report(metrics, session, net, opt, sched,
                {"history": history, "attempts": attempts, "evaluation": evaluation})
        if rank == 0:
            _log(metrics, cfg, board)
            _maybe_fail(cfg, epoch, config["run_dir"])
    if board is not None:
        board.close()


def _sum(value: float, world: int) -> float:
    if world == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64)
    torch.distributed.all_reduce(total)
    return total.item()


def _shards(data: dict, net: TransferNet, cfg: TrainConfig, shard, device):
    if data["kind"] == "features":
        fs = FeatureSet.open(data["uri"])
        return (FeatureData(fs, cfg.train_split, shard, plain=False),
                FeatureData(fs, cfg.val_split, shard, plain=True))
    preprocess = Preprocess(**data["preprocess"])
    shards = tuple(ImageData(data["items"], split, shard, net, preprocess, augment,
                             cfg.max_image_pixels, device)
                   for split, augment in ((cfg.train_split, cfg.augment), (cfg.val_split, None)))
    if data["kind"] == "featurize_once":  # the prefix runs once, not every epoch
        return tuple(FeatureData.of_images(images, device) for images in shards)
    return shards


def _report(metrics: dict, session: Session, net, opt, sched, state: dict) -> None:
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if session.rank == 0:  # one copy of the weights; the other ranks hold the same (DDP)
            _save_checkpoint(directory, net, opt, sched, state)
            checkpoint = session.checkpoint_type.from_directory(directory)
        session.report(metrics, checkpoint=checkpoint)


def _board(run_dir: str):
    """TensorBoard events under the run directory (local storage only)."""
    if "://" in run_dir and not run_dir.startswith("file://"):
        return None
    from tensorboardX import SummaryWriter

    return SummaryWriter(os.path.join(run_dir.removeprefix("file://"), "tensorboard"))


def _log(metrics: dict, cfg: TrainConfig, board) -> None:
    top = next(k for k in metrics if k.startswith("val_top"))
    print(f"epoch {metrics['epoch']}/{cfg.epochs}: train loss {metrics['train_loss']:.4f} "
          f"acc {metrics['train_accuracy']:.3f} | val loss {metrics['val_loss']:.4f} "
          f"acc {metrics['val_accuracy']:.3f} {top[4:]} {metrics[top]:.3f} | "
          f"lr {metrics['lr']:.2e} | {metrics['seconds']:.1f} s"
          + (f" | {metrics['skipped_images']:.0f} unreadable images skipped"
             if metrics.get("skipped_images") else ""), flush=True)
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


# ---------------------------------------------------------------------------- the driver

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

    def summary(self) -> str:
        last = self.history[-1] if self.history else {}
        lines = [f"trained {len(self.history)} epochs in {self.seconds:.0f} s "
                 f"(attempts ran epochs {self.attempts}); last: val accuracy "
                 f"{last.get('val_accuracy', float('nan')):.3f}"]
        if self.evaluation is not None:
            lines.append(f"restored {self.checkpoint}: {self.evaluation.summary()}")
        lines.append(f"model: {self.model}  report: {self.report}")
        return "\n".join(lines)


def fit_featurized(net: TransferNet, feature_set: FeatureSet | str,
                   config: TrainConfig | None = None) -> FitResult:
    """Train ``net.trainable()`` on a feature set made by ``net``'s frozen prefix (refused,
    naming the field, if it was not). Needs a running Ray (the caller's ``ray.init``)."""
    config = config or TrainConfig()
    fs = FeatureSet.open(feature_set) if isinstance(feature_set, str) else feature_set
    check_feature_set(net, fs)
    data = {"kind": "features", "uri": absolute_uri(fs.uri), "rows": fs.count(config.train_split)}
    _check_rows(data["rows"], fs.count(config.val_split, plain=True), config, fs.uri)
    return _fit(net, data, fs.manifest["fingerprint"], fs.classes, config)


def fit(net: TransferNet, items: Items, config: TrainConfig | None = None) -> FitResult:
    """Train ``net.trainable()`` end to end on images: each batch is decoded (and augmented when
    ``config.augment`` is set) and run through the frozen prefix under no-grad."""
    config = config or TrainConfig()
    if not net.spec.get("preprocess"):
        raise ValueError("the network has no preprocessing (resize, crop, mean, std) to read "
                         "images with; build it from a zoo model")
    splits = items.table.column(SPLIT).to_pylist()
    data = {"kind": "images", "items": items.table, "preprocess": net.spec["preprocess"],
            "rows": splits.count(config.train_split)}
    _check_rows(data["rows"], splits.count(config.val_split), config, "the items")
    return _fit(net, data, items.fingerprint, items.classes, config)


def _check_rows(train: int, val: int, cfg: TrainConfig, where: str) -> None:
    if not train:
        raise ValueError(f"{where} has no {cfg.train_split!r} rows to train on (train.train_split)")
    if not val and cfg.metric.startswith("val_"):
        raise ValueError(f"{where} has no {cfg.val_split!r} rows, so {cfg.metric} cannot be "
                         "measured: give data a val split, or set train.metric=train_loss "
                         "train.mode=min")


def absolute_uri(uri: str) -> str:
    return uri if "://" in uri else os.path.abspath(uri)


def run_name(net: TransferNet, data_identity: str, cfg: TrainConfig) -> str:
    """The default run name: a hash of the network (spec and weights), the data and every setting
    that changes the result, so changing any of them starts a new run instead of resuming."""
    spec = json.loads(net.to_files()["spec.json"])
    settings = cfg.model_dump(mode="json", exclude={"name", "storage", "max_failures",
                                                    "fail_after_epoch"})
    digest = hashlib.sha256(json.dumps([spec, data_identity, settings], sort_keys=True).encode())
    model = str((net.spec.get("base") or {}).get("model", "net")).replace(":", "_")
    return f"{model}-{digest.hexdigest()[:12]}"


def torch_trainer(loop_config: dict, cfg: TrainConfig, name: str, storage: str,
                  callbacks: list | None = None):
    """The TorchTrainer of a fit: ``train_worker`` on ``cfg.workers`` ranks, best-k
    checkpoints by ``cfg.metric``, restarts from the last checkpoint on failure."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        train_worker, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(
            name=name, storage_path=storage, callbacks=callbacks or [],
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep,
                                               checkpoint_score_attribute=cfg.metric,
                                               checkpoint_score_order=cfg.mode)))


def _fit(net: TransferNet, data: dict, identity: str, classes: list[str],
         cfg: TrainConfig) -> FitResult:
    name = cfg.name or run_name(net, identity, cfg)
    storage = absolute_uri(cfg.storage)
    run_dir = f"{storage.rstrip('/')}/{name}"
    start = time.perf_counter()
    trainer = torch_trainer({"train": cfg.model_dump(mode="json"), "files": net.to_files(),
                             "data": data, "run_dir": run_dir, "classes": classes},
                            cfg, name, storage)
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"run {run_dir} reported no checkpoint; see its logs")
    state, _, _ = _read_checkpoint(result.checkpoint)
    chosen = (result.get_best_checkpoint(cfg.metric, cfg.mode) if cfg.restore == "best"
              else result.checkpoint)
    _copy_back(net, chosen)
    net.spec["classes"] = classes  # so the exported network names its outputs
    out = FitResult(net, run_dir, state["history"], state["attempts"], chosen.path,
                    seconds=time.perf_counter() - start)
    # the workers validated the restored weights in the epoch that saved them
    out.evaluation = Evaluation.from_json(_read_checkpoint(chosen)[0]["evaluation"], classes)
    out.report = report.write_report(run_dir, out.history, out.evaluation,
                                     title=f"{name}: {cfg.metric} ({cfg.restore} checkpoint)")
    out.model = f"{run_dir}/model"
    net.save(out.model)
    return out


# ---------------------------------------------------------------------------- evaluate

def evaluate(net: TransferNet, data: FeatureSet | str | Items, split: str = "val", k: int = 5,
             batch_size: int = 256) -> Evaluation:
    """Metrics, per-class accuracy and confusion matrix of ``net`` on one split of a feature set
    (through the trainable part; the set must match the net) or of images (the whole net)."""
    if isinstance(data, Items):
        preprocess = Preprocess(**net.spec["preprocess"])
        source = ImageData(data.table, split, (0, 1), net, preprocess, None,
                           89_478_485, torch.device("cpu"))
        classes = data.classes
    else:
        fs = FeatureSet.open(data) if isinstance(data, str) else data
        check_feature_set(net, fs)
        source, classes = FeatureData(fs, split, (0, 1), plain=True), fs.classes
    order = _in_order(len(source), batch_size)
    model, logits, labels = net.trainable().eval(), [], []
    with torch.no_grad():
        for inputs, y in source.batches(order, 0, "cpu"):
            logits.append(model(*inputs))
            labels.append(y)
    if not logits:
        raise ValueError(f"nothing to evaluate: split {split!r} has no rows")
    return Evaluation.from_logits(torch.cat(logits), torch.cat(labels), classes, k)


# ---------------------------------------------------------------------------- the job

def build_network(cfg: TrainJobConfig, classes: list[str]) -> TransferNet:
    """The job's network: frozen through ``cfg.cut``, ``cfg.hidden`` blocks inserted before the
    head, the head resized to the classes; seeded, so a re-run builds the same initial head.
    With ``cfg.start_from``, an exported network refrozen at ``cfg.cut`` (DL4J: edit a trained
    network further), its head kept."""
    from pipeline.layers import in_size
    from pipeline.surgery import TransferLearning, load

    fine_tune = cfg.train.fine_tune or FineTuneConfig()
    cut = [cfg.cut] if isinstance(cfg.cut, str) else cfg.cut
    if cfg.start_from:
        net = load(cfg.start_from)
        if net.spec.get("classes") != classes:
            raise ValueError(f"{cfg.start_from} was trained on classes {net.spec.get('classes')}, "
                             f"the data has {classes}")
        net = (TransferLearning(net).set_feature_extractor(*cut)
               .fine_tune_configuration(fine_tune).build())
        net.spec["classes"] = classes
        return net
    torch.manual_seed(fine_tune.seed)
    builder = TransferLearning(cfg.model.name, weights=cfg.model.weights,
                               image_size=cfg.model.image_size, **cfg.model.kwargs)
    if cut:  # no cut: nothing frozen (training from scratch, or all of a pretrained network)
        builder.set_feature_extractor(*cut)
    net = builder.build()
    after, width = net.inputs_of(cfg.head)[0], in_size(net.get_submodule(cfg.head))
    for i, hidden in enumerate(cfg.hidden):
        block = torch.nn.Sequential(torch.nn.Linear(width, hidden), torch.nn.ReLU(),
                                    torch.nn.Dropout(cfg.hidden_dropout))
        builder.insert_layer(f"hidden{i}", block, after=after, init="kaiming")
        after, width = f"hidden{i}", hidden
    if cfg.hidden:
        builder.n_in_replace(cfg.head, width)
    net = builder.n_out_replace(cfg.head, len(classes)).fine_tune_configuration(fine_tune).build()
    net.spec["classes"] = classes  # checkpoints and exports name their outputs
    return net


def run_job(cfg: TrainJobConfig, progress=print) -> FitResult:
    """``jobs.train``: build the net (frozen through ``cfg.cut``, head resized to the classes),
    featurize unless the feature set is cached (``mode: features``), fit, report, export."""
    from pipeline.featurize import featurize
    from pipeline.sources import list_items

    items = list_items(cfg.data)
    net = build_network(cfg, items.classes)
    if cfg.mode == "features":
        feature_set = featurize(net, items, cfg.featurize, progress=progress).feature_sets[0]
        result = fit_featurized(net, feature_set, cfg.train)
    else:
        result = fit(net, items, cfg.train)
    if progress is not None:
        progress(result.summary())
    return result
