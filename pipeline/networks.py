"""The networks jobs train: a zoo model frozen at a cut, optional hidden blocks, a resized head.

:func:`build_network` is what ``jobs.train`` fits; a sweep builds one network per unfreeze depth
with :func:`cut_for` and :func:`base_network` once, on the driver, and each trial adds its own
hidden blocks with :func:`with_head`.

Example:

    >>> from pipeline.networks import build_network
    >>> from pipeline.settings import NetworkConfig
    >>> cfg = NetworkConfig(model={"name": "tiny:cnn"}, cut="pool", head="fc2", hidden=[16])
    >>> net = build_network(cfg, ["a", "b", "c"])
    >>> net.frontier(), net.get_submodule("fc2").out_features
    (['pool'], 3)
"""

from __future__ import annotations

import torch

from pipeline.graph import TransferNet
from pipeline.layers import in_size
from pipeline.loading import load
from pipeline.settings import FineTuneConfig, NetworkConfig
from pipeline.surgery import TransferLearning
from pipeline.sweep_settings import Unfreeze


def build_network(
    cfg: NetworkConfig, classes: list[str], fine_tune: FineTuneConfig | None = None
) -> TransferNet:
    """Frozen through ``cfg.cut``, ``cfg.hidden`` blocks inserted before the head, the head
    resized to the classes; seeded, so a re-run builds the same initial head. With
    ``cfg.start_from``, an exported network refrozen at ``cfg.cut`` (DL4J: edit a trained
    network further), its head kept."""
    fine_tune = fine_tune or FineTuneConfig()
    if cfg.start_from:
        return continued_network(cfg.start_from, cfg.cuts(), classes, fine_tune)
    net = base_network(cfg, cfg.cuts(), classes, fine_tune.seed)
    return with_head(net, cfg.head, cfg.hidden, cfg.hidden_dropout, fine_tune)


def base_network(
    cfg: NetworkConfig, cut: list[str], classes: list[str], seed: int = 0
) -> TransferNet:
    """The zoo model frozen through ``cut`` (nothing when empty), its head resized to the
    classes (seeded by ``seed``)."""
    torch.manual_seed(seed)
    model = cfg.model
    builder = TransferLearning(
        model.name, weights=model.weights, image_size=model.image_size, **model.kwargs
    )
    if cut:
        builder.set_feature_extractor(*cut)
    net = builder.n_out_replace(cfg.head, len(classes)).build()
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
    path: str, cut: list[str], classes: list[str], fine_tune: FineTuneConfig
) -> TransferNet:
    """An exported network refrozen at ``cut`` (nothing when empty), its trained head kept."""
    net = load(path)
    if net.spec.get("classes") != list(classes):
        raise ValueError(
            f"{path} was trained on classes {net.spec.get('classes')}, the data has {classes}"
        )
    builder = TransferLearning(net)
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
