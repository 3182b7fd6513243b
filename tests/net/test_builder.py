import json

import pytest
import torch
from torch import nn

from networks import SequenceClassifier
from pipeline.net import finetune, zoo
from pipeline.net.builder import TransferLearning
from pipeline.net.errors import SurgeryError
from pipeline.net.saving import load
from pipeline.settings import FineTuneConfig

ARCHS = {  # arch -> (classifier layer, an earlier block, the block before that)
    "torchvision:mobilenet_v2": ("classifier.1", "features.14", "features.13"),
    "torchvision:resnet18": ("fc", "layer3", "layer2"),
}


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _last_node(net, block: str) -> str:
    return [n for n in net.nodes() if n.startswith(block + ".")][-1]


@pytest.fixture(scope="module", params=list(ARCHS))
def base(request):
    return zoo.load_model(request.param)


@pytest.fixture(scope="module")
def scenario_b(base):
    head, block, _ = ARCHS[base.name]
    net = (
        TransferLearning(base)
        .set_feature_extractor(block)
        .n_out_replace(head, 1024)
        .add_layer("dense", nn.Linear(1024, 256), head)
        .add_layer("dense_relu", nn.ReLU(), "dense")
        .add_layer("out", nn.Linear(256, 5), "dense_relu")
        .set_outputs("out")
        .build()
    )
    return net


# --------------------------------------------------------------------------- seed scenarios


def test_scenario_a_replace_classifier(base):
    head, _, _ = ARCHS[base.name]
    before = _snapshot(base.model)
    net = TransferLearning(base).set_feature_extractor("flatten").n_out_replace(head, 5).build()

    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    assert net.frontier() == ["flatten"]
    assert net.frozen == {n for n in net.nodes()[1 : net.nodes().index("flatten") + 1]}
    assert head not in net.frozen
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {f"{head}.weight", f"{head}.bias"}
    # the original model is untouched: weights, sizes and trainability
    assert _same(before, base.model.state_dict())
    assert base.model.get_submodule(head).out_features == 1000
    assert all(p.requires_grad for p in base.model.parameters())


def test_scenario_b_widen_add_and_set_outputs(base, scenario_b):
    head, block, _ = ARCHS[base.name]
    net = scenario_b
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    assert net.outputs() == ["out"]
    assert net.get_submodule(head).out_features == 1024
    assert net.frontier() == [_last_node(net, block)]
    assert all(n in net.frozen for n in net.nodes()[1:] if n.startswith(block + "."))
    assert not {head, "dense", "out"} & net.frozen
    assert base.model.get_submodule(head).out_features == 1000


def test_scenario_c_move_boundary_earlier_after_save(base, scenario_b, tmp_path):
    _, block, earlier = ARCHS[base.name]
    scenario_b.save(str(tmp_path / "b"))
    loaded = load(str(tmp_path / "b"))
    x = torch.randn(2, 3, 64, 64)

    net = TransferLearning(loaded).set_feature_extractor(earlier).build()
    assert net.frontier() == [_last_node(net, earlier)]
    assert all(n not in net.frozen for n in net.nodes() if n.startswith(block + "."))
    assert all(p.requires_grad for n, p in net.named_parameters() if n.startswith(block + "."))
    assert loaded.frozen == scenario_b.frozen  # the loaded network is unchanged
    net.eval(), loaded.eval()
    assert torch.equal(net(x), loaded(x))
    assert len(net.spec["ops"]) == len(loaded.spec["ops"]) + 1


# --------------------------------------------------------------------------- widening


def test_preserve_widens_lstm_without_changing_outputs():
    net = TransferLearning(SequenceClassifier(), input_shape=(8, 4)).build().eval()
    x = torch.randn(3, 8, 4)
    expected = net(x)
    wide = TransferLearning(net).n_out_replace("lstm", 24, preserve=True).build().eval()
    assert wide.get_submodule("lstm").hidden_size == 24
    assert wide.get_submodule("output").in_features == 24
    assert torch.allclose(wide(x), expected, atol=1e-6)

    # gradients reach the new units: their outgoing weights at once, their own after a step
    opt = torch.optim.SGD(wide.parameters(), lr=0.5)
    for step in range(2):
        opt.zero_grad()
        wide(x).pow(2).mean().backward()
        if step == 0:
            assert wide.get_submodule("output").weight.grad[:, 16:].abs().sum() > 0
        opt.step()
    lstm = wide.get_submodule("lstm")
    new_rows = torch.cat([torch.arange(16, 24) + 24 * g for g in range(4)])
    assert lstm.weight_ih_l0.grad[new_rows].abs().sum() > 0


