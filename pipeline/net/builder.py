"""Model surgery: Deeplearning4j's TransferLearning builder.

Every edit is an *op* (:mod:`pipeline.net.ops`): calling it records it in the network's spec;
:func:`pipeline.net.saving.load` rebuilds a zoo network and replays the recorded ops (a network
traced from any other module is rebuilt from its saved graph, :mod:`pipeline.net.graphspec`), so
an op added to the builder saves and loads without being listed anywhere else.

Example:

    >>> import torch
    >>> from pipeline.net.builder import TransferLearning
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

from torch import fx, nn
from torch.fx.passes.tools_common import legalize_graph

from pipeline.net import zoo
from pipeline.net.errors import SurgeryError
from pipeline.net.finetune import check_overrides
from pipeline.net.graph import SPEC_FORMAT, TransferNet
from pipeline.net.graphspec import QUAL, qual
from pipeline.net.layers import (
    NORMS,
    PASS_FUNCTIONS,
    PASS_METHODS,
    PASS_MODULES,
    RESIZABLE,
    VERTICES,
    in_size,
    init_layer,
    out_size,
    resized,
)
from pipeline.net.ops import OPS, decode_arg, op
from pipeline.net.tracing import trace
from pipeline.settings import FineTuneConfig, LayerOverride


class TransferLearning:
    """DL4J's ``TransferLearning.GraphBuilder``: chain edits, then ``build()``.

    ``model``: a zoo name (``"torchvision:resnet18"``; ``weights=`` and constructor kwargs are
    passed to :func:`pipeline.net.zoo.load_model`), a :class:`~pipeline.net.zoo.ZooModel`, a built
    :class:`TransferNet` (to edit further) or any ``nn.Module`` (give ``input_shape`` for shape
    checks). The builder edits a copy. ``in_place=True`` edits the given model itself: the
    frozen layers are frozen in it and a replaced layer (``n_out_replace``, ``n_in_replace``)
    is replaced in it too; edits that change the wiring (add, insert, remove vertices,
    ``set_outputs``) exist only in the built :class:`TransferNet`, since the model's own
    ``forward`` is Python code the builder cannot rewrite.
    """

    def __init__(
        self,
        model,
        *,
        weights: str | None = None,
        input_shape=None,
        leaf_modules: tuple[type, ...] = (),
        in_place: bool = False,
        **zoo_kwargs,
    ):
        self._ops: list[dict] = []
        self._depth = 0  # ops calling ops record only the outermost call
        self._in_place = model if in_place and isinstance(model, nn.Module) else None
        if isinstance(model, str):
            model = zoo.load_model(model, weights, **zoo_kwargs)
        if isinstance(model, TransferNet):
            self._net = model if in_place else copy.deepcopy(model)
            self._ops = list(self._net.spec.get("ops", []))
            self._fine_tune = FineTuneConfig(**self._net.spec.get("fine_tune", {}))
            self._frozen = set(self._net.frozen)
            return
        spec = {"format": SPEC_FORMAT, "base": None, "input_shape": input_shape}
        if isinstance(model, zoo.ZooModel):
            base = {"model": model.name, "kwargs": model.kwargs}
            if model.image_size:
                base["image_size"] = model.image_size
            spec.update(
                base=base,
                weights=model.weights,
                weights_sha256=model.weights_sha256,
                input_shape=list(model.input_shape),
                preprocess=model.preprocess.model_dump() if model.preprocess else None,
            )
            leaf_modules = tuple(leaf_modules) + model.leaf_modules
            model = model.model
            self._in_place = model if in_place else None
        self._net = trace(model if in_place else copy.deepcopy(model), leaf_modules)
        self._net.spec = spec
        self._fine_tune = FineTuneConfig()
        self._frozen: set[str] = set()

    @staticmethod
    def ops() -> list[str]:
        """Every op the builder records and a saved spec may replay."""
        return list(OPS)

    def replay(self, ops: list[dict]) -> TransferLearning:
        """Apply recorded ops (a saved spec's ``ops``) in order; names outside :meth:`ops` are
        refused."""
        for entry in ops:
            name = entry.get("op")
            if name not in OPS:
                raise SurgeryError(f"unknown op {name!r} in spec; valid: {self.ops()}")
            OPS[name](
                self,
                *map(decode_arg, entry["args"]),
                **{k: decode_arg(v) for k, v in entry["kwargs"].items()},
            )
        return self

    # ------------------------------------------------------------------ helpers

    def _graph(self) -> fx.Graph:
        return self._net.graph

    def _output(self) -> fx.Node:
        return next(n for n in self._graph().nodes if n.op == "output")

    def _layer(self, name: str, kinds=RESIZABLE + NORMS) -> tuple[fx.Node, nn.Module]:
        node = self._net.node(name)
        module = self._net.get_submodule(node.target) if node.op == "call_module" else None
        if not isinstance(module, kinds):
            raise SurgeryError(
                f"{name!r} is {module or node.target}; this op needs one of "
                f"{[k.__name__ for k in kinds]}"
            )
        self._check_unfrozen(node)
        return node, module

    def _check_unfrozen(self, node: fx.Node) -> None:
        if qual(node) in self._frozen:
            raise SurgeryError(
                f"{qual(node)!r} is frozen; call set_feature_extractor with a node "
                "before it first, then edit it"
            )

    def _set_module(self, node: fx.Node, module: nn.Module) -> None:
        self._net.add_submodule(node.target, module)
        # the traced graph holds the model's layers in containers of its own: replace the
        # layer in the given model too, or in_place would leave it the old layer
        if self._in_place is not None and self._in_place is not self._net:
            self._in_place.set_submodule(node.target, module)

    # ------------------------------------------------------------------ DL4J ops

    @op
    def fine_tune_configuration(self, config: FineTuneConfig | dict) -> TransferLearning:
        """Set how the trainable part is optimized (layers' own overrides still win)."""
        cfg = FineTuneConfig.model_validate(config) if isinstance(config, dict) else config
        overrides = {**cfg.overrides, **self._fine_tune.overrides}
        self._fine_tune = cfg.model_copy(update={"overrides": overrides})

    @op
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
        self._frozen = {qual(n) for n in closure if n.op != "placeholder"}

    @op
    def remove_vertex_keep_connections(self, name: str) -> TransferLearning:
        """Remove a vertex but keep its edges: add a vertex with the same name to fill it."""
        self._make_hole(name, keep_inputs=True)

    @op
    def remove_vertex_and_connections(self, name: str) -> TransferLearning:
        """Remove a vertex, its input edges and its place among the outputs. Vertices that still
        consume it must be removed too, or a vertex of the same name added."""
        node = self._make_hole(name, keep_inputs=False)
        out = self._output()
        out.args = (_without(out.args[0], node),)

    def _make_hole(self, name: str, keep_inputs: bool) -> fx.Node:
        node = self._net.node(name)
        if node.op not in ("call_module", "call_function", "call_method"):
            raise SurgeryError(f"cannot remove {name!r}: it is a network input")
        self._check_unfrozen(node)
        node.meta["hole"] = True
        if not keep_inputs:
            node.args, node.kwargs = (), {}
        return node

    @op
    def add_layer(self, name: str, layer: nn.Module, *inputs: str, **overrides) -> TransferLearning:
        """Add ``layer`` as vertex ``name`` fed by ``inputs``. ``overrides`` (``lr``,
        ``weight_decay``) apply to this layer only and win over the fine-tune configuration."""
        self._add(name, layer, inputs)
        if overrides:
            self._fine_tune.overrides[name] = LayerOverride(**overrides)

    @op
    def add_vertex(self, name: str, vertex: str | nn.Module, *inputs: str) -> TransferLearning:
        """Add a parameter-free vertex: ``"add"``, ``"concat"``, ``"flatten"``, ``"avgpool"``,
        ``"maxpool"`` (global pooling) or a module such as ``layers.Concat(dim=2)``."""
        if isinstance(vertex, str):
            if vertex not in VERTICES:
                raise SurgeryError(f"unknown vertex {vertex!r}; valid: {sorted(VERTICES)}")
            vertex = VERTICES[vertex]()
        self._add(name, vertex, inputs)

    def _add(self, name: str, layer: nn.Module, inputs: tuple[str, ...]) -> fx.Node:
        graph = self._graph()
        existing = [n for n in graph.nodes if qual(n) == name and n.op != "output"]
        if existing and not existing[0].meta.get("hole"):
            raise SurgeryError(
                f"a vertex named {name!r} exists; remove it first or pick another name"
            )
        if any(n.op == "call_module" and n.target.startswith(name + ".") for n in graph.nodes):
            raise SurgeryError(
                f"{name!r} is a module path holding other vertices; pick another name"
            )
        args = tuple(self._net.node(i) for i in inputs) or (existing[0].args if existing else ())
        if not args:
            raise SurgeryError(
                f"add {name!r}: name its input vertices, e.g. "
                f"add_layer({name!r}, layer, {self._net.nodes()[-1]!r})"
            )
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

    @op
    def insert_layer(
        self, name: str, layer: nn.Module, after: str, init: str = "identity"
    ) -> TransferLearning:
        """Insert ``layer`` right after ``after``; everything that consumed ``after`` now consumes
        the new layer. ``init="identity"`` makes it compute the identity, so outputs do not change
        until it is trained (square Linear or ungrouped Conv with in == out)."""
        source = self._net.node(after)
        init_layer(layer, init)
        node = self._add(name, layer, (after,))
        source.replace_all_uses_with(node, delete_user_cb=lambda user: user is not node)

    @op
    def n_out_replace(
        self,
        name: str,
        n: int,
        init: str = "xavier",
        init_next: str | None = None,
        preserve: bool = False,
    ) -> TransferLearning:
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
                raise SurgeryError(
                    f"cannot resize {qual(c)!r}: its {in_size(m)} inputs are not a "
                    f"multiple of {name!r}'s {old} outputs"
                )
            self._set_module(
                c, resized(m, n_in=in_size(m) // old * n, init=init_next or init, preserve=preserve)
            )

    @op
    def n_in_replace(
        self, name: str, n: int, init: str = "xavier", preserve: bool = False
    ) -> TransferLearning:
        """Give layer ``name`` ``n`` inputs (the layers before it are not changed)."""
        node, layer = self._layer(name)
        self._set_module(node, resized(layer, n_in=n, init=init, preserve=preserve))

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
            elif (
                isinstance(module, PASS_MODULES)
                or user.target in PASS_FUNCTIONS
                or (user.op == "call_method" and user.target in PASS_METHODS)
            ):
                stack.extend(user.users)
            else:
                raise SurgeryError(
                    f"n_out_replace({qual(node)!r}): its output reaches {qual(user)!r} "
                    f"({module or user.target}), whose width this builder cannot follow (a "
                    "residual add, a concat, a reshape or a grouped conv). Resize a layer "
                    "after it, or remove and re-add the layers in between"
                )
        return found

    @op
    def set_outputs(self, *names: str) -> TransferLearning:
        """Make these vertices the network's outputs (a tuple when several)."""
        nodes = tuple(self._net.node(n) for n in names)
        if not nodes:
            raise SurgeryError("set_outputs needs at least one vertex name")
        self._output().args = (nodes[0] if len(nodes) == 1 else nodes,)

    # ------------------------------------------------------------------ build

    def build(self) -> TransferNet:
        """Validate the edited graph, apply the frozen set and return the network."""
        net, graph = self._net, self._graph()
        for node in [n for n in graph.nodes if n.meta.get("hole")]:
            if node.users:
                users = ", ".join(repr(qual(u)) for u in node.users)
                raise SurgeryError(
                    f"vertex {qual(node)!r} was removed but {users} still consume "
                    f"it: add a vertex named {qual(node)!r} or remove them too"
                )
            graph.erase_node(node)
        if not self._output().all_input_nodes:
            raise SurgeryError("the network has no outputs left: call set_outputs(...)")
        _legalize(net)
        graph.eliminate_dead_code()
        net.delete_all_unused_submodules()
        net.recompile()
        check_overrides(net, self._fine_tune)
        spec = dict(net.spec, ops=self._ops, fine_tune=self._fine_tune.model_dump())
        existing = {qual(n) for n in graph.nodes}
        built = TransferNet(net, graph, spec, frozen=self._frozen & existing)
        built.check_shapes()
        return built


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
        legalize_graph(gm)
        gm.graph.lint()
