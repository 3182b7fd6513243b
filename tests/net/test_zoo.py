import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from conftest import MOBILENET_WEIGHTS, SHARED, needs_shared
from pipeline.benchmarks.common import torchvision_transform
from pipeline.net import zoo
from pipeline.net.builder import TransferLearning
from pipeline.net.tiny import TinyCNN


@pytest.mark.parametrize("name,shape", [("tiny:cnn", (3, 32, 32)), ("tiny:resnet", (3, 32, 32))])
def test_tiny_networks_are_seeded_and_run(name, shape):
    a, b = zoo.load_model(name), zoo.load_model(name)
    assert a.input_shape == shape
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values())
    )
    assert a.model(torch.zeros(2, *shape)).shape[0] == 2


def test_unknown_model_names_the_closest():
    with pytest.raises(zoo.ZooError, match="tiny:cnn"):
        zoo.load_model("tiny:cn")
    with pytest.raises(zoo.ZooError, match="resnet18"):
        zoo.load_model("torchvision:resnet19")


def test_torchvision_preprocessing_comes_from_the_weights_enum():
    zm = zoo.load_model("torchvision:resnet18")
    assert zm.preprocess == zoo.IMAGENET and zm.input_shape == (3, 224, 224)


def test_timm_model_and_its_pretrained_cfg():
    zm = zoo.load_model("timm:test_resnet")
    assert zm.preprocess.crop_size == 160 and zm.preprocess.mean == (0.5, 0.5, 0.5)
    net = TransferLearning(zm).set_feature_extractor("layer2").build()
    assert net(torch.zeros(1, 3, 160, 160)).shape == (1, 1000)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_state_dict_files_load_strictly(tmp_path, suffix):
    source = TinyCNN()
    torch.nn.init.constant_(source.fc2.bias, 0.25)
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    zm = zoo.load_model("tiny:cnn", weights=str(path))
    assert torch.equal(zm.model.fc2.bias, source.fc2.bias)
    assert zm.weights_sha256 and len(zm.weights_sha256) == 64


def test_fsspec_uri_weights(tmp_path):
    import fsspec

    state = TinyCNN(num_classes=10).state_dict()
    with fsspec.open("memory://weights/tiny.pth", "wb") as f:
        torch.save(state, f)
    zm = zoo.load_model("tiny:cnn", weights="memory://weights/tiny.pth")
    assert torch.equal(zm.model.fc2.weight, state["fc2.weight"])


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"fc2.weight": _Payload()}, f)
    with pytest.raises(zoo.ZooError, match="refused to unpickle"):
        zoo.load_model("tiny:cnn", weights=str(path))


def test_weights_that_do_not_fit_are_refused(tmp_path):
    torch.save(TinyCNN(num_classes=3).state_dict(), tmp_path / "w.pth")
    with pytest.raises(RuntimeError, match="size mismatch"):
        zoo.load_model("tiny:cnn", weights=str(tmp_path / "w.pth"))


def test_packaged_default_has_real_weights_offline():
    zm = zoo.load_model("default")
    assert zm.name == zoo.DEFAULT_MODEL and zm.weights_sha256
    assert zm.preprocess.mean == (0.5, 0.5, 0.5)
    net = TransferLearning(zm).set_feature_extractor("_blocks.15").build()
    assert net.frontier() == ["_blocks.15._bn2"]
    assert net.frontier_shapes()["_blocks.15._bn2"] == (320, 7, 7)


def _classify(zm, paths: list[Path]) -> list[int]:
    plain = torchvision_transform(zm.preprocess)
    batch = torch.stack([plain(Image.open(p).convert("RGB")) for p in paths])
    with torch.inference_mode():
        return zm.model.eval()(batch).argmax(1).tolist()


@pytest.mark.shared
@needs_shared(MOBILENET_WEIGHTS, SHARED / "data" / "hymenoptera")
@pytest.mark.parametrize(
    "name,weights", [("torchvision:mobilenet_v2", str(MOBILENET_WEIGHTS)), ("default", None)]
)
def test_pretrained_weights_know_ants_from_bees(name, weights):
    zm = zoo.load_model(name, weights=weights)
    val = SHARED / "data" / "hymenoptera" / "val"
    ants = sorted((val / "ants").glob("*.jpg"))[:8]
    bees = sorted((val / "bees").glob("*.jpg"))[:8]
    predicted = _classify(zm, ants + bees)
    hits = sum(p == 310 for p in predicted[:8]) + sum(p == 309 for p in predicted[8:])
    assert hits >= 10, predicted  # ImageNet 310 = ant, 309 = bee