@pytest.mark.parametrize("layer,n", [("fc1", 48), ("features.0.0", 12)])
def test_preserve_widens_linear_and_conv_without_changing_outputs(layer, n):
    net = TransferLearning("tiny:cnn").build().eval()
    x = torch.randn(3, 3, 32, 32)
    expected = net(x)
    wide = TransferLearning(net).n_out_replace(layer, n, preserve=True).build().eval()
    assert torch.allclose(wide(x), expected, atol=1e-6)
    if layer == "features.0.0":  # BatchNorm and the next conv follow the width
        assert wide.get_submodule("features.0.1").num_features == n
        assert wide.get_submodule("features.1.0").in_channels == n


def test_n_out_replace_without_preserve_reinitializes_the_next_layer():
    net = TransferLearning("tiny:cnn").build()
    old = net.get_submodule("fc2").weight.clone()
    wide = TransferLearning(net).n_out_replace("fc1", 64, init="xavier", init_next="zeros").build()
    assert wide.get_submodule("fc2").weight.shape == (old.shape[0], 64)
    assert torch.count_nonzero(wide.get_submodule("fc2").weight) == 0


def test_n_in_replace():
    net = (
        TransferLearning("tiny:cnn")
        .remove_vertex_keep_connections("fc1")
        .add_layer("fc1", nn.Linear(16, 40))
        .n_in_replace("fc2", 40)
        .build()
    )
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("layer", [nn.Linear(32, 32), nn.Conv2d(8, 8, 3, padding=1)])
def test_insert_identity_layer_keeps_outputs(layer):
    after = "fc1" if isinstance(layer, nn.Linear) else "features.0.0"
    net = TransferLearning("tiny:cnn").build().eval()
    x = torch.randn(2, 3, 32, 32)
    deeper = TransferLearning(net).insert_layer("new", layer, after=after).build().eval()
    assert deeper.nodes().index("new") == deeper.nodes().index(after) + 1
    assert torch.allclose(deeper(x), net(x), atol=1e-5)


def test_identity_init_needs_a_square_layer():
    with pytest.raises(ValueError, match="identity init needs a square"):
        TransferLearning("tiny:cnn").insert_layer("new", nn.Linear(32, 16), after="fc1")


# --------------------------------------------------------------------------- vertices and removal


def test_remove_keep_connections_then_refill():
    net = (
        TransferLearning("tiny:cnn")
        .remove_vertex_keep_connections("fc2")
        .add_layer("fc2", nn.Linear(32, 3))
        .build()
    )
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert net.outputs() == ["fc2"]


def test_remove_and_connections_then_new_output():
    net = (
        TransferLearning("tiny:cnn")
        .remove_vertex_and_connections("fc2")
        .add_layer("head", nn.Linear(32, 4), "dropout")
        .set_outputs("head")
        .build()
    )
    assert "fc2" not in net.nodes()
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_removed_vertex_still_consumed_is_an_error():
    builder = TransferLearning("tiny:cnn").remove_vertex_and_connections("fc1")
    with pytest.raises(SurgeryError, match="'fc1' was removed but 'relu' still consume"):
        builder.build()


def test_add_vertex_concat_two_heads():
    net = (
        TransferLearning("tiny:cnn")
        .set_feature_extractor("flatten")
        .add_layer("head_a", nn.Linear(16, 3), "flatten")
        .add_layer("head_b", nn.Linear(16, 2), "flatten")
        .add_vertex("both", "concat", "head_a", "head_b")
        .add_vertex("sum", "add", "head_a", "head_a")
        .set_outputs("both", "sum")
        .build()
    )
    both, total = net(torch.randn(2, 3, 32, 32))
    assert both.shape == (2, 5) and total.shape == (2, 3)
    assert net.frontier() == ["flatten"]


def test_layer_overrides_win_over_fine_tune_config():
    net = (
        TransferLearning("tiny:cnn")
        .set_feature_extractor("features")
        .fine_tune_configuration({"lr": 0.1})
        .add_layer("extra", nn.Linear(10, 2), "fc2", lr=0.001)
        .set_outputs("extra")
        .build()
    )
    groups = finetune.param_groups(net, FineTuneConfig(**net.spec["fine_tune"]))
    lrs = {name: g["lr"] for g in groups for name in g["names"]}
    assert lrs["extra.weight"] == 0.001 and lrs["fc1.weight"] == 0.1


