"""What a sweep's trials share and what each one trains.

The driver plans a sweep once (:func:`plan_sweep`): one network per unfreeze depth, built from
the zoo and shipped to trials in its save format, and (by the caller) one feature set per
frozen depth, all computed in one pass before any trial starts. A trial (:class:`Trial`) adds its
own hidden blocks and fine-tune settings and trains on its depth's feature set; one that asks
for augmentation or for nothing frozen (the compare preset's "scratch" row) reads images.

Example: what a sampled trial trains

    >>> from pipeline.settings import SweepConfig, TrainConfig
    >>> from pipeline.tune.plan import Trial
    >>> cfg = SweepConfig(space={"unfreeze": [0, "top:2"], "width": 64, "depth": 1})
    >>> trial = Trial.of(cfg, TrainConfig(), {"unfreeze": "top:2", "lr": 0.01,
    ...     "weight_decay": 0.0, "width": 64, "depth": 1, "dropout": 0.1, "optimizer": "adamw",
    ...     "epochs": 5, "batch_size": 32})
    >>> trial.depth.top, trial.hidden, trial.train.epochs, trial.fine_tune.lr
    (2, [64], 5, 0.01)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.data.featureset import FeatureSet
from pipeline.data.plan import DataPlan
from pipeline.features.plan import check_feature_set
from pipeline.net import zoo
from pipeline.net.graph import TransferNet
from pipeline.net.heads import (
    continued_network,
    cut_for,
    frozen_at,
    head_of,
    with_head,
    zoo_network,
)
from pipeline.net.saved import SavedNet
from pipeline.net.saving import from_files, load
from pipeline.runs.logs import current_file
from pipeline.settings import (
    FineTuneConfig,
    ModelConfig,
    Preprocess,
    SweepConfig,
    TrainConfig,
    Unfreeze,
)
from pipeline.train.data import FeatureInput, ImageInput
from pipeline.train.loop import WorkerSpec


@dataclass
class SweepPlan:
    """What the trials share, prepared once by the driver: where the sweep lives, the per-trial
    training settings, the cut and network (save format) of every unfreeze depth, the feature
    set of each frozen depth, and the data."""

    path: str
    train: TrainConfig
    head: str
    cuts: dict[str, list[str]]
    networks: dict[str, SavedNet]
    items: DataPlan
    preprocess: Preprocess
    feature_sets: dict[str, str] = field(default_factory=dict)
    start_from: str | None = None  # compare: the frozen row's best checkpoint
    log_file: str | None = field(default_factory=current_file)  # the driver's job log

    def frozen_cuts(self) -> dict[str, list[str]]:
        """The depths that freeze something: those a feature set serves."""
        return {key: cut for key, cut in self.cuts.items() if cut}


def plan_sweep(
    cfg: SweepConfig,
    train: TrainConfig,
    model: ModelConfig,
    base: TransferNet,
    items: DataPlan,
    path: str,
) -> SweepPlan:
    """The network of every depth the sweep can sample: a copy of ``base`` (the zoo model, loaded
    once) frozen at the depth's cut, the head resized to the classes (untrained weights for the
    compare preset's scratch row)."""
    head = head_of(base, model)
    cuts, networks = {}, {}
    for depth in cfg.depths():
        cuts[depth.key] = cut = cut_for(base, depth, head)
        source = base
        if cfg.preset == "compare" and depth.everything:  # the scratch row: no pretraining
            untrained = model.model_copy(
                update={"name": zoo.untrained(model.name), "weights": None}
            )
            source = zoo_network(untrained)
        networks[depth.key] = frozen_at(source, cut, head, items.classes, cfg.seed).saved()
    preprocess = Preprocess(**base.spec["preprocess"])
    return SweepPlan(path, train, head, cuts, networks, items, preprocess)


# ---------------------------------------------------------------------------- one trial


@dataclass(frozen=True)
class Trial:
    """One trial's choices, resolved from its sampled parameters (or its compare row)."""

    depth: Unfreeze
    fine_tune: FineTuneConfig
    hidden: list[int]
    dropout: float
    train: TrainConfig
    row: str = ""

    @classmethod
    def of(cls, cfg: SweepConfig, train: TrainConfig, params: dict) -> Trial:
        """The trial of ``params`` (sampled values, or a compare ``row``), trained with
        ``train``'s settings where the sweep samples none."""
        row, compare = params.get("row", ""), cfg.compare
        if row:
            fine_tune = compare.fine_tune(row)
            settings = _trial_train(cfg, train, compare.epochs, compare.batch_size, fine_tune)
            return cls(compare.depth(row), fine_tune, [], 0.0, settings, row)
        fine_tune = FineTuneConfig(
            optimizer=params["optimizer"],
            lr=params["lr"],
            weight_decay=params["weight_decay"],
            schedule="cosine",
            seed=cfg.seed,
        )
        width, depth = int(params["width"]), int(params["depth"])
        return cls(
            Unfreeze.parse(params["unfreeze"]),
            fine_tune,
            [width] * depth if width > 0 else [],
            float(params["dropout"]),
            _trial_train(cfg, train, int(params["epochs"]), int(params["batch_size"]), fine_tune),
        )


def _trial_train(
    cfg: SweepConfig, train: TrainConfig, epochs: int, batch_size: int, fine_tune: FineTuneConfig
) -> TrainConfig:
    update = {
        "epochs": epochs,
        "batch_size": batch_size,
        "fine_tune": fine_tune,
        "metric": cfg.metric,
        "mode": cfg.mode,
    }
    if not train.distributed:  # trains in the trial's own process
        update["cpus_per_worker"] = cfg.cpus_per_trial
    return train.model_copy(update=update)


def trial_network(plan: SweepPlan, trial: Trial) -> TransferNet:
    """The network a trial trains: its depth's network with the trial's hidden blocks and
    fine-tune settings (the compare preset's fine-tuned row continues from the frozen row)."""
    if trial.row == "fine-tuned":
        again = ModelConfig(start_from=plan.start_from, cut=plan.cuts[trial.depth.key])
        return continued_network(load(plan.start_from), again, plan.items.classes, trial.fine_tune)
    net = from_files(plan.networks[trial.depth.key])
    return with_head(net, plan.head, trial.hidden, trial.dropout, trial.fine_tune)


def trial_spec(
    cfg: SweepConfig, plan: SweepPlan, params: dict, run_dir: str
) -> tuple[WorkerSpec, TransferNet]:
    """What a trial trains: its network (with its own hidden blocks and settings), on its
    depth's feature set (or on images when it augments, freezes nothing, or featurizes for
    itself). The spec carries no network: a trial in its own process trains the returned one,
    a distributed trial ships it to its workers in its save format."""
    trial = Trial.of(cfg, plan.train, params)
    net = trial_network(plan, trial)
    key, train = trial.depth.key, trial.train
    if key in plan.feature_sets and train.augment is None and cfg.feature_cache == "shared":
        fs = FeatureSet.open(plan.feature_sets[key])
        check_feature_set(net, fs)
        # the set's own count: unreadable images were recorded and left out of it
        data, rows = FeatureInput(fs.uri), fs.count(train.train_split)
    else:
        once = bool(plan.cuts[key]) and train.augment is None  # per_trial: featurize once
        data = ImageInput(plan.items, plan.preprocess, once)
        rows = plan.items.count(train.train_split)  # None: the workers count their shards
    spec = WorkerSpec(train, None, data, rows, run_dir, plan.items.classes, log_file=plan.log_file)
    return spec, net
