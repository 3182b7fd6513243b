"""Check a job config before Ray starts: data paths, the model and its weights, node names.

Each problem is one :class:`~pipeline.settings.ConfigError` naming the config field, the value
(a relative path shown resolved), the closest valid values and how to list them all, so a
mistake costs seconds instead of a Ray start-up and a traceback. The network is built (weights
loaded, traced) here, once: the job's flow edits what :func:`check` returns.

Example:

    >>> from pipeline.flows.preflight import check
    >>> from pipeline.settings import ConfigError, FeaturizeJobConfig
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

from pipeline.net import zoo
from pipeline.net.errors import SurgeryError
from pipeline.net.graph import TransferNet
from pipeline.net.heads import output_layers, zoo_network
from pipeline.net.saving import load
from pipeline.runs.storage import is_local, resolve_latest
from pipeline.settings import (
    ConfigError,
    DataConfig,
    DemoConfig,
    FeaturizeJobConfig,
    ModelConfig,
    PredictJobConfig,
    TrainJobConfig,
    TuneJobConfig,
)


def check(cfg) -> TransferNet | None:
    """Raise the first :class:`ConfigError` in ``cfg`` (a job config; others pass). Returns the
    network the checks built (the zoo model with its weights, or the exported network the
    config names), which the job's flow edits instead of building it again."""
    if isinstance(cfg, PredictJobConfig):
        check_data(cfg.data)
        return check_saved(cfg.model, "model")
    if isinstance(cfg, DemoConfig):
        if cfg.data is not None:
            _exists(str(cfg.data), "data", folder=True)
        return check_network(cfg.network())
    if isinstance(cfg, FeaturizeJobConfig):
        check_data(cfg.data)
        net = check_network(cfg.model)
        for i, cut in enumerate(cfg.cuts or []):
            check_nodes(net, [cut] if isinstance(cut, str) else cut, f"cuts[{i}]", cfg.model.name)
        return net
    if isinstance(cfg, TrainJobConfig):
        check_data(cfg.data)
        if cfg.model.start_from:
            net = check_saved(cfg.model.start_from, "model.start_from")
            check_nodes(net, cfg.model.cuts() or [], "model.cut", cfg.model.start_from)
            return net
        return check_network(cfg.model)
    if isinstance(cfg, TuneJobConfig):
        check_data(cfg.data)
        net = check_network(cfg.model)
        named = [d.through for d in cfg.sweep.depths() if d.through]
        check_nodes(net, named, "sweep.space.unfreeze", cfg.model.name)
        return net
    return None


def check_network(model: ModelConfig) -> TransferNet:
    """The model resolves (name, weights, constructor arguments) and the nodes it names (head,
    cut) are in it; returns it, weights loaded."""
    net = check_model(model)
    if model.head:
        check_nodes(net, [model.head], "model.head", model.name)
    elif not output_layers(net):
        raise ConfigError(
            "model.head",
            f"{model.name} has no Linear or convolution layer to "
            "resize as its head: name one (python -m jobs.inspect lists them)",
        )
    check_nodes(net, model.cuts() or [], "model.cut", model.name)
    return net


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
    """The model's name and weights resolve (a weights name is checked before anything is
    read); returns the traced network with its weights."""
    try:
        zoo.check_weights(zoo.untrained(model.name), model.weights)
        return zoo_network(model)
    except zoo.ZooError as e:
        raise ConfigError(f"model.{e.field}", str(e)) from e
    except TypeError as e:  # the architecture's constructor refused an argument
        raise ConfigError("model.kwargs", f"{model.kwargs}: {e}") from e


def check_nodes(net: TransferNet, names: list[str], field: str, model: str) -> None:
    """Each of ``names`` is a node or module path of ``net``; the head must be a node."""
    for name in names:
        head = field.endswith("head")
        found = name in net.nodes() if head else bool(_select(net, name))
        if found:
            continue
        close = net.closest(name)
        if head:  # an output layer is what a head names: offer the net's own
            close = list(dict.fromkeys(close + output_layers(net)))[:3]
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else "."
        listing = f"python -m jobs.inspect --model {model}"
        if model.endswith("model") or os.sep in model:  # a saved network, not a zoo name
            listing = "net.summary() of the loaded network"
        raise ConfigError(field, f"no node {name!r} in {model}{hint} {listing} lists them all")


def check_saved(path: str, field: str) -> TransferNet:
    """``path`` (``latest`` resolved) is a saved network's directory; returns it loaded."""
    if is_local(path):
        saved = Path(resolve_latest(path).removeprefix("file://"))
        if not (saved / "spec.json").is_file():
            raise ConfigError(
                field,
                f"{saved.resolve()} is not a saved network (no spec.json){_where(str(saved))}; a "
                "run's network is <storage>/<run>/model, the latest run's <storage>/latest/model",
            )
    try:
        return load(path)
    except SurgeryError as e:
        raise ConfigError(field, str(e)) from e


def _select(net: TransferNet, name: str) -> list:
    try:
        return net.select(name)
    except SurgeryError:
        return []


def _where(path: str) -> str:
    if Path(path).is_absolute():
        return ""
    if "working_dir" in os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", ""):
        return (
            f" (relative paths resolve against {Path.cwd()}, Ray's copy of the submitted tree: "
            "submit with cluster/local.sh, or give absolute paths or URIs)"
        )
    return f" (relative paths resolve against {Path.cwd()})"


def _exists(uri: str, field: str, folder: bool = False) -> None:
    if not is_local(uri):
        return  # object storage is checked when it is read (credentials live on the workers)
    path = Path(uri.removeprefix("file://"))
    if not path.exists():
        raise ConfigError(field, f"{path.resolve()} does not exist{_where(str(path))}")
    if folder and not path.is_dir():
        raise ConfigError(field, f"{path.resolve()} is not a folder")
