"""Fine-tune configuration: optimizer, schedule, clipping, per-layer overrides, param groups.

Param groups are built from the network's trainable parameters only: a frozen parameter never
enters an optimizer, whatever its ``requires_grad`` says.

Example:

    >>> from pipeline.net import finetune
    >>> from pipeline.net.builder import TransferLearning
    >>> from pipeline.settings import FineTuneConfig
    >>> net = TransferLearning("tiny:cnn").set_feature_extractor("features").build()
    >>> cfg = FineTuneConfig(optimizer="sgd", lr=0.1, overrides={"fc2": {"lr": 0.01}})
    >>> opt, sched = finetune.build_optimizer(net, cfg, total_steps=10)
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

from pipeline.settings import FineTuneConfig, LayerOverride


def _no_decay(name: str, p: torch.Tensor) -> bool:
    # Norm scales/shifts and biases are 1-D: decaying them only hurts (standard practice).
    return p.ndim <= 1 or name.endswith(".bias")


def _override_for(name: str, overrides: dict[str, LayerOverride]) -> tuple[str, LayerOverride]:
    """The most specific override whose key is ``name`` or a module path prefix of it."""
    keys = [k for k in overrides if name == k or name.startswith(k + ".")]
    if not keys:
        return "", LayerOverride()
    key = max(keys, key=len)
    return key, overrides[key]


def check_overrides(net: nn.Module, cfg: FineTuneConfig) -> None:
    """Every override key must name a module or parameter of ``net``."""
    valid = {n for n, _ in net.named_modules() if n} | {n for n, _ in net.named_parameters()}
    for key in cfg.overrides:
        if key not in valid:
            raise ValueError(
                f"fine-tune override {key!r} names no layer; closest: "
                f"{difflib.get_close_matches(key, sorted(valid), n=5)}"
            )


def param_groups(net: nn.Module, cfg: FineTuneConfig) -> list[dict]:
    """Trainable parameters grouped by (override, decay) with their lr and weight decay."""
    check_overrides(net, cfg)
    frozen = set(getattr(net, "frozen_parameter_names", lambda: set())())
    groups: dict[tuple[str, bool], dict] = {}
    for name, p in net.named_parameters():
        if name in frozen or not p.requires_grad:
            continue
        key, ov = _override_for(name, cfg.overrides)
        decays = cfg.decay_norm_and_bias or not _no_decay(name, p)
        wd = (
            (ov.weight_decay if ov.weight_decay is not None else cfg.weight_decay)
            if decays
            else 0.0
        )
        group = groups.setdefault(
            (key, decays), {"params": [], "names": [], "lr": ov.lr or cfg.lr, "weight_decay": wd}
        )
        group["params"].append(p)
        group["names"].append(name)
    if not groups:
        raise ValueError("the network has no trainable parameters: everything is frozen")
    return list(groups.values())


def build_optimizer(net: nn.Module, cfg: FineTuneConfig, total_steps: int):
    """The optimizer over trainable parameters and its per-step lr scheduler."""
    groups = param_groups(net, cfg)
    if cfg.optimizer in ("sgd", "nesterov"):
        opt = torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.optimizer == "nesterov"
        )
    elif cfg.optimizer == "adam":
        opt = torch.optim.Adam(groups, lr=cfg.lr)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.lr)
    return opt, _scheduler(opt, cfg, max(1, total_steps))


def _scheduler(opt: torch.optim.Optimizer, cfg: FineTuneConfig, total_steps: int):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=total_steps
        )
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)


def clip_gradients(opt: torch.optim.Optimizer, cfg: FineTuneConfig) -> None:
    """Clip the global gradient norm of the optimizer's parameters when the config asks."""
    if cfg.grad_clip:
        params = [p for g in opt.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
