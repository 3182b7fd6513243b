"""Sweep settings: what a sweep searches, how it schedules its trials, and the compare preset.

Example:

    >>> from pipeline.settings import SearchSpace, Unfreeze
    >>> space = SearchSpace(unfreeze={"grid": [0, "top:2", "layer3"]}, lr=[0.001, 0.01])
    >>> [d.key for d in space.depths()], Unfreeze.parse("top:2") == Unfreeze(top=2)
    (['0', '2', 'layer3'], True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator

from pipeline.settings.base import Settings
from pipeline.settings.model import FineTuneConfig

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
Distribution = dict[Literal["choice", "grid", "uniform", "loguniform", "randint"], list]


@dataclass(frozen=True)
class Unfreeze:
    """Where a sweep's frozen prefix ends, parsed once from its config value.

    ``N`` or ``"top:N"``: the top ``N`` of the network's natural blocks train (0: only the head);
    a node name: frozen through that node; ``"all"``: nothing frozen. ``key`` is the canonical
    text used for trial names and feature-set lookups."""

    top: int | None = None
    through: str | None = None

    @classmethod
    def parse(cls, value: int | str | Unfreeze) -> Unfreeze:
        if isinstance(value, Unfreeze):
            return value
        text = str(value)
        if text == "all":
            return cls()
        if text.isdigit() or text.startswith("top:"):
            n = text.removeprefix("top:")
            if not n.isdigit():
                raise ValueError(f"unfreeze {value!r}: top:N takes a block count, e.g. 'top:2'")
            return cls(top=int(n))
        return cls(through=text)

    @property
    def key(self) -> str:
        return str(self.top) if self.top is not None else self.through or "all"

    @property
    def everything(self) -> bool:
        return self.top is None and self.through is None

    def __str__(self) -> str:
        return self.key


def _check_param(value: Any) -> Any:
    """A search-space value: a constant, a list (a choice), or ``{kind: args}`` with kind in
    DISTRIBUTIONS (``{"loguniform": [1e-4, 1e-1]}``, ``{"grid": [0, 2, 4]}``)."""
    if isinstance(value, dict):
        if len(value) != 1:
            raise ValueError(f"{value!r}: give one of {', '.join(DISTRIBUTIONS)}")
        kind, args = next(iter(value.items()))
        if not args:
            raise ValueError(f"{value!r}: {kind} takes a non-empty list")
        if kind in ("uniform", "loguniform", "randint") and len(args) != 2:
            raise ValueError(f"{value!r}: {kind} takes [low, high]")
    elif isinstance(value, list) and not value:
        raise ValueError("an empty list leaves nothing to choose from")
    return value


def _distribution_hint(value: Any) -> Any:
    """Name the valid distributions before pydantic tries (and lists) every union member."""
    if isinstance(value, dict) and (len(value) != 1 or next(iter(value)) not in DISTRIBUTIONS):
        raise ValueError(
            f"{value!r}: give one of {', '.join(DISTRIBUTIONS)}, e.g. "
            "{'loguniform': [0.0001, 0.1]}, or a value, or a list to choose from"
        )
    return value


class SearchSpace(Settings):
    """What a sweep samples. Each field is a value, a list to choose from, or a distribution
    (``{"loguniform": [lo, hi]}``, ``{"uniform": ...}``, ``{"randint": ...}``, ``{"grid": [...]}``).

    ``unfreeze`` says where the frozen prefix ends: ``N`` or ``"top:N"`` unfreezes the network's
    top N blocks (see ``TransferNet.blocks()``; 0 trains only the head), a node name freezes
    through that node, ``"all"`` freezes nothing. Unlike the other fields, a list of depths is
    a grid: each depth is tried, with ``num_samples`` samples of the rest each;
    ``{"choice": [...]}`` samples depths at random instead."""

    unfreeze: int | str | list[int | str] | Distribution = Field(
        [0],
        description="unfreeze depths: N, 'top:N', a node name or 'all'; a list is tried depth "
        "by depth (num_samples each), {choice: [...]} samples among them",
    )
    lr: float | list[float] | Distribution = {"loguniform": [1e-4, 1e-2]}
    weight_decay: float | list[float] | Distribution = 0.0
    width: int | list[int] | Distribution = Field(
        0, description="width of each hidden Linear+ReLU+Dropout block"
    )
    depth: int | list[int] | Distribution = Field(
        0, description="hidden blocks inserted before the head"
    )
    dropout: float | list[float] | Distribution = 0.0
    optimizer: str | list[str] | Distribution = "adamw"
    batch_size: int | list[int] | Distribution = 32
    epochs: int | list[int] | Distribution = 5

    _hint = field_validator("*", mode="before")(classmethod(lambda cls, v: _distribution_hint(v)))
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

    def depths(self) -> list[Unfreeze]:
        """Every unfreeze depth the sweep can sample, parsed."""
        return [Unfreeze.parse(v) for v in self.choices("unfreeze")]


class AshaConfig(Settings):
    """Asynchronous successive halving: stop trials whose metric trails at each rung."""

    grace_period: int = Field(2, ge=1, description="epochs every trial gets")
    reduction_factor: float = Field(2, gt=1)


COMPARE_ROWS = ("scratch", "frozen", "fine-tuned")


class CompareConfig(Settings):
    """The compare preset: (a) from scratch, all trainable, (b) frozen pretrained prefix + head,
    (c) the top blocks unfrozen, continuing from (b)'s best checkpoint at a lower learning rate
    (the two-stage recipe of the TensorFlow transfer-learning tutorial this follows). Same data,
    batch size and epochs per stage; (c)'s table row counts only its own stage."""

    unfreeze: int | str = Field(
        2, description="row (c): the top N blocks, or a node to freeze through"
    )
    epochs: int = Field(5, gt=0)
    batch_size: int = Field(32, gt=0)
    scratch: FineTuneConfig = FineTuneConfig(
        optimizer="adamw", lr=1e-3, weight_decay=0.01, schedule="cosine"
    )
    frozen: FineTuneConfig = FineTuneConfig(
        optimizer="adamw", lr=3e-3, weight_decay=0.01, schedule="cosine"
    )
    fine_tuned: FineTuneConfig = FineTuneConfig(
        optimizer="adamw", lr=3e-4, weight_decay=0.01, schedule="cosine"
    )

    def depth(self, row: str) -> Unfreeze:
        """Where each row's frozen prefix ends: scratch nothing, frozen below the head,
        fine-tuned below the top ``unfreeze`` blocks."""
        return {
            "scratch": Unfreeze(),
            "frozen": Unfreeze(top=0),
            "fine-tuned": Unfreeze.parse(self.unfreeze),
        }[row]

    def fine_tune(self, row: str) -> FineTuneConfig:
        return {"scratch": self.scratch, "frozen": self.frozen, "fine-tuned": self.fine_tuned}[row]


