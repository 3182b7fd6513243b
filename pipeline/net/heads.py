"""The networks jobs train: a zoo model frozen at a cut, optional hidden blocks, a resized head.

A job loads its zoo model once (:func:`zoo_network`, done by the job's checks before Ray
starts) and edits copies of it: :func:`build_network` is what ``jobs.train`` fits; a sweep
builds one network per unfreeze depth with :func:`cut_for` and :func:`frozen_at`, on the driver,
and each trial adds its own hidden blocks with :func:`with_head`.

Example:

    >>> from pipeline.net.heads import build_network, head_of, zoo_network
    >>> from pipeline.settings import ModelConfig
    >>> cfg = ModelConfig(name="tiny:cnn", cut="pool", hidden=[16])
    >>> base = zoo_network(cfg)
    >>> head_of(base, cfg)   # no head named: the network's own output layer
    'fc2'
    >>> net = build_network(cfg, ["a", "b", "c"], base=base)
    >>> net.frontier(), net.get_submodule("fc2").out_features
    (['pool'], 3)
"""

from __future__ import annotations

import torch

from pipeline.net.builder import TransferLearning
from pipeline.net.errors import SurgeryError
from pipeline.net.graph import TransferNet
from pipeline.net.graphspec import qual
from pipeline.net.layers import RESIZABLE, in_size
from pipeline.net.saving import load
from pipeline.settings import FineTuneConfig, ModelConfig, Unfreeze


def zoo_network(cfg: ModelConfig) -> TransferNet:
    """The zoo model with its weights, traced, nothing frozen, nothing replaced."""
    return TransferLearning(
        cfg.name, weights=cfg.weights, image_size=cfg.image_size, **cfg.kwargs
    ).build()


def output_layers(net: TransferNet) -> list[str]:
    """The layers a head can name (Linear, convolutions) nearest the output, last first:
    ``classifier.1`` on mobilenet_v2, ``fc`` on a resnet."""
    return [
        qual(node)
        for node in reversed(net.graph_nodes())
        if node.op == "call_module" and isinstance(net.get_submodule(node.target), RESIZABLE)
    ][:3]


def head_of(net: TransferNet, cfg: ModelConfig) -> str:
    """``cfg.head``, else the network's own output layer."""
    if cfg.head:
        return cfg.head
    layers = output_layers(net)
    if not layers:
        raise SurgeryError(
            f"{cfg.name} has no Linear or convolution layer to resize as its head: "
            "name one with model.head"
        )
    return layers[0]


def build_network(
    cfg: ModelConfig,
    classes: list[str],
    fine_tune: FineTuneConfig | None = None,
    base: TransferNet | None = None,
) -> TransferNet:
    """``base`` (default: :func:`zoo_network`, or the exported ``cfg.start_from``) frozen through
    ``cfg.cut`` (default: everything below the head), ``cfg.hidden`` blocks inserted before the
    head, the head resized to the classes; seeded, so a re-run builds the same initial head.
    With ``start_from`` (DL4J: edit a trained network further) the trained head is kept."""
    fine_tune = fine_tune or FineTuneConfig()
    if cfg.start_from:
        return continued_network(base or load(cfg.start_from), cfg, classes, fine_tune)
    base = base if base is not None else zoo_network(cfg)
    head = head_of(base, cfg)
    cut = cfg.cuts() if cfg.cut is not None else cut_for(base, 0, head)
    net = frozen_at(base, cut, head, classes, fine_tune.seed)
    return with_head(net, head, cfg.hidden, cfg.hidden_dropout, fine_tune)


def frozen_at(
    base: TransferNet, cut: list[str], head: str, classes: list[str], seed: int = 0
) -> TransferNet:
    """A copy of ``base`` frozen through ``cut`` (nothing when empty), its head resized to the
    classes (seeded by ``seed``)."""
    torch.manual_seed(seed)
    builder = TransferLearning(base)
    if cut:
        builder.set_feature_extractor(*cut)
    net = builder.n_out_replace(head, len(classes)).build()
    net.spec["classes"] = list(classes)  # checkpoints and exports name their outputs
    return net


def with_head(
    net: TransferNet, head: str, hidden: list[int], dropout: float, fine_tune: FineTuneConfig
) -> TransferNet:
    """``net`` with Linear+ReLU+Dropout blocks of widths ``hidden`` inserted before ``head``
    (the head then takes the last width) and ``fine_tune`` as its optimization settings."""
    builder = TransferLearning(net)
    torch.manual_seed(fine_tune.seed)
    after, width = net.inputs_of(head)[0], in_size(net.get_submodule(head))
    for i, size in enumerate(hidden):
        block = torch.nn.Sequential(
            torch.nn.Linear(width, size), torch.nn.ReLU(), torch.nn.Dropout(dropout)
        )
        builder.insert_layer(f"hidden{i}", block, after=after, init="kaiming")
        after, width = f"hidden{i}", size
    if hidden:
        builder.n_in_replace(head, width)
    return builder.fine_tune_configuration(fine_tune).build()  # the spec keeps the classes


def continued_network(
    exported: TransferNet, cfg: ModelConfig, classes: list[str], fine_tune: FineTuneConfig
) -> TransferNet:
    """An exported network refrozen at ``cfg.cut`` (nothing when ``[]``; kept as it was when
    unset), its trained head kept."""
    if exported.spec.get("classes") != list(classes):
        raise ValueError(
            f"{cfg.start_from} was trained on classes {exported.spec.get('classes')}, the data "
            f"has {classes}"
        )
    builder = TransferLearning(exported)
    cut = cfg.cuts()
    if cut:
        builder.set_feature_extractor(*cut)
    return builder.fine_tune_configuration(fine_tune).build()


def cut_for(net: TransferNet, unfreeze: Unfreeze | int | str, head: str) -> list[str]:
    """The nodes to freeze through for an unfreeze depth: the top N of ``net.blocks()``
    trainable (0: only the head), frozen through a named node, or nothing frozen (``[]``)."""
    depth = Unfreeze.parse(unfreeze)
    if depth.everything:
        return []
    if depth.through is not None:
        net.select(depth.through)  # an unknown name raises, listing the valid ones
        return [depth.through]
    if depth.top == 0:
        return net.inputs_of(head)
    blocks = net.blocks()
    if depth.top >= len(blocks):
        raise ValueError(
            f"unfreeze {depth.top}: the network has {len(blocks)} blocks "
            f"({', '.join(blocks)}); use 'all' to train everything"
        )
    return [blocks[-depth.top - 1]]
