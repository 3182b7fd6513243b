"""Layers and vertices the builder can add, their JSON specs, and weight init/resize helpers.

A spec names a class from an allow-list (``torch.nn`` layers, this module's vertices, classes
passed to :func:`register_layer`) plus constructor arguments read back from the module, so a
saved network is rebuilt without importing or unpickling anything a file names.

Example:

    >>> from torch import nn
    >>> from pipeline.net.layers import layer_from_spec, layer_to_spec
    >>> spec = layer_to_spec(nn.Conv2d(3, 8, 3, padding=1))
    >>> spec["type"], spec["args"]["out_channels"]
    ('torch.nn.Conv2d', 8)
    >>> layer_from_spec(spec)
    Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
"""

from __future__ import annotations

import inspect
import operator

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------- vertices


class Add(nn.Module):
    """Element-wise sum of all inputs (DL4J ElementWiseVertex Add)."""

    def forward(self, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out


class Concat(nn.Module):
    """Concatenation along ``dim`` (DL4J MergeVertex)."""

    def __init__(self, dim: int = 1):
        super().__init__()
        self.dim = dim

    def forward(self, *xs):
        return torch.cat(xs, dim=self.dim)


class GlobalPool(nn.Module):
    """Global average or max pooling over all dims after ``channels``: (N, C, ...) -> (N, C)."""

    def __init__(self, mode: str = "avg"):
        super().__init__()
        if mode not in ("avg", "max"):
            raise ValueError(f"GlobalPool mode must be 'avg' or 'max', got {mode!r}")
        self.mode = mode

    def forward(self, x):
        x = torch.flatten(x, 2)
        return x.mean(-1) if self.mode == "avg" else x.amax(-1)


VERTICES = {
    "add": Add,
    "concat": Concat,
    "flatten": nn.Flatten,
    "avgpool": lambda: GlobalPool("avg"),
    "maxpool": lambda: GlobalPool("max"),
}

# This module's vertices keep the names saved specs have always given them, wherever the
# classes live: a name in a file format, not an import path.
_ALLOWED: dict[str, type[nn.Module]] = {
    f"pipeline.layers.{c.__name__}": c for c in (Add, Concat, GlobalPool)
}
_SAVED_AS = {c: name for name, c in _ALLOWED.items()}


def register_layer(cls: type[nn.Module]) -> type[nn.Module]:
    """Allow a custom layer class in saved specs (its constructor arguments must be attributes
    of the same name). Usable as a decorator."""
    _ALLOWED[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


def _spec_type(module: nn.Module) -> str:
    cls = type(module)
    if cls.__module__.startswith("torch.nn") and hasattr(nn, cls.__name__):
        return f"torch.nn.{cls.__name__}"
    return _SAVED_AS.get(cls) or f"{cls.__module__}.{cls.__qualname__}"


def _resolve_type(name: str) -> type[nn.Module]:
    if name.startswith("torch.nn.") and isinstance(getattr(nn, name[9:], None), type):
        return getattr(nn, name[9:])
    if name in _ALLOWED:
        return _ALLOWED[name]
    raise ValueError(
        f"layer type {name!r} is not allowed in a spec; register it with pipeline.register_layer"
    )


def layer_to_spec(module: nn.Module) -> dict:
    """A JSON-able description from which :func:`layer_from_spec` rebuilds the same layer."""
    type_name = _spec_type(module)
    _resolve_type(type_name)  # fail at save time, not at load time
    if isinstance(module, nn.Sequential):
        return {"type": type_name, "children": [layer_to_spec(m) for m in module]}
    args = {}
    for p in _ctor_params(module):
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in ("device", "dtype"):
            continue
        if not hasattr(module, p.name):
            if p.default is p.empty:
                raise ValueError(
                    f"cannot describe {type(module).__name__}: constructor argument "
                    f"{p.name!r} is not an attribute of the layer"
                )
            continue
        args[p.name] = _jsonable(p.name, getattr(module, p.name))
    return {"type": type_name, "args": args}


def _ctor_params(module: nn.Module) -> list[inspect.Parameter]:
    params = list(inspect.signature(type(module).__init__).parameters.values())[1:]
    if isinstance(module, nn.RNNBase):  # LSTM/GRU take *args; their real ones live on RNNBase
        # (after ``mode``, which the subclass fixes)
        params = list(inspect.signature(nn.RNNBase.__init__).parameters.values())[2:]
        if isinstance(module, nn.RNN):
            params.append(inspect.Parameter("nonlinearity", inspect.Parameter.KEYWORD_ONLY))
        if not isinstance(module, nn.LSTM):  # GRU/RNN refuse proj_size even when it is 0
            params = [p for p in params if p.name != "proj_size"]
    return params


def _jsonable(name: str, value):
    if isinstance(value, nn.Parameter) or value is None and name == "bias":
        return value is not None  # Linear/Conv keep the bias tensor where the ctor took a bool
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, (bool, int, float, str, list)) or value is None:
        return value
    raise ValueError(f"layer argument {name}={value!r} is not JSON-serializable")


def layer_from_spec(spec: dict) -> nn.Module:
    cls = _resolve_type(spec["type"])
    if "children" in spec:
        return cls(*[layer_from_spec(c) for c in spec["children"]])
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.get("args", {}).items()}
    return cls(**args)


