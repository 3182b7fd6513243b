import pytest
import torch
from torch import nn

from pipeline.net import finetune
from pipeline.net.builder import TransferLearning
from pipeline.settings import FineTuneConfig


@pytest.fixture
def net():
    return (
        TransferLearning("tiny:cnn")
        .set_feature_extractor("features")
        .add_layer("extra", nn.Linear(10, 2), "fc2")
        .set_outputs("extra")
        .build()
    )


def _groups(net, **cfg):
    return finetune.param_groups(net, FineTuneConfig(**cfg))


def test_frozen_parameters_never_enter_the_optimizer(net):
    names = {n for g in _groups(net) for n in g["names"]}
    assert names and not names & net.frozen_parameter_names()
    # even when a user turns requires_grad back on by hand
    for p in net.parameters():
        p.requires_grad_(True)
    assert not {n for g in _groups(net) for n in g["names"]} & net.frozen_parameter_names()


def test_no_weight_decay_on_norms_and_biases_unless_asked(net):
    decay = {n: g["weight_decay"] for g in _groups(net, weight_decay=0.1) for n in g["names"]}
    assert decay["fc1.weight"] == 0.1 and decay["fc1.bias"] == 0.0
    decay = {
        n: g["weight_decay"]
        for g in _groups(net, weight_decay=0.1, decay_norm_and_bias=True)
        for n in g["names"]
    }
    assert decay["fc1.bias"] == 0.1


def test_per_layer_overrides_by_module_path(net):
    groups = _groups(net, lr=0.1, overrides={"extra": {"lr": 0.5, "weight_decay": 0.2}})
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["extra.weight"]["lr"] == 0.5 and by_name["extra.weight"]["weight_decay"] == 0.2
    assert by_name["fc1.weight"]["lr"] == 0.1


def test_unknown_override_names_the_closest(net):
    with pytest.raises(ValueError, match="extra"):
        _groups(net, overrides={"extr": {"lr": 0.5}})


@pytest.mark.parametrize(
    "optimizer,cls",
    [
        ("sgd", torch.optim.SGD),
        ("nesterov", torch.optim.SGD),
        ("adam", torch.optim.Adam),
        ("adamw", torch.optim.AdamW),
    ],
)
@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
def test_optimizers_and_schedules_step(net, optimizer, cls, schedule):
    cfg = FineTuneConfig(optimizer=optimizer, schedule=schedule, lr=0.01, grad_clip=1.0)
    opt, sched = finetune.build_optimizer(net, cfg, total_steps=5)
    assert isinstance(opt, cls)
    assert opt.param_groups[0].get("nesterov", False) == (optimizer == "nesterov")
    lrs = []
    for _ in range(5):
        opt.zero_grad()
        net(torch.randn(2, 3, 32, 32)).sum().backward()
        finetune.clip_gradients(opt, cfg)
        total = torch.norm(
            torch.stack(
                [p.grad.norm() for g in opt.param_groups for p in g["params"] if p.grad is not None]
            )
        )
        assert total <= 1.0 + 1e-4
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert (len(set(lrs)) == 1) == (schedule == "constant")


def test_config_is_validated():
    with pytest.raises(ValueError):
        FineTuneConfig(optimizer="rmsprop")
    with pytest.raises(ValueError):
        FineTuneConfig(lr=-1)
