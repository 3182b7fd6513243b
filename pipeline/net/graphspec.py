"""A traced graph as JSON, so a network edited from any ``nn.Module`` saves without its class.

Each ``call_module`` node's module is a layer spec (:mod:`pipeline.net.layers`: ``torch.nn`` layers,
this project's vertices and classes passed to ``register_layer``), each ``call_function`` a name
in an allow-listed namespace (``torch``, ``torch.nn.functional``, ``operator``, ``math``,
``torchvision.ops``, and ``getattr``), each ``call_method`` a public ``torch.Tensor`` method, and
each ``get_attr`` a tensor's shape and kind (its values live in ``model.safetensors``). Loading
imports nothing a file names beyond those lists and unpickles nothing. Every torchvision and timm
CNN traces to such a graph; a module outside the allow-list is refused when the graph is
described, with its path, its class and how to register it.

Example:

    >>> import torchvision
    >>> from pipeline.net import graphspec
    >>> from pipeline.net.tracing import trace
    >>> net = trace(torchvision.models.resnet18(num_classes=3))
    >>> spec = graphspec.describe(net)
    >>> sorted(spec["modules"])[:2], len(spec["nodes"])
    (['avgpool', 'bn1'], 71)
"""

from __future__ import annotations

import builtins
import math
import operator

import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn

from pipeline.net.layers import layer_from_spec, layer_to_spec

FORMAT = 1
QUAL = "qualname"  # node.meta key: the module-path name users see
NAMESPACES = {
    "torch": torch,
    "torch.nn.functional": F,
    "operator": operator,
    "math": math,
    "torchvision.ops": torchvision.ops,
}
BUILTINS = {"getattr": builtins.getattr}  # fx records attribute reads (x.shape) this way
_DTYPES = {
    str(t).removeprefix("torch."): t
    for t in (
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.uint8,
        torch.bool,
    )
}


class GraphSpecError(ValueError):
    """A graph element that the JSON format cannot describe or that a spec may not name."""


def qual(node: fx.Node) -> str:
    """A node's user-facing name: its module path (plus the op for functional nodes)."""
    return node.meta.get(QUAL, node.name)


# ---------------------------------------------------------------------------- describe


def describe(gm: fx.GraphModule) -> dict:
    """The graph of ``gm`` as JSON-able data: nodes in order, module specs, tensor shapes."""
    modules, tensors, nodes = {}, {}, []
    for node in gm.graph.nodes:
        target = node.target
        if node.op == "call_module":
            modules[target] = _module_spec(gm, node)
        elif node.op == "get_attr":
            tensors[target] = _tensor_spec(gm, target)
        elif node.op == "call_function":
            target = function_name(node)
        elif node.op == "call_method" and not _is_method(target):
            raise GraphSpecError(
                f"node {qual(node)!r} calls {target!r}, not a public "
                "torch.Tensor method; the graph cannot be saved"
            )
        nodes.append(
            {
                "name": node.name,
                "qual": qual(node),
                "op": node.op,
                "target": target,
                "args": _encode(node.args, node),
                "kwargs": _encode(node.kwargs, node),
            }
        )
    return {"format": FORMAT, "nodes": nodes, "modules": modules, "tensors": tensors}


def _module_spec(gm: fx.GraphModule, node: fx.Node) -> dict:
    module = gm.get_submodule(node.target)
    try:
        return layer_to_spec(module)
    except ValueError as e:
        cls = type(module)
        raise GraphSpecError(
            f"cannot save module {node.target!r} ({cls.__module__}.{cls.__qualname__}): {e}. "
            f"Register the class with pipeline.register_layer({cls.__name__}) (its "
            "constructor arguments must be attributes of the same name), or register the whole "
            "model with pipeline.register_model and start from TransferLearning(name)"
        ) from None


def _tensor_spec(gm: fx.GraphModule, target: str) -> dict:
    *path, name = target.split(".")
    owner = gm.get_submodule(".".join(path))
    tensor = getattr(owner, name)
    kind = "parameter" if isinstance(tensor, nn.Parameter) else "buffer"
    return {
        "kind": kind,
        "shape": list(tensor.shape),
        "dtype": _dtype_name(tensor.dtype),
        "requires_grad": bool(tensor.requires_grad),
    }


def function_name(node: fx.Node) -> str:
    """``namespace.name`` of a call_function target, from the allow-listed namespaces."""
    fn = node.target
    name = getattr(fn, "__name__", "")
    for prefix, namespace in NAMESPACES.items():
        if name and getattr(namespace, name, None) is fn:
            return f"{prefix}.{name}"
    if BUILTINS.get(name) is fn:
        return f"builtins.{name}"
    raise GraphSpecError(
        f"node {qual(node)!r} calls {fn!r}, which is in none of the namespaces a saved graph "
        f"may name ({', '.join(NAMESPACES)}, builtins.getattr). Keep the module that calls it "
        "whole: TransferLearning(model, leaf_modules=(ThatModule,)) and register that module "
        "with pipeline.register_layer"
    )


