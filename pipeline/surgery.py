"""Model surgery: Deeplearning4j's TransferLearning builder on a torch.fx graph.

A model is traced once; node names are the module paths of ``model.named_modules()``
(``features.17``, ``layer1.0.add``, ``classifier.1``). Wherever an op takes a name, a module path
that contains several nodes (``features.17``, ``layer3``) selects all of them.

The built :class:`TransferNet` knows its frozen set (the nodes passed to
``set_feature_extractor`` and all their ancestors), the frontier of that set (frozen nodes with a
consumer outside it, skip connections included), the ``prefix()`` that computes the frontier and
the ``trainable()`` subgraph that maps the frontier to the outputs.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from pipeline.surgery import TransferLearning
    >>> net = (TransferLearning("tiny:cnn")
    ...        .set_feature_extractor("features")
    ...        .n_out_replace("fc2", 5)
    ...        .build())
    >>> net.frontier()
    ['features.1.2']
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 5])
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
import operator

import fsspec
import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn
from torchvision.models.feature_extraction import NodePathTracer

from pipeline import zoo
from pipeline.finetune import FineTuneConfig, LayerOverride, check_overrides
from pipeline.layers import (NORMS, RESIZABLE, VERTICES, GlobalPool, in_size, init_layer,
                             layer_from_spec, layer_to_spec, out_size, resized)

SPEC_FORMAT = 1
QUAL = "qualname"


class SurgeryError(ValueError):
    """An edit that cannot be applied; the message says what would work."""


class UnknownNodeError(SurgeryError, KeyError):
    def __str__(self):  # KeyError would repr() the message
        return self.args[0]


class ShapeMismatchError(SurgeryError):
    pass


class TraceError(SurgeryError):
    pass


def _qual(node: fx.Node) -> str:
    return node.meta.get(QUAL, node.name)


def _keep_eval(module: nn.Module, args) -> None:
    """Forward pre-hook on frozen modules: BatchNorm/Dropout stay in inference mode whatever
    ``train()`` was called on."""
    module.training = False


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
            f"stays one node: TransferLearning(model, leaf_modules=({cls},))") from e
    finally:
        model.train(was_training)
    for node, name in tracer.node_to_qualname.items():
        node.meta[QUAL] = name
    return TransferNet(tracer.root, graph)


class TransferNet(fx.GraphModule):
    """A traced network with a frozen set. Build it with :class:`TransferLearning`."""

    def __init__(self, root: nn.Module, graph: fx.Graph, spec: dict | None = None,
                 frozen: frozenset[str] = frozenset()):
        super().__init__(root, graph, class_name="TransferNet")
        self.spec = spec or {}
        self._frozen = frozenset(frozen)

    def __deepcopy__(self, memo):
        res = super().__deepcopy__(memo)
        res.spec, res._frozen = copy.deepcopy(self.spec, memo), self._frozen
        return res

    # ------------------------------------------------------------------ graph queries

    def _nodes(self) -> list[fx.Node]:
        return [n for n in self.graph.nodes if n.op not in ("output", "get_attr")]

    def nodes(self) -> list[str]:
        """Node names in topological order (inputs first)."""
        return [_qual(n) for n in self._nodes()]

    def node(self, name: str) -> fx.Node:
        for n in self.graph.nodes:
            if _qual(n) == name and n.op != "output":
                return n
        raise UnknownNodeError(self._unknown_message(name))

    def select(self, name: str) -> list[fx.Node]:
        """The node called ``name``, or every node inside the module path ``name``."""
        found = [n for n in self._nodes() if _qual(n) == name or _qual(n).startswith(name + ".")]
        if not found:
            raise UnknownNodeError(self._unknown_message(name))
        return found

    def _unknown_message(self, name: str) -> str:
        valid = self.nodes()
        paths = sorted({q.rsplit(".", i)[0] for q in valid for i in range(1, q.count(".") + 1)})
        close = difflib.get_close_matches(name, valid + paths, n=3)
        return (f"no node named {name!r}" + (f"; did you mean {' or '.join(map(repr, close))}?"
                                              if close else ".")
                + f" Valid names, in topological order: {', '.join(valid)}."
                + " A module path such as 'features.3' selects every node inside it.")

    def inputs_of(self, name: str) -> list[str]:
        """Names of the nodes that feed node ``name``."""
        return [_qual(n) for n in self.node(name).all_input_nodes]

    def outputs(self) -> list[str]:
        out = next(n for n in self.graph.nodes if n.op == "output")
        return [_qual(n) for n in out.all_input_nodes]

    def blocks(self) -> list[str]:
        """The network's natural block boundaries, in graph order, output layers excluded:
        module paths a cut can name ("freeze through features.16", "unfreeze the top 2").

        Top-level modules that hold parameters; one with several such children is opened into
        them when its name says it holds blocks (``features``, ``blocks``, ``layers``, ``stages``,
        ``*_blocks``) or when the network has fewer than four such modules (tracing keeps the
        module tree but not the container types, so names and counts decide).
        torchvision's mobilenet_v2 gives ``features.0`` .. ``features.18``, resnets ``layer1`` ..
        ``layer4`` (with the stem's modules before them)."""
        tops = self._children_with_parameters("")
        blocks = []
        for top in tops:
            children = self._children_with_parameters(top)
            opens = len(children) > 1 and (
                len(tops) < 4 or top.lstrip("_") in ("features", "blocks", "layers", "stages")
                or top.endswith("_blocks"))
            blocks.extend(children if opens else [top])
        outputs = self.outputs()
        return [b for b in blocks if not any(o == b or o.startswith(b + ".") for o in outputs)]

    def _children_with_parameters(self, parent: str) -> list[str]:
        """Module paths one level below ``parent`` that own parameters, in graph order."""
        prefix, seen = parent + "." if parent else "", []
        for name in self.nodes():
            if not name.startswith(prefix):
                continue
            child = prefix + name[len(prefix):].split(".")[0]
            if child not in seen:
                seen.append(child)
        found = []
        for child in seen:
            try:
                module = self.get_submodule(child)
            except AttributeError:  # a functional op at this level (flatten, add)
                continue
            if next(module.parameters(), None) is not None:
                found.append(child)
        return found

    @property
    def frozen(self) -> frozenset[str]:
        """Names of the frozen nodes."""
        return self._frozen

    def _frozen_nodes(self) -> set[fx.Node]:
        return {n for n in self.graph.nodes
                if _qual(n) in self._frozen or n.op == "placeholder"}

    def _frontier_nodes(self) -> list[fx.Node]:
        frozen = self._frozen_nodes()
        return [n for n in self.graph.nodes
                if n in frozen and n.op != "get_attr" and any(u not in frozen for u in n.users)]

    def frontier(self) -> list[str]:
        """Frozen nodes (or inputs) whose output is consumed outside the frozen set: what a
        feature set stores. Skip connections crossing the cut put both ends here."""
        return [_qual(n) for n in self._frontier_nodes()]

    def frontier_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-example shape of each frontier tensor (known once the net was shape-checked)."""
        return {_qual(n): n.meta.get("shape") for n in self._frontier_nodes()}

    # ------------------------------------------------------------------ subgraphs

    def _extract(self, inputs: list[fx.Node], targets: list[fx.Node], make_output) -> fx.GraphModule:
        needed, stack = set(), list(targets)
        while stack:
            n = stack.pop()
            if n in needed:
                continue
            needed.add(n)
            if n not in inputs:
                stack.extend(n.all_input_nodes)
        graph, env = fx.Graph(), {}
        for n in inputs:
            env[n] = graph.placeholder(_qual(n).replace(".", "_"))
            env[n].meta = dict(n.meta)
        for n in self.graph.nodes:
            if n in needed and n not in env:
                env[n] = graph.node_copy(n, lambda a: env[a])
        graph.output(make_output(env))
        return fx.GraphModule(self, graph, class_name="Subgraph")

    def prefix(self, targets: list[str] | None = None) -> fx.GraphModule:
        """The frozen part: inputs -> ``{name: tensor}``, in eval mode. ``targets`` (frozen node
        names) defaults to the frontier; a multi-cut featurizer asks for several frontiers."""
        if targets is None:
            outs = self._frontier_nodes()
        else:
            frozen = self._frozen_nodes()
            outs = [self.node(t) for t in targets]
            if thawed := [_qual(n) for n in outs if n not in frozen]:
                raise SurgeryError(f"prefix targets {thawed} are not frozen; frozen nodes: "
                                   f"{sorted(self._frozen)}")
        inputs = [n for n in self.graph.nodes if n.op == "placeholder"]
        gm = self._extract(inputs, outs, lambda env: {_qual(n): env[n] for n in outs})
        return gm.eval()

    def prefix_sha256(self) -> str:
        """Identity of what featurizing computes: the prefix's code, frontier and tensors.
        Edits after the frozen set (a new head) leave it unchanged; any change to a frozen
        weight, the cut or the graph before it changes it."""
        from safetensors.torch import save as save_tensors

        prefix = self.prefix()
        state = {k: v.detach().cpu().contiguous() for k, v in prefix.state_dict().items()}
        digest = hashlib.sha256(prefix.code.encode())
        digest.update(json.dumps(self.frontier()).encode())
        digest.update(save_tensors(state) if state else b"")
        return digest.hexdigest()

    def trainable(self) -> fx.GraphModule:
        """The trainable part: frontier tensors (positional, in ``frontier()`` order) -> outputs.
        It shares parameters with this network, so training it trains the network."""
        out = next(n for n in self.graph.nodes if n.op == "output")
        return self._extract(self._frontier_nodes(), out.all_input_nodes,
                             lambda env: fx.map_arg(out.args[0], lambda a: env[a]))

    unfrozen_graph = trainable  # DL4J TransferLearningHelper.unfrozenGraph

    def featurize(self, *inputs, batch_size: int | None = None) -> dict[str, torch.Tensor]:
        """Frontier outputs, without gradients (DL4J helper ``featurize``), computed
        ``batch_size`` examples at a time when given. ``no_grad`` rather than
        ``inference_mode``: the features are meant to be trained on."""
        prefix, n = self.prefix(), len(inputs[0])
        step = batch_size or n
        with torch.no_grad():
            parts = [prefix(*[x[i:i + step] for x in inputs]) for i in range(0, n, step)]
        return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}

    def output_from_featurized(self, features: dict[str, torch.Tensor]):
        """Network outputs from frontier outputs (DL4J helper ``outputFromFeaturized``)."""
        return self.trainable()(*[features[name] for name in self.frontier()])

    # ------------------------------------------------------------------ freezing

    def _frozen_modules(self) -> dict[str, nn.Module]:
        return {n.target: self.get_submodule(n.target) for n in self.graph.nodes
                if n.op == "call_module" and _qual(n) in self._frozen}

    def frozen_parameter_names(self) -> set[str]:
        """Names (as in ``state_dict``) of every frozen parameter and buffer."""
        names = {f"{path}.{k}" for path, m in self._frozen_modules().items()
                 for k, _ in list(m.named_parameters()) + list(m.named_buffers())}
        names |= {n.target for n in self.graph.nodes
                  if n.op == "get_attr" and _qual(n) in self._frozen}
        return names

    def _apply_freeze(self) -> None:
        frozen_params = self.frozen_parameter_names()
        for name, p in self.named_parameters():
            p.requires_grad_(name not in frozen_params)
        frozen_modules = set(map(id, self._frozen_modules().values()))
        for m in self.modules():
            for key, hook in list(m._forward_pre_hooks.items()):
                if hook is _keep_eval:
                    del m._forward_pre_hooks[key]
            if id(m) in frozen_modules:
                m.register_forward_pre_hook(_keep_eval)
                m.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self._frozen_modules().values():
            m.eval()
        return self

    # ------------------------------------------------------------------ checks

    def check_shapes(self) -> None:
        """Run a zero batch of ``spec['input_shape']`` through the graph, recording each node's
        shape; a layer that cannot take its input raises :class:`ShapeMismatchError`."""
        shape = self.spec.get("input_shape")
        if not shape:
            return
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                _ShapeRecorder(self).run(torch.zeros(2, *shape))
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ save / load

    def to_files(self) -> dict[str, bytes]:
        """The save format in memory: ``{"spec.json": ..., "model.safetensors": ...}``. This is
        how a network travels to Ray workers, so no process ever unpickles weights."""
        from safetensors.torch import save as save_tensors

        if not self.spec.get("base"):
            raise SurgeryError("cannot save a network built from an unregistered nn.Module: "
                               "register its constructor with pipeline.zoo.register(name, build) "
                               "and start from TransferLearning(name)")
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()}
        blob = save_tensors(state)
        spec = dict(self.spec, frozen=sorted(self._frozen),
                    safetensors_sha256=hashlib.sha256(blob).hexdigest())
        return {"spec.json": json.dumps(spec, indent=1).encode(), "model.safetensors": blob}

    def save(self, path: str) -> None:
        """Write ``spec.json`` and ``model.safetensors`` under ``path`` (local or fsspec URI)."""
        files = self.to_files()
        fs, root = fsspec.core.url_to_fs(path)
        fs.makedirs(root, exist_ok=True)
        for name, data in files.items():
            with fs.open(f"{root}/{name}", "wb") as f:
                f.write(data)


class _ShapeRecorder(fx.Interpreter):
    def run_node(self, n: fx.Node):
        try:
            out = super().run_node(n)
        except Exception as e:
            raise ShapeMismatchError(self._explain(n, e)) from e
        if isinstance(out, torch.Tensor):
            n.meta["shape"] = tuple(out.shape[1:])
        return out

    def _explain(self, n: fx.Node, e: Exception) -> str:
        what = self.module.get_submodule(n.target) if n.op == "call_module" else n.target
        inputs = ", ".join(f"{_qual(a)!r} of shape {a.meta.get('shape', '?')}"
                           for a in n.all_input_nodes)
        return f"node {_qual(n)!r} ({what}) cannot take its input ({inputs}): {e}"


def load(path: str) -> TransferNet:
    """Rebuild a saved network: base architecture, replayed ops, tensors loaded strictly."""
    fs, root = fsspec.core.url_to_fs(path)
    try:
        files = {name: fs.cat_file(f"{root}/{name}") for name in ("spec.json", "model.safetensors")}
    except FileNotFoundError as e:
        raise SurgeryError(f"{path!r} is not a saved network: it needs spec.json and "
                           f"model.safetensors ({e})") from e
    return from_files(files, where=path)


def from_files(files: dict[str, bytes], where: str = "the network") -> TransferNet:
    """Inverse of :meth:`TransferNet.to_files`, with the same checks as :func:`load`."""
    from safetensors.torch import load as load_tensors

    spec, blob = json.loads(files["spec.json"]), files["model.safetensors"]
    if spec.get("format") != SPEC_FORMAT:
        raise SurgeryError(f"{where}/spec.json has format {spec.get('format')!r}; "
                           f"this version reads format {SPEC_FORMAT}")
    if hashlib.sha256(blob).hexdigest() != spec.get("safetensors_sha256"):
        raise SurgeryError(f"{where}/model.safetensors does not match spec.json (sha256 differs): "
                           "the file was changed or belongs to another network; refusing to load")
    base = spec["base"]
    zm = zoo.load_model(base["model"], None, image_size=base.get("image_size"), **base["kwargs"])
    builder = TransferLearning(zm)
    for op in spec["ops"]:
        builder._replay(op)
    net = builder.build()
    if sorted(net.frozen) != spec["frozen"]:
        raise SurgeryError(f"{where}: replaying the ops gives frozen set {sorted(net.frozen)}, "
                           f"spec.json says {spec['frozen']}; the spec was edited")
    try:
        net.load_state_dict(load_tensors(blob), strict=True)
    except RuntimeError as e:
        raise SurgeryError(f"{where}: model.safetensors does not fit the network spec.json "
                           f"describes: {e}") from e
    net.spec.update({k: spec[k] for k in ("weights", "weights_sha256", "preprocess", "classes")
                     if k in spec})
    return net


# ---------------------------------------------------------------------------- the builder

# What n_out_replace may look through between a resized layer and the layers whose inputs follow.
_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
                 nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                 nn.Identity, nn.Flatten, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d,
                 nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, GlobalPool)
_PASS_FUNCTIONS = {torch.relu, F.relu, F.relu6, F.silu, F.gelu, F.hardswish, torch.tanh,
                   torch.sigmoid, torch.flatten, F.adaptive_avg_pool2d, F.dropout, operator.getitem}
_PASS_METHODS = {"relu", "sigmoid", "tanh", "flatten", "contiguous"}
_OPS = ("fine_tune_configuration", "set_feature_extractor", "remove_vertex_keep_connections",
        "remove_vertex_and_connections", "add_layer", "add_vertex", "insert_layer",
        "n_out_replace", "n_in_replace", "set_outputs")


class TransferLearning:
    """DL4J's ``TransferLearning.GraphBuilder``: chain edits, then ``build()``.

    ``model``: a zoo name (``"torchvision:resnet18"``; ``weights=`` and constructor kwargs are
    passed to :func:`pipeline.zoo.load_model`), a :class:`~pipeline.zoo.ZooModel`, a built
    :class:`TransferNet` (to edit further) or any ``nn.Module`` (give ``input_shape`` for shape
    checks). The builder edits a copy; ``in_place=True`` edits the given modules themselves.
    """

    def __init__(self, model, *, weights: str | None = None, input_shape=None,
                 leaf_modules: tuple[type, ...] = (), in_place: bool = False, **zoo_kwargs):
        if isinstance(model, str):
            model = zoo.load_model(model, weights, **zoo_kwargs)
        if isinstance(model, TransferNet):
            self._net = model if in_place else copy.deepcopy(model)
            self._ops = list(self._net.spec.get("ops", []))
            self._fine_tune = FineTuneConfig(**self._net.spec.get("fine_tune", {}))
            return
        spec = {"format": SPEC_FORMAT, "base": None, "input_shape": input_shape}
        if isinstance(model, zoo.ZooModel):
            base = {"model": model.name, "kwargs": model.kwargs}
            if model.image_size:
                base["image_size"] = model.image_size
            spec.update(base=base,
                        weights=model.weights, weights_sha256=model.weights_sha256,
                        input_shape=list(model.input_shape),
                        preprocess=model.preprocess.model_dump() if model.preprocess else None)
            leaf_modules = tuple(leaf_modules) + model.leaf_modules
            model = model.model
        self._net = trace(model if in_place else copy.deepcopy(model), leaf_modules)
        self._net.spec = spec
        self._ops: list[dict] = []
        self._fine_tune = FineTuneConfig()

    # ------------------------------------------------------------------ recording

    def _record(self, op: str, *args, **kwargs) -> TransferLearning:
        def encode(v):
            if isinstance(v, nn.Module):
                return {"__layer__": layer_to_spec(v)}
            return v.model_dump() if isinstance(v, FineTuneConfig) else v
        self._ops.append({"op": op, "args": [encode(a) for a in args],
                          "kwargs": {k: encode(v) for k, v in kwargs.items()}})
        return self

    def _replay(self, op: dict) -> None:
        if op.get("op") not in _OPS:
            raise SurgeryError(f"unknown op {op.get('op')!r} in spec; valid: {_OPS}")

        def decode(v):
            return layer_from_spec(v["__layer__"]) if isinstance(v, dict) and "__layer__" in v else v
        getattr(self, op["op"])(*map(decode, op["args"]),
                                **{k: decode(v) for k, v in op["kwargs"].items()})

    # ------------------------------------------------------------------ helpers

    def _graph(self) -> fx.Graph:
        return self._net.graph

    def _output(self) -> fx.Node:
        return next(n for n in self._graph().nodes if n.op == "output")

    def _layer(self, name: str, kinds=RESIZABLE + NORMS) -> tuple[fx.Node, nn.Module]:
        node = self._net.node(name)
        module = self._net.get_submodule(node.target) if node.op == "call_module" else None
        if not isinstance(module, kinds):
            raise SurgeryError(f"{name!r} is {module or node.target}; this op needs one of "
                               f"{[k.__name__ for k in kinds]}")
        self._check_unfrozen(node)
        return node, module

    def _check_unfrozen(self, node: fx.Node) -> None:
        if _qual(node) in self._net.frozen:
            raise SurgeryError(f"{_qual(node)!r} is frozen; call set_feature_extractor with a node "
                               "before it first, then edit it")

    def _set_module(self, node: fx.Node, module: nn.Module) -> None:
        self._net.add_submodule(node.target, module)

    # ------------------------------------------------------------------ DL4J ops

    def fine_tune_configuration(self, config: FineTuneConfig | dict) -> TransferLearning:
        """Set how the trainable part is optimized (layers' own overrides still win)."""
        cfg = FineTuneConfig.model_validate(config) if isinstance(config, dict) else config
        overrides = {**cfg.overrides, **self._fine_tune.overrides}
        self._fine_tune = cfg.model_copy(update={"overrides": overrides})
        return self._record("fine_tune_configuration", cfg)

    def set_feature_extractor(self, *names: str) -> TransferLearning:
        """Freeze these nodes and all their ancestors (replacing any earlier frozen set)."""
        if not names:
            raise SurgeryError("set_feature_extractor needs at least one node name")
        closure, stack = set(), [n for name in names for n in self._net.select(name)]
        while stack:
            n = stack.pop()
            if n not in closure:
                closure.add(n)
                stack.extend(n.all_input_nodes)
        self._net._frozen = frozenset(_qual(n) for n in closure if n.op != "placeholder")
        return self._record("set_feature_extractor", *names)

    def remove_vertex_keep_connections(self, name: str) -> TransferLearning:
        """Remove a vertex but keep its edges: add a vertex with the same name to fill it."""
        self._make_hole(name, keep_inputs=True)
        return self._record("remove_vertex_keep_connections", name)

    def remove_vertex_and_connections(self, name: str) -> TransferLearning:
        """Remove a vertex, its input edges and its place among the outputs. Vertices that still
        consume it must be removed too, or a vertex of the same name added."""
        node = self._make_hole(name, keep_inputs=False)
        out = self._output()
        out.args = (_without(out.args[0], node),)
        return self._record("remove_vertex_and_connections", name)

    def _make_hole(self, name: str, keep_inputs: bool) -> fx.Node:
        node = self._net.node(name)
        if node.op not in ("call_module", "call_function", "call_method"):
            raise SurgeryError(f"cannot remove {name!r}: it is a network input")
        self._check_unfrozen(node)
        node.meta["hole"] = True
        if not keep_inputs:
            node.args, node.kwargs = (), {}
        return node

    def add_layer(self, name: str, layer: nn.Module, *inputs: str, **overrides) -> TransferLearning:
        """Add ``layer`` as vertex ``name`` fed by ``inputs``. ``overrides`` (``lr``,
        ``weight_decay``) apply to this layer only and win over the fine-tune configuration."""
        self._add(name, layer, inputs)
        if overrides:
            self._fine_tune.overrides[name] = LayerOverride(**overrides)
        return self._record("add_layer", name, layer, *inputs, **overrides)

    def add_vertex(self, name: str, vertex: str | nn.Module, *inputs: str) -> TransferLearning:
        """Add a parameter-free vertex: ``"add"``, ``"concat"``, ``"flatten"``, ``"avgpool"``,
        ``"maxpool"`` (global pooling) or a module such as ``layers.Concat(dim=2)``."""
        if isinstance(vertex, str):
            if vertex not in VERTICES:
                raise SurgeryError(f"unknown vertex {vertex!r}; valid: {sorted(VERTICES)}")
            vertex = VERTICES[vertex]()
        self._add(name, vertex, inputs)
        return self._record("add_vertex", name, vertex, *inputs)

    def _add(self, name: str, layer: nn.Module, inputs: tuple[str, ...]) -> fx.Node:
        graph = self._graph()
        existing = [n for n in graph.nodes if _qual(n) == name and n.op != "output"]
        if existing and not existing[0].meta.get("hole"):
            raise SurgeryError(f"a vertex named {name!r} exists; remove it first or pick another name")
        if any(n.op == "call_module" and n.target.startswith(name + ".") for n in graph.nodes):
            raise SurgeryError(f"{name!r} is a module path holding other vertices; pick another name")
        args = tuple(self._net.node(i) for i in inputs) or (existing[0].args if existing else ())
        if not args:
            raise SurgeryError(f"add {name!r}: name its input vertices, e.g. "
                               f"add_layer({name!r}, layer, {self._net.nodes()[-1]!r})")
        self._net.add_submodule(name, layer)
        if existing:
            node = existing[0]
        else:
            order = {n: i for i, n in enumerate(graph.nodes)}
            with graph.inserting_after(max(args, key=order.__getitem__)):
                node = graph.call_module(name, args)
        node.op, node.target, node.args, node.kwargs = "call_module", name, args, {}
        node.meta = {QUAL: name}
        return node

    def insert_layer(self, name: str, layer: nn.Module, after: str,
                     init: str = "identity") -> TransferLearning:
        """Insert ``layer`` right after ``after``; everything that consumed ``after`` now consumes
        the new layer. ``init="identity"`` makes it compute the identity, so outputs do not change
        until it is trained (square Linear or ungrouped Conv with in == out)."""
        source = self._net.node(after)
        init_layer(layer, init)
        node = self._add(name, layer, (after,))
        source.replace_all_uses_with(node, delete_user_cb=lambda user: user is not node)
        return self._record("insert_layer", name, layer, after, init=init)

    def n_out_replace(self, name: str, n: int, init: str = "xavier", init_next: str | None = None,
                      preserve: bool = False) -> TransferLearning:
        """Give layer ``name`` ``n`` outputs and every layer fed by it ``n``-sized inputs
        (through activations, dropout, pooling, flatten and BatchNorm, which is resized too).

        ``preserve=True`` keeps trained units' weights, initializes the new units with ``init``
        and zeroes their fan-in downstream: the network computes exactly what it did until it is
        trained. Otherwise the layer gets ``init`` and the next ones ``init_next`` (DL4J).
        """
        node, layer = self._layer(name, RESIZABLE)
        consumers = self._fan_out(node)
        old = out_size(layer)
        self._set_module(node, resized(layer, n_out=n, init=init, preserve=preserve))
        for c in consumers:
            m = self._net.get_submodule(c.target)
            if isinstance(m, NORMS):
                self._set_module(c, resized(m, n_out=n, preserve=preserve))
                continue
            if in_size(m) % old:
                raise SurgeryError(f"cannot resize {_qual(c)!r}: its {in_size(m)} inputs are not a "
                                   f"multiple of {name!r}'s {old} outputs")
            self._set_module(c, resized(m, n_in=in_size(m) // old * n, init=init_next or init,
                                        preserve=preserve))
        return self._record("n_out_replace", name, n, init=init, init_next=init_next,
                            preserve=preserve)

    def n_in_replace(self, name: str, n: int, init: str = "xavier",
                     preserve: bool = False) -> TransferLearning:
        """Give layer ``name`` ``n`` inputs (the layers before it are not changed)."""
        node, layer = self._layer(name)
        self._set_module(node, resized(layer, n_in=n, init=init, preserve=preserve))
        return self._record("n_in_replace", name, n, init=init, preserve=preserve)

    def _fan_out(self, node: fx.Node) -> list[fx.Node]:
        """Layers whose input width follows ``node``'s output width."""
        found, stack, seen = [], list(node.users), set()
        while stack:
            user = stack.pop()
            if user in seen or user.op == "output":
                continue
            seen.add(user)
            module = self._net.get_submodule(user.target) if user.op == "call_module" else None
            if isinstance(module, RESIZABLE + NORMS) and getattr(module, "groups", 1) == 1:
                found.append(user)
                if isinstance(module, NORMS):
                    stack.extend(user.users)
            elif isinstance(module, _PASS_MODULES) or user.target in _PASS_FUNCTIONS \
                    or (user.op == "call_method" and user.target in _PASS_METHODS):
                stack.extend(user.users)
            else:
                raise SurgeryError(
                    f"n_out_replace({_qual(node)!r}): its output reaches {_qual(user)!r} "
                    f"({module or user.target}), whose width this builder cannot follow (a "
                    "residual add, a concat, a reshape or a grouped conv). Resize a layer "
                    "after it, or remove and re-add the layers in between")
        return found

    def set_outputs(self, *names: str) -> TransferLearning:
        """Make these vertices the network's outputs (a tuple when several)."""
        nodes = tuple(self._net.node(n) for n in names)
        if not nodes:
            raise SurgeryError("set_outputs needs at least one vertex name")
        self._output().args = (nodes[0] if len(nodes) == 1 else nodes,)
        return self._record("set_outputs", *names)

    # ------------------------------------------------------------------ build

    def build(self) -> TransferNet:
        """Validate the edited graph, apply the frozen set and return the network."""
        net, graph = self._net, self._graph()
        for node in [n for n in graph.nodes if n.meta.get("hole")]:
            if node.users:
                users = ", ".join(repr(_qual(u)) for u in node.users)
                raise SurgeryError(f"vertex {_qual(node)!r} was removed but {users} still consume "
                                   f"it: add a vertex named {_qual(node)!r} or remove them too")
            graph.erase_node(node)
        if not self._output().all_input_nodes:
            raise SurgeryError("the network has no outputs left: call set_outputs(...)")
        _legalize(net)
        graph.eliminate_dead_code()
        net.delete_all_unused_submodules()
        net.recompile()
        existing = {_qual(n) for n in graph.nodes}
        net._frozen = frozenset(net._frozen & existing)
        check_overrides(net, self._fine_tune)
        net.spec.update(ops=self._ops, fine_tune=self._fine_tune.model_dump())
        net._apply_freeze()
        net.check_shapes()
        return net


def _without(arg, node: fx.Node):
    """An output structure with ``node`` taken out."""
    if isinstance(arg, (tuple, list)):
        kept = tuple(a for a in arg if a is not node)
        return kept[0] if len(kept) == 1 else kept
    return () if arg is node else arg


def _legalize(gm: fx.GraphModule) -> None:
    """Re-sort the graph topologically when an edit put a node before one of its inputs."""
    try:
        gm.graph.lint()
    except RuntimeError:
        from torch.fx.passes.tools_common import legalize_graph

        legalize_graph(gm)
        gm.graph.lint()
