"""The networks jobs train: cuts from unfreeze depths, hidden blocks, a resized head, and
continuing from an exported network."""

import pytest
import torch

from pipeline.net.builder import TransferLearning
from pipeline.net.errors import UnknownNodeError
from pipeline.net.heads import build_network, cut_for, head_of, output_layers, zoo_network
from pipeline.settings import FineTuneConfig, ModelConfig


def test_unfreeze_depths_become_cuts():
    net = TransferLearning("torchvision:mobilenet_v2").build()
    assert cut_for(net, 0, "classifier.1") == ["classifier.0"]  # only the head trains
    assert cut_for(net, "top:2", "classifier.1") == ["features.16"]
    assert cut_for(net, 3, "classifier.1") == ["features.15"]
    assert cut_for(net, "features.10", "classifier.1") == ["features.10"]
    assert cut_for(net, "all", "classifier.1") == []
    with pytest.raises(ValueError, match="19 blocks"):
        cut_for(net, 19, "classifier.1")
    with pytest.raises(UnknownNodeError, match=r"features.18.*lists all \d+ nodes"):
        cut_for(net, "features.99", "classifier.1")


def test_build_network_freezes_inserts_hidden_blocks_and_resizes_the_head():
    cfg = ModelConfig(name="tiny:cnn", cut="pool", head="fc2", hidden=[24, 12], hidden_dropout=0.1)
    net = build_network(cfg, ["a", "b", "c"], FineTuneConfig(lr=0.02, seed=1))
    assert net.frontier() == ["pool"] and net.spec["classes"] == ["a", "b", "c"]
    assert [net.get_submodule(f"hidden{i}")[0].out_features for i in range(2)] == [24, 12]
    assert net.get_submodule("fc2").in_features == 12 and net(torch.zeros(2, 3, 32, 32)).shape == (
        2,
        3,
    )
    assert net.spec["fine_tune"]["lr"] == 0.02
    again = build_network(cfg, ["a", "b", "c"], FineTuneConfig(lr=0.02, seed=1))
    assert all(
        torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values())
    )  # seeded


def test_continuing_from_an_exported_network_refreezes_it_and_keeps_its_head(tmp_path):
    first = build_network(ModelConfig(name="tiny:cnn", cut="pool", head="fc2"), ["a", "b"])
    first.save(str(tmp_path / "model"))
    cfg = ModelConfig(start_from=str(tmp_path / "model"), cut="features.0", head="fc2")
    net = build_network(cfg, ["a", "b"])
    assert net.frontier() == ["features.0.2"]
    assert torch.equal(net.get_submodule("fc2").weight, first.get_submodule("fc2").weight)
    with pytest.raises(ValueError, match="trained on classes"):
        build_network(cfg, ["a", "b", "c"])


def test_the_head_defaults_to_the_networks_output_layer_and_the_cut_to_below_it():
    cfg = ModelConfig(name="tiny:cnn")
    base = zoo_network(cfg)
    assert head_of(base, cfg) == "fc2" and output_layers(base)[:2] == ["fc2", "fc1"]
    net = build_network(cfg, ["a", "b"], base=base)
    assert net.frontier() == ["dropout"]  # everything below the head, frozen
    assert net.get_submodule("fc2").out_features == 2
    assert base.get_submodule("fc2").out_features == 10 and not base.frozen  # edited a copy