def _is_method(name) -> bool:
    return isinstance(name, str) and not name.startswith("_") and hasattr(torch.Tensor, name)


def _dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise GraphSpecError(f"dtype {dtype} cannot be saved in a graph spec")
    return name


def _encode(value, node: fx.Node):
    """Node arguments as JSON: node references, numbers, strings, containers, slices, dtypes."""
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if isinstance(value, (list, tuple)):
        items = [_encode(v, node) for v in value]
        return items if isinstance(value, list) else {"tuple": items}
    if isinstance(value, dict):
        return {"dict": {str(k): _encode(v, node) for k, v in value.items()}}
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": str(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, slice):
        return {"slice": [_encode(v, node) for v in (value.start, value.stop, value.step)]}
    if value is Ellipsis:
        return {"ellipsis": True}
    if isinstance(value, torch.dtype):
        return {"dtype": _dtype_name(value)}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).removeprefix("torch.")}
    raise GraphSpecError(
        f"node {qual(node)!r} has an argument {value!r} "
        f"({type(value).__name__}) that a graph spec cannot hold"
    )


# ---------------------------------------------------------------------------- rebuild


def rebuild(spec: dict) -> tuple[nn.Module, fx.Graph]:
    """The root module (layers built from their specs, tensors allocated) and graph that
    :func:`describe` described; the caller loads the tensors' values."""
    if spec.get("format") != FORMAT:
        raise GraphSpecError(
            f"graph spec format {spec.get('format')!r}; this version reads format {FORMAT}"
        )
    root = nn.Module()
    for path, layer in spec["modules"].items():
        _attach(root, path, layer_from_spec(layer))
    for path, tensor in spec["tensors"].items():
        _attach_tensor(root, path, tensor)
    graph, env = fx.Graph(), {}
    for entry in spec["nodes"]:
        args = _decode(entry["args"], env)
        kwargs = _decode(entry["kwargs"], env)
        node = graph.create_node(
            entry["op"], _target(entry), tuple(args), kwargs, name=entry["name"]
        )
        if node.name != entry["name"]:
            raise GraphSpecError(f"node name {entry['name']!r} is not a valid fx node name")
        node.meta[QUAL] = entry["qual"]
        env[entry["name"]] = node
    graph.lint()
    return root, graph


def _target(entry: dict):
    op, target = entry["op"], entry["target"]
    if op == "call_function":
        prefix, _, name = target.rpartition(".")
        fn = (
            BUILTINS.get(name)
            if prefix == "builtins"
            else getattr(NAMESPACES.get(prefix), name, None)
            if prefix in NAMESPACES
            else None
        )
        if fn is None or (name.startswith("_") and prefix != "operator"):
            raise GraphSpecError(f"function {target!r} is not allowed in a graph spec")
        return fn
    if op == "call_method" and not _is_method(target):
        raise GraphSpecError(f"method {target!r} is not allowed in a graph spec")
    return target


def _attach(root: nn.Module, path: str, module: nn.Module) -> None:
    *parents, name = path.split(".")
    owner = root
    for part in parents:
        if not hasattr(owner, part):
            owner.add_module(part, nn.Module())
        owner = getattr(owner, part)
    owner.add_module(name, module)


def _attach_tensor(root: nn.Module, path: str, tensor: dict) -> None:
    *parents, name = path.split(".")
    if parents and not _has_path(root, parents):
        _attach(root, ".".join(parents), nn.Module())
    owner = root.get_submodule(".".join(parents))
    value = torch.empty(tensor["shape"], dtype=_DTYPES[tensor["dtype"]])
    if tensor["kind"] == "parameter":
        owner.register_parameter(name, nn.Parameter(value, tensor["requires_grad"]))
    else:
        owner.register_buffer(name, value)


def _has_path(root: nn.Module, parts: list[str]) -> bool:
    try:
        root.get_submodule(".".join(parts))
        return True
    except AttributeError:
        return False


def _decode(value, env: dict):
    if isinstance(value, list):
        return [_decode(v, env) for v in value]
    if not isinstance(value, dict):
        return value
    ((kind, inner),) = value.items()
    if kind == "node":
        return env[inner]
    if kind == "tuple":
        return tuple(_decode(v, env) for v in inner)
    if kind == "dict":
        return {k: _decode(v, env) for k, v in inner.items()}
    if kind == "float":
        return float(inner)
    if kind == "slice":
        return slice(*(_decode(v, env) for v in inner))
    if kind == "ellipsis":
        return Ellipsis
    if kind == "dtype":
        return _DTYPES[inner]
    if kind == "device":
        return torch.device(inner)
    if kind == "memory_format" and isinstance(getattr(torch, inner, None), torch.memory_format):
        return getattr(torch, inner)
    raise GraphSpecError(f"unknown value {value!r} in a graph spec")
