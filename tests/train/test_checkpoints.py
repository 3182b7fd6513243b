"""The checkpoint format: a loadable network, the optimizer and schedule, no pickle; resuming
restores all three, copy-back refuses a checkpoint whose frozen tensors moved."""

import pytest
import torch

from pipeline.net.builder import TransferLearning
from pipeline.net.finetune import build_optimizer
from pipeline.net.saving import load
from pipeline.settings import FineTuneConfig
from pipeline.train.checkpoints import copy_back, read_checkpoint, restore, save_checkpoint


def _trained(steps: int = 3):
    torch.manual_seed(0)
    net = TransferLearning("tiny:cnn").set_feature_extractor("pool").build()
    opt, sched = build_optimizer(net, FineTuneConfig(lr=0.1, schedule="cosine"), total_steps=10)
    for _ in range(steps):
        opt.zero_grad()
        net(torch.randn(4, 3, 32, 32)).pow(2).mean().backward()
        opt.step()
        sched.step()
    return net, opt, sched


def test_a_checkpoint_restores_weights_optimizer_and_schedule(tmp_path):
    net, opt, sched = _trained()
    save_checkpoint(str(tmp_path), net, opt, sched, {"history": [{"epoch": 1}], "attempts": [[1]]})
    assert {p.name for p in tmp_path.iterdir()} == {
        "spec.json",
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
    }
    assert torch.equal(
        load(str(tmp_path)).eval()(torch.zeros(1, 3, 32, 32)), net.eval()(torch.zeros(1, 3, 32, 32))
    )
    fresh, fresh_opt, fresh_sched = _trained(steps=0)
    state = restore(fresh, fresh_opt, fresh_sched, str(tmp_path))
    assert state["history"] == [{"epoch": 1}] and fresh_sched.last_epoch == sched.last_epoch
    moments = [s["exp_avg"] for s in opt.state_dict()["state"].values()]
    assert all(
        torch.equal(a, b["exp_avg"])
        for a, b in zip(moments, fresh_opt.state_dict()["state"].values())
    )


def test_damaged_weights_and_moved_frozen_tensors_are_refused(tmp_path):
    net, opt, sched = _trained()
    save_checkpoint(str(tmp_path), net, opt, sched, {"history": [], "attempts": []})
    other, _, _ = _trained()
    with torch.no_grad():
        other.get_parameter(sorted(other.frozen_parameter_names())[0]).add_(1)
    with pytest.raises(RuntimeError, match="frozen tensors changed"):
        copy_back(other, str(tmp_path))
    blob = bytearray((tmp_path / "model.safetensors").read_bytes())
    blob[-1] ^= 1
    (tmp_path / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(RuntimeError, match="damaged"):
        read_checkpoint(str(tmp_path))
