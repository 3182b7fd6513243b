"""Job configs: pydantic models validated once, at the edge, then passed down explicitly."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from pipeline.featurize import FeaturizeConfig
from pipeline.finetune import FineTuneConfig
from pipeline.predict import PredictConfig
from pipeline.sources import DataConfig
from pipeline.train import TrainConfig
from pipeline.tune import AshaConfig, CompareConfig, SearchSpace


class DemoConfig(BaseModel):
    """The newcomer's demo: the packaged pretrained default on a generated (or given) dataset."""

    model_config = ConfigDict(extra="forbid")
    model: str = "default"
    weights: str | None = None
    data: Path | None = Field(None, description="folder-per-class images; generated when unset")
    images_per_class: int = Field(40, gt=1)
    image_size: int = Field(96, ge=16)
    val_fraction: float = Field(0.25, gt=0, lt=1)
    cut: str = Field("_bn1", description="freeze this node and everything before it")
    head: str = Field("_fc", description="the output layer, resized to the number of classes")
    epochs: int = Field(60, gt=0)
    batch_size: int = Field(64, gt=0)
    fine_tune: FineTuneConfig = FineTuneConfig(optimizer="adamw", lr=3e-3, weight_decay=1e-4)
    out: Path = Path("runs/demo")
    seed: int = 0


def load_config(cls: type[BaseModel], path: str | None, overrides: list[str]) -> BaseModel:
    """Read YAML ``path`` (optional) and apply ``key.sub=value`` overrides (values parsed as YAML)."""
    data = yaml.safe_load(Path(path).read_text()) if path else {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must look like key=value (e.g. epochs=5)")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return cls.model_validate(data or {})


class ModelConfig(BaseModel):
    """A zoo network and where its frozen prefix ends."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field("torchvision:mobilenet_v2", description="zoo name (see pipeline.zoo)")
    weights: str | None = Field(None, description="path/URI of a .pth/.safetensors state_dict, "
                                                  "a torchvision enum name, 'hub', or none")
    kwargs: dict = Field(default_factory=dict, description="constructor arguments")


class FeaturizeJobConfig(BaseModel):
    """``python -m jobs.featurize``: one pass over the images, one feature set per cut."""

    model_config = ConfigDict(extra="forbid")
    model: ModelConfig = ModelConfig()
    cuts: list[str | list[str]] = Field(["flatten"], min_length=1,
                                        description="freeze through each of these nodes")
    data: DataConfig
    featurize: FeaturizeConfig = FeaturizeConfig()
    ray_address: str | None = Field(None, description="default: RAY_ADDRESS, a running local "
                                                      "cluster, else a new local instance")


class TrainJobConfig(BaseModel):
    """``python -m jobs.train``: surgery, featurize when needed (cached), fit, report, export."""

    model_config = ConfigDict(extra="forbid")
    model: ModelConfig = ModelConfig()
    cut: str | list[str] = Field("flatten", description="freeze through this node (or nodes)")
    head: str = Field("classifier.1", description="the output layer, resized to the classes")
    start_from: str | None = Field(None, description="an exported network (e.g. an earlier "
                                                     "run's model) to continue from: refrozen at "
                                                     "cut, its trained head kept")
    hidden: list[int] = Field(default_factory=list, description="widths of Linear+ReLU+Dropout "
                                                               "blocks inserted before the head")
    hidden_dropout: float = Field(0.0, ge=0, lt=1)
    mode: Literal["features", "end_to_end"] = Field(
        "features", description="features: featurize once (cached), fit on the feature set; "
                                "end_to_end: decode, augment and run the prefix every epoch")
    data: DataConfig
    featurize: FeaturizeConfig = FeaturizeConfig()
    train: TrainConfig = TrainConfig()
    ray_address: str | None = Field(None, description="default: RAY_ADDRESS, a running local "
                                                      "cluster, else a new local instance")


class TuneJobConfig(BaseModel):
    """``python -m jobs.tune``: featurize every cut in the space once, sweep on Ray Tune, write
    the results table, plots, best network and report. ``preset: compare`` runs the three-row
    scratch / frozen / fine-tuned comparison instead of the search space."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, description="default: a hash of the settings and the data; "
                                               "re-running the same name resumes the sweep")
    storage: str = Field("runs/tune", description="local path or URI the sweeps are written to")
    preset: Literal["sweep", "compare"] = "sweep"
    model: ModelConfig = ModelConfig()
    head: str = Field("classifier.1", description="the output layer, resized to the classes")
    data: DataConfig
    featurize: FeaturizeConfig = FeaturizeConfig()
    space: SearchSpace = SearchSpace()
    compare: CompareConfig = CompareConfig()
    num_samples: int = Field(8, gt=0, description="trials sampled (times each grid point)")
    seed: int = Field(0, description="seeds the sampler and every trial's initialisation")
    metric: str = "val_accuracy"
    mode: Literal["max", "min"] = "max"
    asha: AshaConfig | None = Field(AshaConfig(), description="early stopping; null: none")
    train: TrainConfig = Field(TrainConfig(), description=(
        "per-trial settings not in the space: splits, bn_eval, label smoothing, augment (trials "
        "then read images), workers/use_gpu (trials then run a TorchTrainer)"))
    cpus_per_trial: float = Field(1.0, gt=0, description="CPUs of a trial that trains in its "
                                                         "own process")
    max_concurrent_trials: int | None = Field(None, gt=0, description="default: what the "
                                                                      "cluster's CPUs allow")
    feature_cache: Literal["shared", "per_trial"] = Field(
        "shared", description="shared: every cut featurized once before the trials; per_trial: "
                              "each trial featurizes for itself (the benchmark's baseline)")
    ray_address: str | None = None

    def test_splits(self) -> list[str]:
        """Splits of the data besides train and val that are evaluated at the end (``test``)."""
        return [s for s in self.data.splits if s == "test"]


class PredictJobConfig(BaseModel):
    """``python -m jobs.predict``: classify images with an exported network."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="an exported network: a directory with spec.json and "
                                   "model.safetensors (e.g. <run>/model)")
    data: DataConfig
    predict: PredictConfig = PredictConfig()
    ray_address: str | None = None
