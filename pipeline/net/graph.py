"""The traced network: a torch.fx graph with a frozen set, its frontier, and the save format.

A model is traced once (:func:`trace`); node names are the module paths of
``model.named_modules()`` (``features.17``, ``layer1.0.add``, ``classifier.1``). Wherever a name is
taken, a module path that contains several nodes (``features.17``, ``layer3``) selects all of them.
:class:`TransferNet` knows its frozen set, the frontier of that set (frozen nodes with a consumer
outside it, skip connections included), the ``prefix()`` that computes the frontier and the
``trainable()`` subgraph that maps the frontier to the outputs. Build one with
:class:`pipeline.net.builder.TransferLearning`; load one with :func:`pipeline.net.saving.load`.

Example:

    >>> import torch
    >>> from pipeline.net.builder import TransferLearning
    >>> net = TransferLearning("tiny:resnet").set_feature_extractor("block1.conv2").build().eval()
    >>> net.frontier()  # the skip connection crosses the cut: its tensor is stored too
    ['stem.2', 'block1.conv2']
    >>> x = torch.randn(2, 3, 32, 32)
    >>> bool(torch.allclose(net.output_from_featurized(net.featurize(x)), net(x), atol=1e-6))
    True
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from collections.abc import Iterable

import torch
from safetensors.torch import save as save_tensors
from torch import fx, nn

from pipeline.net import graphspec
from pipeline.net.errors import ShapeMismatchError, SurgeryError, UnknownNodeError
from pipeline.net.graphspec import qual
from pipeline.net.saved import SavedNet
from pipeline.net.summary import Summary

SPEC_FORMAT = 1


def _keep_eval(module: nn.Module, args) -> None:
    """Forward pre-hook on frozen modules: BatchNorm/Dropout stay in inference mode whatever
    ``train()`` was called on."""
    module.training = False


class TransferNet(fx.GraphModule):
    """A traced network with a frozen set. Build it with
    :class:`~pipeline.net.builder.TransferLearning`; ``frozen`` names the frozen nodes, which are
    frozen on construction (``requires_grad=False``, inference-mode BatchNorm/Dropout)."""

    def __init__(
        self, root: nn.Module, graph: fx.Graph, spec: dict | None = None, frozen: Iterable[str] = ()
    ):
        super().__init__(root, graph, class_name="TransferNet")
        self.spec = spec or {}
        self._frozen = frozenset(frozen)
        if self._frozen:
            self._apply_freeze()

    def __deepcopy__(self, memo):
        res = super().__deepcopy__(memo)
        res.spec, res._frozen = copy.deepcopy(self.spec, memo), self._frozen
        return res

    # ------------------------------------------------------------------ graph queries

    def graph_nodes(self) -> list[fx.Node]:
        """The graph's computing nodes and inputs, in topological order (no output node)."""
        return [n for n in self.graph.nodes if n.op not in ("output", "get_attr")]

    def nodes(self) -> list[str]:
        """Node names in topological order (inputs first)."""
        return [qual(n) for n in self.graph_nodes()]

    def node(self, name: str) -> fx.Node:
        for n in self.graph.nodes:
            if qual(n) == name and n.op != "output":
                return n
        raise UnknownNodeError(self.unknown_message(name))

    def select(self, name: str) -> list[fx.Node]:
        """The node called ``name``, or every node inside the module path ``name``."""
        found = [n for n in self.graph_nodes() if qual(n) == name or qual(n).startswith(name + ".")]
        if not found:
            raise UnknownNodeError(self.unknown_message(name))
        return found

    def unknown_message(self, name: str) -> str:
        """Why ``name`` is not a node, in a line: the closest names, then every valid name when
        there are few, else the natural blocks and where to see them all."""
        valid = self.nodes()
        close = self.closest(name)
        text = f"no node named {name!r}" + (
            f"; did you mean {', '.join(map(repr, close))}?" if close else "."
        )
        if len(valid) <= 40:
            return text + f" Valid names, in topological order: {', '.join(valid)}."
        model = (self.spec.get("base") or {}).get("model")
        listing = f"python -m jobs.inspect --model {model}" if model else "net.nodes()"
        return (
            text + f" Blocks (a module path selects every node inside it): "
            f"{', '.join(self.blocks())}; {listing} lists all {len(valid)} nodes."
        )

    def closest(self, name: str, n: int = 3) -> list[str]:
        """The ``n`` node names or module paths most like ``name`` (a typo's likely fix)."""
        valid = self.nodes()
        paths = sorted({q.rsplit(".", i)[0] for q in valid for i in range(1, q.count(".") + 1)})
        return difflib.get_close_matches(name, valid + paths, n=n)

    def inputs_of(self, name: str) -> list[str]:
        """Names of the nodes that feed node ``name``."""
        return [qual(n) for n in self.node(name).all_input_nodes]

    def outputs(self) -> list[str]:
        out = next(n for n in self.graph.nodes if n.op == "output")
        return [qual(n) for n in out.all_input_nodes]

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
                len(tops) < 4
                or top.lstrip("_") in ("features", "blocks", "layers", "stages")
                or top.endswith("_blocks")
            )
            blocks.extend(children if opens else [top])
        outputs = self.outputs()
        return [b for b in blocks if not any(o == b or o.startswith(b + ".") for o in outputs)]

    def _children_with_parameters(self, parent: str) -> list[str]:
        """Module paths one level below ``parent`` that own parameters, in graph order."""
        prefix, seen = parent + "." if parent else "", []
        for name in self.nodes():
            if not name.startswith(prefix):
                continue
            child = prefix + name[len(prefix) :].split(".")[0]
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
        return {n for n in self.graph.nodes if qual(n) in self._frozen or n.op == "placeholder"}

    def _frontier_nodes(self) -> list[fx.Node]:
        frozen = self._frozen_nodes()
        return [
            n
            for n in self.graph.nodes
            if n in frozen and n.op != "get_attr" and any(u not in frozen for u in n.users)
        ]

    def frontier(self) -> list[str]:
        """Frozen nodes (or inputs) whose output is consumed outside the frozen set: what a
        feature set stores. Skip connections crossing the cut put both ends here."""
        return [qual(n) for n in self._frontier_nodes()]

    def frontier_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-example shape of each frontier tensor (known once the net was shape-checked)."""
        return {qual(n): n.meta.get("shape") for n in self._frontier_nodes()}

    # ------------------------------------------------------------------ subgraphs

    def _extract(
        self, inputs: list[fx.Node], targets: list[fx.Node], make_output
    ) -> fx.GraphModule:
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
            env[n] = graph.placeholder(qual(n).replace(".", "_"))
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
            if thawed := [qual(n) for n in outs if n not in frozen]:
                raise SurgeryError(
                    f"prefix targets {thawed} are not frozen; frozen nodes: {sorted(self._frozen)}"
                )
        inputs = [n for n in self.graph.nodes if n.op == "placeholder"]
        gm = self._extract(inputs, outs, lambda env: {qual(n): env[n] for n in outs})
        return gm.eval()

    def prefix_sha256(self) -> str:
        """Identity of what featurizing computes: the prefix's code, frontier and tensors.
        Edits after the frozen set (a new head) leave it unchanged; any change to a frozen
        weight, the cut or the graph before it changes it."""
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
        return self._extract(
            self._frontier_nodes(),
            out.all_input_nodes,
            lambda env: fx.map_arg(out.args[0], lambda a: env[a]),
        )

    unfrozen_graph = trainable  # DL4J TransferLearningHelper.unfrozenGraph

    def featurize(self, *inputs, batch_size: int | None = None) -> dict[str, torch.Tensor]:
        """Frontier outputs, without gradients (DL4J helper ``featurize``), computed
        ``batch_size`` examples at a time when given. ``no_grad`` rather than
        ``inference_mode``: the features are meant to be trained on."""
        prefix, n = self.prefix(), len(inputs[0])
        step = batch_size or n
        with torch.no_grad():
            parts = [prefix(*[x[i : i + step] for x in inputs]) for i in range(0, n, step)]
        return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}

    def output_from_featurized(self, features: dict[str, torch.Tensor]):
        """Network outputs from frontier outputs (DL4J helper ``outputFromFeaturized``)."""
        return self.trainable()(*[features[name] for name in self.frontier()])

    # ------------------------------------------------------------------ freezing

    def _frozen_modules(self) -> dict[str, nn.Module]:
        return {
            n.target: self.get_submodule(n.target)
            for n in self.graph.nodes
            if n.op == "call_module" and qual(n) in self._frozen
        }

    def frozen_parameter_names(self) -> set[str]:
        """Names (as in ``state_dict``) of every frozen parameter and buffer."""
        names = {
            f"{path}.{k}"
            for path, m in self._frozen_modules().items()
            for k, _ in list(m.named_parameters()) + list(m.named_buffers())
        }
        names |= {
            n.target for n in self.graph.nodes if n.op == "get_attr" and qual(n) in self._frozen
        }
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

    def summary(self) -> Summary:
        """What the network is made of (DL4J's ``summary()``): every node with its output
        shape and parameters, the blocks, the frozen set's frontier, the preprocessing."""
        return Summary.of(self)

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

    # ------------------------------------------------------------------ save

    def to_files(self) -> dict[str, bytes]:
        """The save format in memory: ``{"spec.json": ..., "model.safetensors": ...}``."""
        return self.saved().files

    def saved(self) -> SavedNet:
        """The network in its save format, in memory (:class:`SavedNet`). This is how a network
        travels, so no process ever unpickles weights. A network traced from a model outside the
        zoo carries its graph (:mod:`pipeline.net.graphspec`); saving refuses a module the graph
        format cannot describe, naming it and how to register it."""
        spec = dict(self.spec)
        if not spec.get("base"):
            spec["graph"] = graphspec.describe(self)
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()}
        blob = save_tensors(state)
        spec.update(
            frozen=sorted(self._frozen), safetensors_sha256=hashlib.sha256(blob).hexdigest()
        )
        return SavedNet(
            {"spec.json": json.dumps(spec, indent=1).encode(), "model.safetensors": blob}
        )

    def save(self, path: str) -> None:
        """Write ``spec.json`` and ``model.safetensors`` under ``path`` (local or fsspec URI)."""
        self.saved().write(path)


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
        inputs = ", ".join(
            f"{qual(a)!r} of shape {a.meta.get('shape', '?')}" for a in n.all_input_nodes
        )
        return f"node {qual(n)!r} ({what}) cannot take its input ({inputs}): {e}"
