"""The op registry: every builder method that edits a network is an op, recorded on each
outermost call (its name, its arguments, layers as JSON specs) so that a saved network is rebuilt
by replaying its ops by name, and an op cannot be added that saves but does not load.

Example:

    >>> from pipeline.net.builder import TransferLearning
    >>> from pipeline.net.ops import OPS
    >>> "set_feature_extractor" in OPS, TransferLearning.ops() == list(OPS)
    (True, True)
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from torch import nn

from pipeline.net.layers import layer_from_spec, layer_to_spec
from pipeline.settings import FineTuneConfig

OPS: dict[str, Callable] = {}


def op(method: Callable) -> Callable:
    """Register a builder method as an op: each outermost call is recorded (name, arguments,
    layers as specs) in the built network's spec, and :meth:`TransferLearning.replay` finds it
    by name."""

    @functools.wraps(method)
    def recorded(self, *args, **kwargs):
        self._depth += 1
        try:
            method(self, *args, **kwargs)
        finally:
            self._depth -= 1
        if self._depth == 0:
            self._ops.append(
                {
                    "op": method.__name__,
                    "args": [encode_arg(a) for a in args],
                    "kwargs": {k: encode_arg(v) for k, v in kwargs.items()},
                }
            )
        return self

    OPS[method.__name__] = recorded
    return recorded


def encode_arg(value):
    if isinstance(value, nn.Module):
        return {"__layer__": layer_to_spec(value)}
    return value.model_dump() if isinstance(value, FineTuneConfig) else value


def decode_arg(value):
    if isinstance(value, dict) and "__layer__" in value:
        return layer_from_spec(value["__layer__"])
    return value
