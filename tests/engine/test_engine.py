"""The inference engines agree: ONNX Runtime computes what eager PyTorch computes, on real
networks and cuts that cross skip connections; what cannot be exported falls back, loudly."""

import logging

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.engine.export import build_engine, choose
from pipeline.net.builder import TransferLearning

CASES = [  # model, cut, size: single cuts and cuts inside a residual block (two frontier tensors)
    ("tiny:cnn", "pool", None),
    ("tiny:resnet", "block1.bn2", None),
    ("torchvision:mobilenet_v2", "flatten", 96),
    ("torchvision:mobilenet_v2", "features.14.conv.1", 96),
    ("torchvision:resnet18", "layer2.0.bn2", 96),
    ("default", "_blocks.15", 96),
]


@pytest.mark.parametrize("name,cut,size", CASES, ids=[f"{n}@{c}" for n, c, _ in CASES])
def test_onnxruntime_features_equal_torch_features(name, cut, size, tmp_path):
    kwargs = {"image_size": size} if size else {}
    net = TransferLearning(name, **kwargs).set_feature_extractor(cut).build()
    names, preprocess = net.frontier(), net.spec["preprocess"]
    crop = preprocess["crop_size"]
    images = np.random.default_rng(0).integers(0, 256, (3, 3, crop, crop), dtype=np.uint8)
    runs = {
        kind: build_engine(net.prefix(), names, preprocess, kind, cache=str(tmp_path))
        for kind in ("torch", "onnxruntime")
    }
    assert {k: e.kind for k, e in runs.items()} == {"torch": "torch", "onnxruntime": "onnxruntime"}
    torch_out, ort_out = (runs[k](images) for k in ("torch", "onnxruntime"))
    assert list(ort_out) == names
    for node in names:
        scale = max(1.0, float(np.abs(torch_out[node]).max()))
        np.testing.assert_allclose(ort_out[node], torch_out[node], atol=1e-4 * scale, rtol=0)


def test_the_export_is_cached_by_key_and_read_back(tmp_path):
    net = TransferLearning("tiny:cnn").set_feature_extractor("pool").build()
    first = build_engine(
        net.prefix(), ["pool"], net.spec["preprocess"], "onnxruntime", cache=str(tmp_path), key="k"
    )
    (path,) = tmp_path.glob("*.onnx")
    stamp = path.stat().st_mtime_ns
    again = build_engine(
        net.prefix(), ["pool"], net.spec["preprocess"], "onnxruntime", cache=str(tmp_path), key="k"
    )
    assert again.uri == first.uri and path.stat().st_mtime_ns == stamp
    assert path.read_bytes()[:2] != b"\x80\x04"  # protobuf, not a pickle


class _SingularValues(nn.Module):
    """A layer ONNX has no operator for."""

    def forward(self, x):
        return torch.linalg.svdvals(x.flatten(2)).flatten(1)


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.spectrum = _SingularValues()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.spectrum(self.stem(x)))


def test_a_prefix_that_cannot_be_exported_runs_on_torch_with_one_warning(tmp_path, caplog):
    net = (
        TransferLearning(_Model(), input_shape=(3, 16, 16), leaf_modules=(_SingularValues,))
        .set_feature_extractor("spectrum")
        .build()
    )
    preprocess = {"resize_size": 16, "crop_size": 16, "mean": [0.5] * 3, "std": [0.5] * 3}
    with caplog.at_level(logging.WARNING, logger="pipeline.engine"):
        engine = build_engine(
            net.prefix(), ["spectrum"], preprocess, "onnxruntime", cache=str(tmp_path)
        )
    assert engine.kind == "torch"
    (record,) = [r for r in caplog.records if r.name.startswith("pipeline.engine")]
    assert "module 'spectrum' (_SingularValues)" in record.getMessage()
    assert "using torch" in record.getMessage() and not list(tmp_path.glob("*.onnx"))
    images = np.zeros((2, 3, 16, 16), np.uint8)
    assert engine(images)["spectrum"].shape == (2, 4)


def test_auto_is_onnxruntime_on_cpus_and_torch_on_gpus_without_its_cuda_provider():
    assert choose("auto", "cpu") == "onnxruntime"
    assert choose("torch", "cpu") == "torch" and choose("onnxruntime", "cpu") == "onnxruntime"
    import onnxruntime

    cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    assert choose("auto", "cuda") == ("onnxruntime" if cuda else "torch")