# --------------------------------------------------------------------------- errors


def test_n_out_replace_through_a_residual_add_is_refused():
    with pytest.raises(SurgeryError, match="layer1.0.add"):
        TransferLearning("torchvision:resnet18").n_out_replace("layer1.0.conv2", 32)


def test_editing_a_frozen_layer_is_refused():
    with pytest.raises(SurgeryError, match="'features.0.0' is frozen"):
        TransferLearning("tiny:cnn").set_feature_extractor("features").n_out_replace(
            "features.0.0", 4
        )


# --------------------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path, scenario_b):
    scenario_b.save(str(tmp_path / "net"))
    loaded = load(str(tmp_path / "net"))
    x = torch.randn(2, 3, 64, 64)
    scenario_b.eval(), loaded.eval()
    assert torch.equal(loaded(x), scenario_b(x))
    assert loaded.frozen == scenario_b.frozen and loaded.frontier() == scenario_b.frontier()
    assert not any(
        p.requires_grad
        for n, p in loaded.named_parameters()
        if n in loaded.frozen_parameter_names()
    )


def test_tampered_weights_are_refused(tmp_path):
    net = TransferLearning("tiny:cnn").set_feature_extractor("features").build()
    net.save(str(tmp_path))
    blob = bytearray((tmp_path / "model.safetensors").read_bytes())
    blob[-1] ^= 1
    (tmp_path / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(SurgeryError, match="sha256 differs"):
        load(str(tmp_path))


def test_spec_that_does_not_match_the_weights_is_refused(tmp_path):
    net = TransferLearning("tiny:cnn").n_out_replace("fc2", 5).build()
    net.save(str(tmp_path))
    spec = json.loads((tmp_path / "spec.json").read_text())
    spec["ops"][0]["args"][1] = 6
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(SurgeryError, match="does not fit the network"):
        load(str(tmp_path))


def test_edited_frozen_set_is_refused(tmp_path):
    TransferLearning("tiny:cnn").set_feature_extractor("features").build().save(str(tmp_path))
    spec = json.loads((tmp_path / "spec.json").read_text())
    spec["frozen"] = spec["frozen"][:2]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(SurgeryError, match="the spec was edited"):
        load(str(tmp_path))


def test_every_builder_op_is_recorded_and_replayed_by_name(tmp_path):
    assert set(TransferLearning.ops()) == {
        "fine_tune_configuration",
        "set_feature_extractor",
        "remove_vertex_keep_connections",
        "remove_vertex_and_connections",
        "add_layer",
        "add_vertex",
        "insert_layer",
        "n_out_replace",
        "n_in_replace",
        "set_outputs",
    }
    net = (
        TransferLearning("tiny:cnn")
        .set_feature_extractor("features")
        .insert_layer("square", nn.Linear(32, 32), after="fc1")
        .add_vertex("pooled", "maxpool", "features.1.2")
        .set_outputs("fc2", "pooled")
        .build()
    )
    assert [op["op"] for op in net.spec["ops"]] == [
        "set_feature_extractor",
        "insert_layer",
        "add_vertex",
        "set_outputs",
    ]
    net.save(str(tmp_path))
    assert load(str(tmp_path)).nodes() == net.nodes()
    spec = json.loads((tmp_path / "spec.json").read_text())
    spec["ops"].append({"op": "__init__", "args": [], "kwargs": {}})
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(SurgeryError, match="unknown op '__init__'"):
        load(str(tmp_path))


def test_image_size_changes_crops_and_frontier_shapes_and_survives_save(tmp_path):
    zm = zoo.load_model("tiny:cnn", image_size=48)
    assert zm.input_shape == (3, 48, 48) and zm.image_size == 48
    assert (zm.preprocess.crop_size, zm.preprocess.resize_size) == (48, 54)  # 36/32 of the crop
    net = TransferLearning("tiny:cnn", image_size=48).set_feature_extractor("features").build()
    small = TransferLearning("tiny:cnn").set_feature_extractor("features").build()
    assert net.frontier_shapes() != small.frontier_shapes()
    net.save(str(tmp_path / "net"))
    again = load(str(tmp_path / "net"))
    assert again.frontier_shapes() == net.frontier_shapes()
    assert again.spec["preprocess"]["crop_size"] == 48
    with pytest.raises(zoo.ZooError, match="image networks only"):
        zoo.ZooModel("sequences", SequenceClassifier(), None, (8, 4)).at_size(32)
