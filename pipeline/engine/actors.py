"""The model actors of a Ray Data pass: each opens its engine once, then turns batches of
uint8 crops into outputs: frontier tensors (featurize) or class probabilities (predict).

An actor on ONNX Runtime never loads torch; one on torch loads the saved network (safetensors,
no pickle).

Example:

    >>> import numpy as np
    >>> from pipeline.engine.actors import PrefixModel
    >>> from pipeline.settings import FeaturizeConfig, Preprocess
    >>> from pipeline.engine.dataflow import prepare_engine
    >>> from pipeline.net.builder import TransferLearning
    >>> net = TransferLearning("tiny:cnn").set_feature_extractor("pool").build()
    >>> spec = prepare_engine(net, ["pool"], Preprocess(**net.spec["preprocess"]),
    ...                       FeaturizeConfig(out=str(tmp)), "the prefix")
    >>> actor = PrefixModel(spec, {"pool": (16, 1, 1)})
    >>> batch = {"error": np.array([""], object), "image": np.zeros((1, 3, 32, 32), np.uint8)}
    >>> spec.kind, actor(batch)["pool"].shape
    ('onnxruntime', (1, 16, 1, 1))
"""

from __future__ import annotations

import time

import numpy as np

from pipeline.data.schema import BYTES, CLASS, ERROR, IMAGE, MODEL_DONE, PREDICTED, PROBABILITIES
from pipeline.engine.runtime import EngineSpec, OnnxEngine


def open_actor_engine(spec: EngineSpec):
    """The engine an actor runs: the exported file on ONNX Runtime, or the saved network's part
    (the prefix up to ``spec.names``, or all of it) in torch."""
    if spec.kind == "onnxruntime":
        return OnnxEngine(spec.onnx, spec.names or ["output"], spec.device, spec.threads)
    # heavy (torch, ~2 s and ~300 MB per process): only actors running torch import it
    from pipeline.engine.export import torch_engine
    from pipeline.net.saving import load

    net = load(spec.network)
    return torch_engine(spec, net.prefix(spec.names) if spec.names else net)


class PrefixModel:
    """The frozen prefix in an actor: its engine opened once (the exported ONNX file, or the
    saved network in torch; safetensors and protobuf, no pickle), then uint8 images -> frontier
    tensors per batch."""

    def __init__(
        self, engine: EngineSpec, shapes: dict[str, tuple[int, ...]], dtype: str = "float32"
    ):
        self.shapes, self.dtype = {k: tuple(v) for k, v in shapes.items()}, np.dtype(dtype)
        self.spec, self.engine = engine, open_actor_engine(engine)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = gpu_decoded(batch, self.spec)
        ok = batch[ERROR] == ""
        out = {name: np.zeros((len(ok), *shape), self.dtype) for name, shape in self.shapes.items()}
        if ok.any():
            for name, value in self.engine(_rows(images, ok)).items():
                out[name][ok] = value
        batch.update(out)
        return stamped(batch)


class Predictor:
    """The whole network in an actor: its engine opened once (the exported ONNX file, or the
    saved network in torch), then uint8 images -> class probabilities, the predicted index and
    its class name."""

    def __init__(self, engine: EngineSpec, classes: list[str]):
        self.classes = np.array(classes, dtype=object)
        self.spec, self.engine = engine, open_actor_engine(engine)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = gpu_decoded(batch, self.spec)
        ok = batch[ERROR] == ""
        probabilities = np.zeros((len(ok), len(self.classes)), np.float32)
        if ok.any():
            logits = next(iter(self.engine(_rows(images, ok)).values()))
            shifted = np.exp(logits - logits.max(1, keepdims=True))
            probabilities[ok] = shifted / shifted.sum(1, keepdims=True)
        predicted = np.where(ok, probabilities.argmax(1), -1).astype(np.int32)
        batch[PROBABILITIES], batch[PREDICTED] = probabilities, predicted
        batch[CLASS] = np.where(ok, self.classes[np.maximum(predicted, 0)], "")
        return stamped(batch)


def stamped(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``batch`` with the time its model call ended on every row: the driver's steady rate is
    what the model stage sustained between its batches, not what start-up decoded ahead."""
    batch[MODEL_DONE] = np.full(len(batch[ERROR]), time.time())
    return batch


def _rows(images, ok: np.ndarray):
    """The rows of ``images`` (an array, or a CUDA tensor after GPU decoding) where ``ok``."""
    if isinstance(images, np.ndarray):
        return images[ok]
    import torch  # a tensor: torch is loaded already

    return images[torch.as_tensor(ok, device=images.device)]


def gpu_decoded(batch: dict[str, np.ndarray], spec: EngineSpec):
    """The batch's images, taken out of it: the decoded uint8 crops, with the JPEGs that came
    as bytes (``gpu_decode``) decoded, resized and cropped on this actor's GPU (left there, as
    a CUDA tensor, for a torch engine)."""
    images, encoded = batch.pop(IMAGE), batch.pop(BYTES, None)
    if encoded is None or not any(len(e) for e in encoded):
        return images
    # heavy (torch): only an actor decoding on its GPU, which runs torch anyway, gets here
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import functional as F

    rows = [i for i, e in enumerate(encoded) if len(e)]
    data = [torch.frombuffer(bytearray(encoded[i]), dtype=torch.uint8) for i in rows]
    decoded = decode_jpeg(
        data, mode=ImageReadMode.RGB, device=spec.device, apply_exif_orientation=True
    )
    size, crop = spec.preprocess["resize_size"], spec.preprocess["crop_size"]
    crops = torch.from_numpy(images).to(spec.device)
    for row, image in zip(rows, decoded):
        crops[row] = F.center_crop(F.resize(image, [size], antialias=True), [crop])
    return crops if spec.kind == "torch" else crops.cpu().numpy()
