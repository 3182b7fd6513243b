"""The checkpoint format of a fit: a loadable network plus what resuming needs, no pickle.

A checkpoint directory holds ``spec.json`` + ``model.safetensors`` (the whole network:
``surgery.load(checkpoint)`` works), ``optimizer.safetensors`` (the optimizer's tensors) and
``state.json`` (history, attempts, the epoch's evaluation, param groups, scheduler).

Example:

    >>> import tempfile, torch
    >>> from pipeline.train.checkpoints import read_checkpoint, save_checkpoint
    >>> from pipeline.net.finetune import build_optimizer
    >>> from pipeline.settings import FineTuneConfig
    >>> from pipeline.net.builder import TransferLearning
    >>> net = TransferLearning("tiny:cnn").set_feature_extractor("pool").build()
    >>> opt, sched = build_optimizer(net, FineTuneConfig(), total_steps=4)
    >>> directory = tempfile.mkdtemp()
    >>> save_checkpoint(directory, net, opt, sched, {"history": [], "attempts": [[]]})
    >>> state, weights, optimizer = read_checkpoint(directory)
    >>> state["attempts"], len(weights) > 0
    ([[]], True)
"""

from __future__ import annotations

import hashlib
import json
import os

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import load_file, save_file

from pipeline.net.graph import TransferNet

STATE, OPTIMIZER = "state.json", "optimizer.safetensors"


def save_checkpoint(directory: str, net: TransferNet, opt, sched, state: dict) -> None:
    """Write the network, the optimizer's tensors and ``state`` (plus the optimizer's param
    groups and the scheduler) into ``directory``."""
    for name, data in net.to_files().items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
    opt_state = opt.state_dict()
    tensors = {
        f"{i}.{k}": v.detach().cpu().contiguous()
        for i, s in opt_state["state"].items()
        for k, v in s.items()
        if torch.is_tensor(v)
    }
    save_file(tensors, os.path.join(directory, OPTIMIZER))
    with open(os.path.join(directory, STATE), "w") as f:
        json.dump(
            dict(state, param_groups=opt_state["param_groups"], scheduler=sched.state_dict()), f
        )


def read_checkpoint(checkpoint) -> tuple[dict, bytes, dict[str, torch.Tensor]]:
    """(state.json, model.safetensors bytes, optimizer tensors) of a checkpoint (a directory or
    a Ray ``Checkpoint``); refuses weights that do not match their spec."""
    if isinstance(checkpoint, str):
        return _read(checkpoint)
    with checkpoint.as_directory() as directory:
        return _read(directory)


def _read(directory: str) -> tuple[dict, bytes, dict[str, torch.Tensor]]:
    with open(os.path.join(directory, STATE)) as f:
        state = json.load(f)
    with open(os.path.join(directory, "spec.json"), "rb") as f:
        spec = json.load(f)
    with open(os.path.join(directory, "model.safetensors"), "rb") as f:
        blob = f.read()
    optimizer = load_file(os.path.join(directory, OPTIMIZER))
    if hashlib.sha256(blob).hexdigest() != spec.get("safetensors_sha256"):
        raise RuntimeError(
            f"checkpoint {directory}: model.safetensors does not match its "
            "spec.json; the checkpoint is damaged"
        )
    return state, blob, optimizer


def restore(net: TransferNet, opt, sched, checkpoint) -> dict:
    """Load a checkpoint's weights (onto ``net``'s device), optimizer and scheduler; return its
    state (history, attempts)."""
    state, blob, tensors = read_checkpoint(checkpoint)
    net.load_state_dict(load_tensors(blob), strict=True)
    per_param: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        per_param.setdefault(int(index), {})[name] = value
    opt.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
    sched.load_state_dict(state["scheduler"])
    return state


def copy_back(net: TransferNet, checkpoint) -> None:
    """Load a checkpoint's weights into ``net``; the frozen tensors must not have changed."""
    _, blob, _ = read_checkpoint(checkpoint)
    trained, current = load_tensors(blob), net.state_dict()
    changed = [
        k
        for k in sorted(net.frozen_parameter_names())
        if not torch.equal(trained[k], current[k].detach().cpu())
    ]
    if changed:
        raise RuntimeError(
            f"frozen tensors changed during training: {changed[:5]}; refusing to "
            "copy the result back (this is a bug: please report it)"
        )
    net.load_state_dict(trained, strict=True)
