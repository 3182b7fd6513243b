"""The network a job builds: which model, its weights, where its frozen prefix ends, the head,
and how the trainable part is optimized.

Example:

    >>> from pipeline.settings import ModelConfig
    >>> cfg = ModelConfig(name="tiny:cnn", cut="pool", hidden=[16])
    >>> cfg.cuts(), cfg.head is None   # no head named: the network's own output layer
    (['pool'], True)
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from pipeline.settings.base import Settings


class Preprocess(Settings):
    """How an image becomes the network's input tensor (resize, center crop, normalize)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def at_size(self, crop: int) -> Preprocess:
        """The same framing at another crop size: the resize scales with the crop."""
        return self.model_copy(
            update={
                "crop_size": crop,
                "resize_size": round(crop * self.resize_size / self.crop_size),
            }
        )


class ModelConfig(Settings):
    """The network: a zoo model and its weights, frozen through ``cut``, optional hidden blocks
    before ``head``, ``head`` resized to the classes (or an exported network to continue
    from)."""

    name: str = Field(
        "default",
        description="zoo name: default (the packaged EfficientNet-Lite0 with ImageNet weights, "
        "offline), torchvision:ARCH, timm:ARCH, tiny:cnn (see pipeline.net.zoo)",
    )
    weights: str | None = Field(
        None,
        description="path/URI of a .pth/.safetensors state_dict, "
        "a torchvision enum name, 'hub', or none",
    )
    kwargs: dict = Field(default_factory=dict, description="constructor arguments")
    image_size: int | None = Field(
        None,
        ge=16,
        description="square input crops of this size instead of the zoo's (e.g. 96 for small "
        "images on CPU)",
    )
    cut: str | list[str] | None = Field(
        None,
        description="freeze through this node (or these nodes); [] freezes nothing. Default: "
        "everything below the head",
    )
    head: str | None = Field(
        None,
        description="the output layer, resized to the classes. Default: the network's own "
        "(classifier.1 on mobilenet_v2, fc on a resnet, _fc on the default)",
    )
    start_from: str | None = Field(
        None,
        description="an exported network (e.g. an earlier run's model) to continue from: "
        "refrozen at cut, its trained head kept",
    )
    hidden: list[int] = Field(
        default_factory=list,
        description="widths of Linear+ReLU+Dropout blocks inserted before the head",
    )
    hidden_dropout: float = Field(0.0, ge=0, lt=1)

    def cuts(self) -> list[str] | None:
        """``cut`` as a list of node names (empty: nothing frozen; None: below the head)."""
        if self.cut is None:
            return None
        return [self.cut] if isinstance(self.cut, str) else list(self.cut)


class LayerOverride(Settings):
    """Per-layer settings that win over the network-wide ones (DL4J's per-layer updater)."""

    lr: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)


class FineTuneConfig(Settings):
    """DL4J's FineTuneConfiguration: how the trainable part of a network is optimized."""

    optimizer: Literal["sgd", "nesterov", "adam", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    decay_norm_and_bias: bool = False
    schedule: Literal["constant", "cosine", "onecycle"] = "constant"
    grad_clip: float | None = Field(None, gt=0)
    seed: int = 0
    overrides: dict[str, LayerOverride] = Field(default_factory=dict)
