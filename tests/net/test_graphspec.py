"""Any network the builder can edit saves without pickle and loads without its class."""

import json
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn

from pipeline.net import graphspec
from pipeline.net.builder import TransferLearning
from pipeline.net.graphspec import GraphSpecError
from pipeline.net.layers import register_layer
from pipeline.net.saving import load


def test_a_torchvision_model_passed_as_an_object_round_trips(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=5)
    net = TransferLearning(model).set_feature_extractor("features.14").build()
    net.save(str(tmp_path / "net"))
    x = torch.randn(2, 3, 64, 64)
    loaded = load(str(tmp_path / "net"))
    net.eval(), loaded.eval()
    assert torch.equal(loaded(x), net(x))
    assert loaded.frozen == net.frozen and loaded.frontier() == net.frontier()
    assert not any(
        p.requires_grad
        for n, p in loaded.named_parameters()
        if n in loaded.frozen_parameter_names()
    )
    spec = json.loads((tmp_path / "net" / "spec.json").read_text())
    assert spec["base"] is None and "MobileNetV2" not in json.dumps(spec)


def test_load_never_imports_the_original_class(tmp_path):
    class Net(nn.Module):  # defined here: no other process can import it
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.body(x), 1), 1))

    net = TransferLearning(Net(), input_shape=(3, 8, 8)).set_feature_extractor("body").build()
    net.save(str(tmp_path / "net"))
    torch.manual_seed(1)
    expected = net.eval()(torch.randn(1, 3, 8, 8))
    # a fresh process, where the class above does not exist
    script = (
        "import json, torch; from pipeline.net.saving import load; "
        f"net = load({str(tmp_path / 'net')!r}).eval(); torch.manual_seed(1); "
        "y = net(torch.randn(1, 3, 8, 8)); "
        "print(json.dumps([sorted(net.frozen), y.tolist()]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    frozen, y = json.loads(out)
    assert frozen == sorted(net.frozen)
    assert torch.allclose(torch.tensor(y), expected, atol=1e-6)


class _Scale(nn.Module):
    def __init__(self, factor: float = 2.0):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


class _Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(4, 4)
        self.scale = _Scale(3.0)

    def forward(self, x):
        return self.scale(self.stem(x))


def test_a_module_outside_the_allow_list_is_refused_at_save_with_the_fix(tmp_path):
    net = TransferLearning(_Custom(), input_shape=(4,), leaf_modules=(_Scale,)).build()
    with pytest.raises(GraphSpecError) as e:
        net.save(str(tmp_path / "net"))
    assert "'scale'" in str(e.value) and "_Scale" in str(e.value)
    assert "register_layer(_Scale)" in str(e.value)
    register_layer(_Scale)
    net.save(str(tmp_path / "net"))
    loaded = load(str(tmp_path / "net"))
    x = torch.randn(2, 4)
    assert torch.equal(loaded(x), net(x)) and loaded.get_submodule("scale").factor == 3.0


def test_a_spec_may_name_only_allow_listed_functions_and_methods():
    net = TransferLearning(torchvision.models.resnet18(num_classes=3)).build()
    spec = graphspec.describe(net)
    functions = {n["target"] for n in spec["nodes"] if n["op"] == "call_function"}
    assert functions == {"operator.add", "torch.flatten"}
    for bad in (
        {"op": "call_function", "target": "os.system"},
        {"op": "call_function", "target": "builtins.eval"},
        {"op": "call_method", "target": "__reduce__"},
    ):
        node = dict(spec["nodes"][1], **bad)
        with pytest.raises(GraphSpecError, match="not allowed"):
            graphspec.rebuild(dict(spec, nodes=[spec["nodes"][0], node]))
