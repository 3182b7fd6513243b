"""Fitting the trainable part of a network on frontier features.

``fit_local`` is the single-process loop (DL4J's ``fitFeaturized``): it trains
``net.trainable()`` in place, so the full network holds the result.

Example::

    >>> import torch
    >>> from pipeline.surgery import TransferLearning
    >>> from pipeline.train import fit_local
    >>> net = TransferLearning("tiny:cnn").set_feature_extractor("flatten").build()
    >>> feats = net.featurize(torch.randn(8, 3, 32, 32))
    >>> history = fit_local(net, feats, torch.randint(0, 10, (8,)), epochs=2)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.finetune import FineTuneConfig, build_optimizer, clip_gradients
from pipeline.surgery import TransferNet


def _batches(n: int, batch_size: int, generator: torch.Generator):
    order = torch.randperm(n, generator=generator)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def fit_local(net: TransferNet, features: dict[str, torch.Tensor], labels: torch.Tensor,
              config: FineTuneConfig | None = None, epochs: int = 10,
              batch_size: int = 32) -> list[float]:
    """Train ``net``'s trainable part on frontier ``features``; returns the mean loss per epoch."""
    config = config or FineTuneConfig(**net.spec.get("fine_tune", {}))
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    inputs = [features[name].float() for name in net.frontier()]
    steps = epochs * -(-len(labels) // batch_size)
    opt, sched = build_optimizer(net, config, total_steps=steps)
    head = net.trainable().train()
    history = []
    for _ in range(epochs):
        total = 0.0
        for idx in _batches(len(labels), batch_size, generator):
            loss = F.cross_entropy(head(*[x[idx] for x in inputs]), labels[idx])
            opt.zero_grad()
            loss.backward()
            clip_gradients(opt, config)
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        history.append(total / len(labels))
    return history


@torch.inference_mode()
def accuracy_from_features(net: TransferNet, features: dict[str, torch.Tensor],
                           labels: torch.Tensor) -> float:
    """Top-1 accuracy of ``net`` on frontier features."""
    net.eval()
    logits = net.output_from_featurized({k: v.float() for k, v in features.items()})
    return (logits.argmax(1) == labels).float().mean().item()
