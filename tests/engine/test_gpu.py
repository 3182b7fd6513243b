"""The GPU path: fp16 on CUDA, JPEGs decoded on the GPU, a featurize pass with GPU actors. Runs
only where CUDA is; CI and CPU-only machines skip every test here, with the reason."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import start_ray
from pipeline.data.listing import plan_data
from pipeline.data.rows import decode_units
from pipeline.data.schema import IMAGE
from pipeline.data.shapes import generate_shapes
from pipeline.engine.actors import PrefixModel, gpu_decoded
from pipeline.engine.dataflow import prepare_engine
from pipeline.engine.export import build_engine
from pipeline.features.run import featurize
from pipeline.net.builder import TransferLearning
from pipeline.settings import AugmentConfig, DataConfig, FeaturizeConfig, Preprocess

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
)
SIZE = Preprocess(resize_size=72, crop_size=64, mean=[0.5] * 3, std=[0.5] * 3)


def _net():
    # the packaged pretrained EfficientNet-Lite0: real activations (a randomly initialised
    # deep net's are near zero, where float16 says nothing)
    return TransferLearning("default", image_size=64).set_feature_extractor("_blocks.15").build()


def _jpegs(root, n=6):
    generate_shapes(root / "png", per_class=1, size=96)
    paths = []
    (root / "jpg").mkdir()
    for i, png in enumerate(sorted((root / "png").rglob("*.png"))[:n]):
        path = root / "jpg" / f"{i}.jpg"
        Image.open(png).convert("RGB").save(path, quality=95)
        paths.append(str(path))
    return paths


def test_fp16_on_cuda_matches_float32_on_cpu():
    net = _net()
    images = np.random.default_rng(0).integers(0, 256, (8, 3, 64, 64), np.uint8)
    cpu = build_engine(net.prefix(), net.frontier(), SIZE, "torch", device="cpu")(images)
    gpu = build_engine(net.prefix(), net.frontier(), SIZE, "torch", device="cuda")(images)
    for name, want in cpu.items():
        scale = float(np.abs(want).max())
        assert float(np.abs(gpu[name] - want).max()) <= 2e-2 * scale  # fp16 rounding


def test_jpegs_decoded_on_the_gpu_match_the_cpu_decode(tmp_path):
    _jpegs(tmp_path)
    plan = plan_data(DataConfig(sources=[str(tmp_path / "jpg")], splits={"train": 1.0}))
    kwargs = dict(plan=plan, preprocess=SIZE, views=0, augment=AugmentConfig(), block_rows=64)
    units = {"unit": [u.to_json() for u in plan.units]}
    (on_cpu,) = decode_units(units, **kwargs)
    (as_bytes,) = decode_units(units, **kwargs, gpu_jpeg=True)
    assert not as_bytes[IMAGE].any() and all(len(b) for b in as_bytes["bytes"])
    net = _net()
    cfg = FeaturizeConfig(out=str(tmp_path / "out"), actor_gpus=1, gpu_decode=True)
    spec = prepare_engine(net, net.frontier(), SIZE, cfg, "the prefix")
    crops = gpu_decoded(dict(as_bytes), spec)
    crops = crops.cpu().numpy() if isinstance(crops, torch.Tensor) else crops
    # nvJPEG and libjpeg, and two resize kernels, differ by a level or two per pixel
    assert np.abs(crops.astype(int) - on_cpu[IMAGE].astype(int)).mean() <= 2.0
    features = PrefixModel(spec, net.frontier_shapes(), dtype="float32")(dict(as_bytes))
    assert all(np.isfinite(features[n]).all() and features[n].any() for n in net.frontier())


def test_featurize_pass_on_a_gpu_actor(tmp_path):
    start_ray()
    generate_shapes(tmp_path / "data", per_class=4, size=64)
    items = plan_data(DataConfig(sources=[str(tmp_path / "data")]))
    net = _net()
    cfg = FeaturizeConfig(out=str(tmp_path / "out"), actor_gpus=1, dtype="float32")
    done = featurize(net, items, cfg)
    assert done.images == sum(items.counts.values()) and done.engine in ("torch", "onnxruntime")
    features, _ = done.feature_sets[0].tensors("train")
    assert all(torch.isfinite(t).all() for t in features.values())
