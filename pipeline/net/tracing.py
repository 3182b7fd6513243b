"""Tracing a model with torch.fx into a :class:`~pipeline.net.graph.TransferNet` whose node
names are the module paths of ``model.named_modules()``.

Example:

    >>> from pipeline.net.tiny import TinyCNN
    >>> from pipeline.net.tracing import trace
    >>> trace(TinyCNN()).nodes()[:3]
    ['x', 'features.0.0', 'features.0.1']
"""

from __future__ import annotations

import math

import torchvision
from torch import nn
from torchvision.models.feature_extraction import NodePathTracer

from pipeline.net.errors import TraceError
from pipeline.net.graph import TransferNet
from pipeline.net.graphspec import QUAL


class _Tracer(NodePathTracer):
    """Remembers the innermost module being traced when tracing fails."""

    failed_at: str | None = None

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_at is None:
                self.failed_at = self.path_of_module(m)
            raise


def trace(model: nn.Module, leaf_modules: tuple[type, ...] = ()) -> TransferNet:
    """Trace ``model`` (in eval mode) into a :class:`TransferNet` with module-path node names."""
    tracer = _Tracer(autowrap_modules=(math, torchvision.ops), leaf_modules=list(leaf_modules))
    was_training = model.training
    model.eval()
    try:
        graph = tracer.trace(model)
    except Exception as e:
        path = tracer.failed_at
        cls = type(model.get_submodule(path)).__name__ if path else type(model).__name__
        raise TraceError(
            f"cannot trace module {path or '<root>'!r} ({cls}): {e}. Mark it as a leaf so it "
            f"stays one node: TransferLearning(model, leaf_modules=({cls},))"
        ) from e
    finally:
        model.train(was_training)
    for node, name in tracer.node_to_qualname.items():
        node.meta[QUAL] = name
    return TransferNet(tracer.root, graph)
