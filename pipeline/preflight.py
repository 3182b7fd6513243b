"""Check a job config before Ray starts: data paths, the model and its weights, node names.

Each problem is one :class:`~pipeline.settings.ConfigError` naming the config field, the value
(a relative path shown resolved), the closest valid values and how to list them all, so a
mistake costs a second instead of a Ray start-up and a traceback. The network is built untrained
and traced (no weights read), which is what node names depend on.

Example:

    >>> from pipeline.config import FeaturizeJobConfig
    >>> from pipeline.preflight import check
    >>> from pipeline.settings import ConfigError
    >>> cfg = FeaturizeJobConfig(model={"name": "tiny:cnn"}, cuts=["pool", "fetures.1"],
    ...                          data={"sources": [shapes]})
    >>> try:
    ...     check(cfg)
    ... except ConfigError as e:
    ...     print(e)
    cuts[1]: no node 'fetures.1' in tiny:cnn; did you mean 'features.1', 'features.1.2',
    'features.1.1'? python -m jobs.inspect --model tiny:cnn lists them all
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from pipeline import zoo
from pipeline.config import (
    DemoConfig,
    FeaturizeJobConfig,
    PredictJobConfig,
    TrainJobConfig,
    TuneJobConfig,
)
from pipeline.graph import SurgeryError, TransferNet
from pipeline.layers import RESIZABLE
from pipeline.loading import load
from pipeline.runs import is_local, resolve_latest
from pipeline.settings import ConfigError, DataConfig, ModelConfig
from pipeline.surgery import TransferLearning


def check(cfg) -> None:
    """Raise the first :class:`ConfigError` in ``cfg`` (a job config; others pass)."""
    if isinstance(cfg, PredictJobConfig):
        check_saved(cfg.model, "model")
        check_data(cfg.data)
    elif isinstance(cfg, DemoConfig):
        if cfg.data is not None:
            _exists(str(cfg.data), "data", folder=True)
        net = check_model(cfg.model)
        check_nodes(net, [cfg.head], "head", cfg.model.name)
        check_nodes(net, [cfg.cut] if cfg.cut else [], "cut", cfg.model.name)
    elif isinstance(cfg, TrainJobConfig) and cfg.start_from:
        check_data(cfg.data)
        check_saved(cfg.start_from, "start_from")
        check_nodes(load(cfg.start_from), cfg.cuts(), "cut", cfg.start_from)
    elif isinstance(cfg, TrainJobConfig):
        check_data(cfg.data)
        net = check_model(cfg.model)
        check_nodes(net, [cfg.head], "head", cfg.model.name)
        check_nodes(net, cfg.cuts(), "cut", cfg.model.name)
    elif isinstance(cfg, FeaturizeJobConfig):
        check_data(cfg.data)
        net = check_model(cfg.model)
        for i, cut in enumerate(cfg.cuts):
            check_nodes(net, [cut] if isinstance(cut, str) else cut, f"cuts[{i}]", cfg.model.name)
    elif isinstance(cfg, TuneJobConfig):
        check_data(cfg.data)
        net = check_model(cfg.model)
        check_nodes(net, [cfg.head], "head", cfg.model.name)
        named = [d.through for d in cfg.sweep().depths() if d.through]
        check_nodes(net, named, "space.unfreeze", cfg.model.name)


def check_data(data: DataConfig, field: str = "data.sources") -> None:
    """Every local source exists: a folder, a manifest or shard file, or a glob that matches."""
    for i, source in enumerate(data.sources):
        if any(c in source.uri for c in "*?[") and is_local(source.uri):
            pattern = source.uri.removeprefix("file://")
            if not glob.glob(pattern):
                raise ConfigError(
                    f"{field}[{i}]", f"{Path(pattern).absolute()} matches no file{_where(pattern)}"
                )
            continue
        _exists(source.uri, f"{field}[{i}]", folder=False)


def check_model(model: ModelConfig) -> TransferNet:
    """The model's name and weights resolve; returns the untrained, traced network."""
    try:
        zoo.check_weights(zoo.untrained(model.name), model.weights)
        return TransferLearning(
            zoo.untrained(model.name), image_size=model.image_size, **model.kwargs
        ).build()
    except zoo.ZooError as e:
        raise ConfigError(f"model.{e.field}", str(e)) from e
    except TypeError as e:  # the architecture's constructor refused an argument
        raise ConfigError("model.kwargs", f"{model.kwargs}: {e}") from e


def check_nodes(net: TransferNet, names: list[str], field: str, model: str) -> None:
    """Each of ``names`` is a node or module path of ``net``; the head must be a node."""
    for name in names:
        found = name in net.nodes() if field == "head" else bool(_select(net, name))
        if found:
            continue
        close = net.closest(name)
        if field == "head":  # an output layer is what a head names: offer the net's own
            close = list(dict.fromkeys(close + _output_layers(net)))[:3]
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else "."
        listing = f"python -m jobs.inspect --model {model}"
        if model.endswith("model") or os.sep in model:  # a saved network, not a zoo name
            listing = "net.summary() of the loaded network"
        raise ConfigError(field, f"no node {name!r} in {model}{hint} {listing} lists them all")


def check_saved(path: str, field: str) -> None:
    """``path`` (``latest`` resolved) is a saved network's directory."""
    if not is_local(path):
        return
    saved = Path(resolve_latest(path).removeprefix("file://"))
    if not (saved / "spec.json").is_file():
        raise ConfigError(
            field,
            f"{saved.resolve()} is not a saved network (no spec.json){_where(str(saved))}; a "
            "run's network is <storage>/<run>/model, the latest run's <storage>/latest/model",
        )


def _select(net: TransferNet, name: str) -> list:
    try:
        return net.select(name)
    except SurgeryError:
        return []


def _output_layers(net: TransferNet) -> list[str]:
    """The layers a head can name (Linear, convolutions) nearest the output, last first:
    ``classifier.1`` on mobilenet_v2, ``fc`` on a resnet."""
    resizable = {cls.__name__ for cls in RESIZABLE}
    return [r.name for r in reversed(net.summary().rows) if r.op in resizable][:3]


def _where(path: str) -> str:
    if Path(path).is_absolute():
        return ""
    return f" (relative paths resolve against {Path.cwd()})"


def _exists(uri: str, field: str, folder: bool = False) -> None:
    if not is_local(uri):
        return  # object storage is checked when it is read (credentials live on the workers)
    path = Path(uri.removeprefix("file://"))
    if not path.exists():
        raise ConfigError(field, f"{path.resolve()} does not exist{_where(str(path))}")
    if folder and not path.is_dir():
        raise ConfigError(field, f"{path.resolve()} is not a folder")