class SweepConfig(Settings):
    """Where a sweep lives, what it samples and how it schedules its trials (each trial
    trains with the job's ``train`` settings, the sampled ones replaced)."""

    name: str | None = Field(
        None,
        description="default: <label>-<hash of the settings and the data>; re-running the same "
        "name resumes the sweep",
    )
    label: str | None = Field(
        None,
        description="readable start of the default name; jobs set it to the config file's "
        "stem. Default: the preset",
    )
    storage: str = Field("runs/tune", description="local path or URI the sweeps are written to")
    preset: Literal["sweep", "compare"] = Field(
        "sweep",
        description="sweep: sample the search space; compare: the three-row scratch / frozen / "
        "fine-tuned comparison",
    )
    space: SearchSpace = SearchSpace()
    compare: CompareConfig = CompareConfig()
    num_samples: int = Field(8, gt=0, description="trials sampled (times each grid point)")
    seed: int = Field(0, description="seeds the sampler and every trial's initialisation")
    metric: str = "val_accuracy"
    mode: Literal["max", "min"] = "max"
    asha: AshaConfig | None = Field(AshaConfig(), description="early stopping; null: none")
    cpus_per_trial: float = Field(
        1.0, gt=0, description="CPUs of a trial that trains in its own process"
    )
    max_concurrent_trials: int | None = Field(
        None, gt=0, description="default: what the cluster's CPUs allow"
    )
    feature_cache: Literal["shared", "per_trial"] = Field(
        "shared",
        description="shared: every cut featurized once before the trials; per_trial: "
        "each trial featurizes for itself (the benchmark's baseline)",
    )

    def depths(self) -> list[Unfreeze]:
        """Every unfreeze depth a trial of this sweep can train at."""
        if self.preset == "compare":
            return [self.compare.depth(row) for row in COMPARE_ROWS]
        return self.space.depths()

    def max_epochs(self) -> int:
        return (
            self.compare.epochs
            if self.preset == "compare"
            else max(int(e) for e in self.space.choices("epochs"))
        )