# What keeps a tensor's width: what n_out_replace looks through between a resized layer and the
# layers whose inputs follow it.
PASS_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Mish,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Identity,
    nn.Flatten,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    GlobalPool,
)
PASS_FUNCTIONS = {
    torch.relu,
    F.relu,
    F.relu6,
    F.silu,
    F.gelu,
    F.hardswish,
    torch.tanh,
    torch.sigmoid,
    torch.flatten,
    F.adaptive_avg_pool2d,
    F.dropout,
    operator.getitem,
}
PASS_METHODS = {"relu", "sigmoid", "tanh", "flatten", "contiguous"}


# --------------------------------------------------------------------------- init and resize

RESIZABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.LSTM, nn.GRU, nn.RNN)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
INITS = ("default", "xavier", "kaiming", "normal", "zeros", "identity")


def init_layer(layer: nn.Module, init: str) -> None:
    """Initialize every weight matrix of ``layer`` with ``init``; biases to zero."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; valid: {INITS}")
    if init == "default":
        layer.reset_parameters()
        return
    for name, p in layer.named_parameters():
        with torch.no_grad():
            if p.ndim < 2 or name.startswith("bias"):
                p.zero_()
            elif init == "xavier":
                nn.init.xavier_uniform_(p)
            elif init == "kaiming":
                nn.init.kaiming_uniform_(p, nonlinearity="relu")
            elif init == "normal":
                nn.init.normal_(p, std=0.01)
            elif init == "zeros":
                p.zero_()
            else:
                _identity_(layer, name, p)


def _identity_(layer: nn.Module, name: str, p: torch.Tensor) -> None:
    if isinstance(layer, nn.Linear) and p.shape[0] == p.shape[1]:
        nn.init.eye_(p)
    elif (
        isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
        and p.shape[0] == p.shape[1]
        and layer.groups == 1
    ):
        nn.init.dirac_(p)
    else:
        raise ValueError(
            f"identity init needs a square Linear or an ungrouped Conv with "
            f"in == out; got {layer} ({name} {tuple(p.shape)})"
        )


def _gates(layer: nn.Module) -> int:
    return {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}[type(layer)]


def out_size(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return layer.out_features
    if isinstance(layer, (nn.LSTM, nn.GRU, nn.RNN)):
        return layer.hidden_size
    if isinstance(layer, NORMS):
        return layer.num_features
    return layer.out_channels


def in_size(layer: nn.Module) -> int:
    if isinstance(layer, nn.Linear):
        return layer.in_features
    if isinstance(layer, (nn.LSTM, nn.GRU, nn.RNN)):
        return layer.input_size
    return layer.in_channels


def _check_resizable(layer: nn.Module) -> None:
    if not isinstance(layer, RESIZABLE + NORMS):
        raise ValueError(
            f"cannot resize {type(layer).__name__}; resizable: "
            f"{[c.__name__ for c in RESIZABLE + NORMS]}"
        )
    if getattr(layer, "groups", 1) != 1:
        raise ValueError(
            f"cannot resize grouped convolution {layer} (groups={layer.groups}); "
            "cut before it or replace it with add_layer"
        )
    if getattr(layer, "bidirectional", False) or getattr(layer, "proj_size", 0):
        raise ValueError(f"cannot resize bidirectional or projected recurrent layer {layer}")


def resized(
    layer: nn.Module,
    n_in: int | None = None,
    n_out: int | None = None,
    init: str = "xavier",
    preserve: bool = False,
) -> nn.Module:
    """A copy of ``layer`` with ``n_in`` inputs and/or ``n_out`` outputs.

    Without ``preserve`` the new layer is initialized with ``init`` (DL4J semantics). With it,
    existing units keep their weights, new output units get ``init``, and new input columns are
    zero, so the layer computes exactly what it did on the old inputs.
    """
    _check_resizable(layer)
    spec = layer_to_spec(layer)
    args = spec["args"]
    if isinstance(layer, NORMS):
        args["num_features"] = n_out or n_in
    else:
        key_in, key_out = _size_keys(layer)
        args[key_in] = n_in or args[key_in]
        args[key_out] = n_out or args[key_out]
    new = layer_from_spec(spec).to(next(layer.parameters(), torch.empty(0)).device)
    if isinstance(layer, NORMS):
        if preserve:
            _copy_overlap(layer, new)
        return new
    init_layer(new, init)
    if preserve:
        _preserve(layer, new)
    return new


def _size_keys(layer: nn.Module) -> tuple[str, str]:
    if isinstance(layer, nn.Linear):
        return "in_features", "out_features"
    if isinstance(layer, (nn.LSTM, nn.GRU, nn.RNN)):
        return "input_size", "hidden_size"
    return "in_channels", "out_channels"


def _preserve(old: nn.Module, new: nn.Module) -> None:
    """Copy old weights into the leading rows/columns; zero new input columns."""
    with torch.no_grad():
        for name, p_new in new.named_parameters():
            p_old = getattr(old, name)
            if p_new.ndim >= 2:
                p_new[:, p_old.shape[1] :] = 0  # new inputs (incl. new recurrent units) add nothing
        if isinstance(old, (nn.LSTM, nn.GRU, nn.RNN)):
            _preserve_recurrent(old, new)
        else:
            _copy_overlap(old, new)


def _preserve_recurrent(old: nn.Module, new: nn.Module) -> None:
    # Recurrent weights stack the gates along dim 0: copy gate by gate.
    g, h_old, h_new = _gates(old), old.hidden_size, new.hidden_size
    for name, p_new in new.named_parameters():
        p_old = getattr(old, name)
        for k in range(g):
            rows_old = slice(k * h_old, (k + 1) * h_old)
            rows_new = slice(k * h_new, k * h_new + h_old)
            if p_new.ndim == 1:
                p_new[rows_new] = p_old[rows_old]
            else:
                p_new[rows_new, : p_old.shape[1]] = p_old[rows_old]


def _copy_overlap(old: nn.Module, new: nn.Module) -> None:
    """Copy every parameter and buffer of ``old`` into the leading block of ``new``."""
    with torch.no_grad():
        for name, t_new in list(new.named_parameters()) + list(new.named_buffers()):
            t_old = getattr(old, name)
            if t_new.ndim == 0:
                t_new.copy_(t_old)
                continue
            index = tuple(slice(0, min(a, b)) for a, b in zip(t_old.shape, t_new.shape))
            t_new[index] = t_old[index]
