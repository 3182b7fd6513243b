"""The traced network: frozen means frozen, the frontier across skip connections, names and
shapes in errors, tracing failures."""

import copy

import pytest
import torch
from torch import nn

from pipeline.net import finetune
from pipeline.net.builder import TransferLearning
from pipeline.net.errors import ShapeMismatchError, TraceError, UnknownNodeError
from pipeline.net.tiny import TinyCNN
from pipeline.settings import FineTuneConfig


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- frozen means frozen


@pytest.mark.parametrize(
    "name,cut", [("tiny:cnn", "features.0"), ("torchvision:mobilenet_v2", "features.10")]
)
def test_frozen_tensors_bit_identical_after_training(name, cut):
    net = (
        TransferLearning(name)
        .set_feature_extractor(cut)
        .fine_tune_configuration(FineTuneConfig(optimizer="sgd", lr=0.05, weight_decay=1e-3))
        .build()
    )
    frozen = net.frozen_parameter_names()
    before = _snapshot(net)
    opt, sched = finetune.build_optimizer(
        net, FineTuneConfig(optimizer="sgd", lr=0.05, weight_decay=1e-3), total_steps=20
    )
    net.train()
    for _ in range(20):
        x = torch.randn(4, 3, 32, 32) * 3 + 1  # shifted inputs would move BN running stats
        loss = net(x).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    after = net.state_dict()
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    trainable = [k for k, p in net.named_parameters() if k not in frozen]
    assert trainable and all(not torch.equal(before[k], after[k]) for k in trainable)
    assert all(not m.training for m in net._frozen_modules().values())


def test_frozen_batchnorm_ignores_train_on_submodules():
    net = TransferLearning("tiny:cnn").set_feature_extractor("features").build()
    bn = net.get_submodule("features.0.1")
    stats = bn.running_mean.clone()
    for m in net.modules():
        m.train()  # bypasses TransferNet.train; the pre-hook still holds
    net(torch.randn(4, 3, 32, 32) + 5)
    assert torch.equal(bn.running_mean, stats)
    assert not bn.running_mean.requires_grad and not bn.weight.requires_grad


def test_in_place_freezes_the_given_model():
    model = TinyCNN()
    net = (
        TransferLearning(model, in_place=True, input_shape=(3, 32, 32))
        .set_feature_extractor("features")
        .build()
    )
    assert not model.features[0][0].weight.requires_grad
    assert model.fc2.weight.requires_grad
    assert net.get_submodule("fc2") is model.fc2


def test_in_place_replaces_layers_in_the_given_model_but_rewires_only_the_net():
    model = TinyCNN()
    net = (
        TransferLearning(model, in_place=True, input_shape=(3, 32, 32))
        .set_feature_extractor("features")
        .n_out_replace("fc2", 3)
        .insert_layer("extra", nn.ReLU(), after="fc1", init="xavier")
        .build()
    )
    assert model.fc2.out_features == 3 and net.get_submodule("fc2") is model.fc2
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert "extra" in net.nodes() and not hasattr(model, "extra")


# --------------------------------------------------------------------------- frontier


@pytest.mark.parametrize(
    "name,cut,frontier",
    [
        ("tiny:resnet", "block1.bn2", ["stem.2", "block1.bn2"]),
        ("torchvision:resnet18", "layer1.0.bn2", ["maxpool", "layer1.0.bn2"]),
    ],
)
def test_skip_connection_crossing_the_cut(name, cut, frontier):
    net = TransferLearning(name).set_feature_extractor(cut).build().eval()
    assert net.frontier() == frontier
    x = torch.randn(2, 3, 64, 64)
    features = net.featurize(x)
    assert list(features) == frontier
    assert torch.allclose(net.output_from_featurized(features), net(x), atol=1e-5)
    in_batches = net.featurize(x, batch_size=1)
    assert all(torch.allclose(in_batches[k], features[k], atol=1e-5) for k in frontier)


def test_nothing_frozen_means_the_input_is_the_frontier():
    net = TransferLearning("tiny:cnn").build()
    assert net.frozen == set() and net.frontier() == ["x"]


def test_deepcopy_keeps_frozen_set():
    net = TransferLearning("tiny:cnn").set_feature_extractor("features").build()
    twin = copy.deepcopy(net)
    assert twin.frozen == net.frozen and twin.spec == net.spec
    assert twin.frontier() == net.frontier()


def test_blocks_are_the_natural_boundaries():
    mobilenet = TransferLearning("torchvision:mobilenet_v2").build()
    assert mobilenet.blocks() == [f"features.{i}" for i in range(19)]
    resnet = TransferLearning("torchvision:resnet18").build()
    assert resnet.blocks()[-4:] == ["layer1", "layer2", "layer3", "layer4"]


# --------------------------------------------------------------------------- errors


def test_unknown_name_lists_valid_names_and_closest():
    with pytest.raises(UnknownNodeError) as e:
        TransferLearning("tiny:cnn").set_feature_extractor("featurs.0")
    msg = str(e.value)
    assert "did you mean 'features.0'" in msg
    assert "features.0.0, features.0.1" in msg and "fc2" in msg


def test_shape_mismatch_names_both_layers_and_shapes():
    builder = (
        TransferLearning("tiny:cnn").add_layer("bad", nn.Linear(7, 3), "fc1").set_outputs("bad")
    )
    with pytest.raises(ShapeMismatchError) as e:
        builder.build()
    assert "'bad'" in str(e.value) and "'fc1' of shape (32,)" in str(e.value)
    assert "in_features=7" in str(e.value)


class _DataDependent(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(4, 4)
        self.gate = _DataDependent()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.gate(self.stem(x)))


def test_untraceable_module_is_named_with_the_leaf_hint():
    with pytest.raises(TraceError) as e:
        TransferLearning(_Untraceable())
    assert "'gate' (_DataDependent)" in str(e.value)
    assert "leaf_modules=(_DataDependent,)" in str(e.value)
    net = (
        TransferLearning(_Untraceable(), leaf_modules=(_DataDependent,), input_shape=(4,))
        .set_feature_extractor("gate")
        .build()
    )
    assert net.frontier() == ["gate"]
