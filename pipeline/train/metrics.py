"""Measuring a classifier: counts that add up across batches and workers, the evaluation they
make (accuracy, top-k, per class, confusion), early stopping.

Example:

    >>> import torch
    >>> from pipeline.train.metrics import Evaluation
    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    >>> e = Evaluation.from_logits(logits, torch.tensor([0, 1, 1]), ["cat", "dog"], k=1)
    >>> round(e.accuracy, 3), e.confusion
    (0.667, [[1, 0], [1, 1]])
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Counts:
    """Sums that add up across batches and workers (the confusion matrix too, when kept)."""

    loss: float = 0.0
    correct: float = 0.0
    topk: float = 0.0
    n: float = 0.0
    k: int = 1
    confusion: torch.Tensor | None = None

    @classmethod
    def of(
        cls, logits: torch.Tensor, labels: torch.Tensor, k: int, confusion: bool = True
    ) -> Counts:
        k = min(k, logits.shape[1])
        loss = F.cross_entropy(logits.float(), labels, reduction="sum").item()
        top = logits.topk(k, dim=1).indices
        matrix = None
        if confusion:
            matrix = torch.zeros(logits.shape[1], logits.shape[1], dtype=torch.int64)
            matrix.index_put_(
                (labels.cpu(), top[:, 0].cpu()),
                torch.ones(len(labels), dtype=torch.int64),
                accumulate=True,
            )
        return cls(
            loss,
            (top[:, 0] == labels).sum().item(),
            (top == labels[:, None]).any(1).sum().item(),
            len(labels),
            k,
            matrix,
        )

    def __add__(self, other: Counts) -> Counts:
        if not self.n:
            return other
        matrix = (
            self.confusion + other.confusion
            if self.confusion is not None and other.confusion is not None
            else None
        )
        return Counts(
            self.loss + other.loss,
            self.correct + other.correct,
            self.topk + other.topk,
            self.n + other.n,
            self.k,
            matrix,
        )

    def all_reduce(self, world: int, classes: int) -> Counts:
        """Sum over the workers (a worker with an empty shard contributes zeros)."""
        if world == 1:
            return self
        matrix = (
            self.confusion
            if self.confusion is not None
            else torch.zeros(classes, classes, dtype=torch.int64)
        )
        sums = torch.cat(
            [
                torch.tensor([self.loss, self.correct, self.topk, self.n], dtype=torch.float64),
                matrix.flatten().double(),
            ]
        )
        torch.distributed.all_reduce(sums)
        return Counts(*sums[:4].tolist(), self.k, sums[4:].round().long().view(classes, classes))

    def metrics(self, prefix: str) -> dict[str, float]:
        n = max(self.n, 1)
        out = {f"{prefix}_loss": self.loss / n, f"{prefix}_accuracy": self.correct / n}
        if prefix != "train":
            out[f"{prefix}_top{self.k}"] = self.topk / n
        return out


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
        return {
            c: (row[i] / sum(row) if sum(row) else float("nan"))
            for i, (c, row) in enumerate(zip(self.classes, self.confusion))
        }

    @classmethod
    def from_logits(
        cls, logits: torch.Tensor, labels: torch.Tensor, classes: list[str], k: int = 5
    ) -> Evaluation:
        return cls.from_counts(Counts.of(logits, labels, k), classes)

    @classmethod
    def from_counts(cls, counts: Counts, classes: list[str]) -> Evaluation:
        n, size = max(counts.n, 1), len(classes)
        confusion = (
            counts.confusion
            if counts.confusion is not None
            else torch.zeros(size, size, dtype=torch.int64)
        )
        return cls(
            classes,
            int(counts.n),
            counts.loss / n,
            counts.correct / n,
            {counts.k: counts.topk / n},
            confusion.tolist(),
        )

    def to_json(self) -> dict:
        return {
            "n": self.n,
            "loss": self.loss,
            "accuracy": self.accuracy,
            "top_k": {str(k): v for k, v in self.top_k.items()},
            "confusion": self.confusion,
        }

    @classmethod
    def from_json(cls, data: dict, classes: list[str]) -> Evaluation:
        return cls(
            classes,
            data["n"],
            data["loss"],
            data["accuracy"],
            {int(k): v for k, v in data["top_k"].items()},
            data["confusion"],
        )

    def summary(self) -> str:
        tops = ", ".join(f"top-{k} {v:.3f}" for k, v in self.top_k.items())
        worst = sorted(self.per_class.items(), key=lambda kv: kv[1])[:3]
        return (
            f"{self.n} examples: accuracy {self.accuracy:.3f}, {tops}, loss {self.loss:.4f};"
            f" weakest classes: " + ", ".join(f"{c} {a:.2f}" for c, a in worst)
        )


def should_stop(history: list[dict], metric: str, mode: str, patience: int | None) -> bool:
    """Early stopping: the best ``metric`` is more than ``patience`` epochs old."""
    if not patience or not history:
        return False
    values = [h[metric] for h in history]
    best = values.index(max(values) if mode == "max" else min(values))
    return len(values) - 1 - best >= patience


@torch.no_grad()
def evaluate_batches(model: torch.nn.Module, batches: Iterable, k: int) -> Counts:
    """Counts of ``model`` over ``(inputs, labels)`` batches, in eval mode."""
    model.eval()
    total = Counts(k=k)  # what an empty shard reports
    for inputs, labels in batches:
        total = total + Counts.of(model(*inputs), labels, k)
    return total
