"""What a network is made of, before a config names its layers (Deeplearning4j's ``summary()``):
every node in order with its output shape and parameter count, the natural blocks a cut or an
unfreeze depth can name, the frozen set and its frontier, the preprocessing.

Example:

    >>> from pipeline.net.builder import TransferLearning
    >>> net = TransferLearning("tiny:cnn").set_feature_extractor("pool").build()
    >>> s = net.summary()
    >>> s.frontier, [r.name for r in s.rows][:3]
    ({'pool': (16, 1, 1)}, ['x', 'features.0.0', 'features.0.1'])
    >>> s.blocks
    ['features.0', 'features.1', 'fc1']
    >>> print(s.text().splitlines()[0])
    tiny:cnn: input (3, 32, 32), 2,314 parameters (1,440 frozen), 13 nodes
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import fx, nn

from pipeline.net.graphspec import qual


@dataclass(frozen=True)
class Row:
    """One node: its name (what configs and the builder call it), what it computes, the shape
    of one example's output, the parameters of its module, and whether it is frozen."""

    name: str
    op: str
    shape: tuple[int, ...] | None
    params: int
    frozen: bool


@dataclass(frozen=True)
class Summary:
    model: str
    input_shape: tuple[int, ...] | None
    rows: list[Row]
    blocks: list[str]
    frontier: dict[str, tuple[int, ...] | None]
    preprocess: dict | None

    @classmethod
    def of(cls, net) -> Summary:
        """The summary of a :class:`~pipeline.net.graph.TransferNet` (shapes recorded first)."""
        nodes = net.graph_nodes()
        if any(n.meta.get("shape") is None for n in nodes) and net.spec.get("input_shape"):
            net.check_shapes()
        frozen = net.frozen
        rows = [_node_row(net, n, qual(n) in frozen) for n in nodes]
        base = net.spec.get("base") or {}
        shape = net.spec.get("input_shape")
        return cls(
            model=str(base.get("model") or type(net).__name__),
            input_shape=tuple(shape) if shape else None,
            rows=rows,
            blocks=net.blocks(),
            frontier=net.frontier_shapes() if frozen else {},
            preprocess=net.spec.get("preprocess"),
        )

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    def text(self) -> str:
        """The summary for a terminal: a header, one line per node, the blocks, the cut."""
        frozen = sum(r.params for r in self.rows if r.frozen)
        lines = [
            f"{self.model}: input {self.input_shape}, {self.params:,} parameters "
            f"({frozen:,} frozen), {len(self.rows)} nodes"
        ]
        if self.preprocess:
            p = self.preprocess
            lines.append(
                f"preprocess: resize {p['resize_size']}, crop {p['crop_size']}, "
                f"mean {tuple(p['mean'])}, std {tuple(p['std'])}"
            )
        width = max(len(r.name) for r in self.rows) + 2
        lines.append(f"{'node':<{width}}{'op':<22}{'output':<20}{'params':>11}")
        for r in self.rows:
            shape = str(r.shape) if r.shape is not None else "?"
            mark = "  frozen" if r.frozen else ""
            lines.append(f"{r.name:<{width}}{r.op[:21]:<22}{shape:<20}{r.params:>11,}{mark}")
        lines.append(f"blocks (cut at or unfreeze by these): {', '.join(self.blocks)}")
        if self.frontier:
            cut = ", ".join(f"{k} {v}" for k, v in self.frontier.items())
            lines.append(f"frontier (what a feature set stores): {cut}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return asdict(self) | {"params": self.params}


def _node_row(net: fx.GraphModule, node: fx.Node, frozen: bool) -> Row:
    if node.op == "placeholder":
        op, params = "input", 0
    elif node.op == "call_module":
        module: nn.Module = net.get_submodule(node.target)
        op, params = type(module).__name__, sum(p.numel() for p in module.parameters())
    else:
        target = node.target
        op, params = getattr(target, "__name__", str(target)), 0
    return Row(qual(node), op, node.meta.get("shape"), params, frozen)
