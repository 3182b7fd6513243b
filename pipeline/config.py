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


class PredictJobConfig(BaseModel):
    """``python -m jobs.predict``: classify images with an exported network."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="an exported network: a directory with spec.json and "
                                   "model.safetensors (e.g. <run>/model)")
    data: DataConfig
    predict: PredictConfig = PredictConfig()
    ray_address: str | None = None
