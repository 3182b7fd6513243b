"""ONNX Runtime, as the model actors use it: an exported file in, uint8 images in, outputs out.

This half of the engine needs no torch (an ONNX Runtime actor never loads it); exporting, and
running in torch, live in :mod:`pipeline.engine.export`.

Example:

    >>> import numpy as np
    >>> from pipeline.engine.export import build_engine
    >>> from pipeline.engine.runtime import OnnxEngine
    >>> from pipeline.net.builder import TransferLearning
    >>> net = TransferLearning("tiny:cnn").set_feature_extractor("pool").build()
    >>> uri = build_engine(net.prefix(), ["pool"], net.spec["preprocess"], "onnxruntime",
    ...                    cache=str(tmp)).uri
    >>> OnnxEngine(uri, ["pool"], threads=1)(np.zeros((1, 3, 32, 32), np.uint8))["pool"].shape
    (1, 16, 1, 1)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import fsspec
import numpy as np
import onnxruntime as ort

Kind = Literal["torch", "onnxruntime"]

# Images per model call on a CPU, whatever the batch the stage hands over. Measured on 2 cores
# (mobilenet_v2 to flatten, 224 px): ONNX Runtime runs 247 images/s at 8 and 213 at 64, eager
# torch 61 and 59; the activations of 64 take 870 MiB, of 8 185 MiB. Small calls stay in cache.
CPU_MICRO_BATCH = 8


def micro_batches(images, device: str):
    """``images`` in the slices one model call takes: all at once on a GPU, which wants large
    calls, ``CPU_MICRO_BATCH`` at a time on a CPU."""
    step = len(images) if device != "cpu" else CPU_MICRO_BATCH
    step = max(1, step)
    return [images[i : i + step] for i in range(0, max(len(images), 1), step)]


def joined(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The outputs of the micro-batches, concatenated per output name."""
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


class OnnxEngine:
    """An exported ONNX file on ONNX Runtime, with ``threads`` intra-op threads (left alone, it
    starts one per core whatever Ray gave the actor)."""

    kind = "onnxruntime"

    def __init__(self, uri: str, names: list[str], device: str = "cpu", threads: int = 1):
        with fsspec.open(uri, "rb") as f:  # a local path or any fsspec URI
            model = f.read()
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = max(1, threads), 1
        options.log_severity_level = 3  # warnings and up; ORT's info lines are noise here
        # no busy-waiting between batches: the decode and write tasks need those cycles
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = (["CUDAExecutionProvider"] if device == "cuda" else []) + [
            "CPUExecutionProvider"
        ]
        self.session = ort.InferenceSession(model, options, providers=providers)
        self.names, self.uri, self.device = list(names), uri, device

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        x = np.asarray(images, dtype=np.uint8)
        return joined([self._run(part) for part in micro_batches(x, self.device)])

    def _run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.session.run(None, {"images": np.ascontiguousarray(images)})
        return dict(zip(self.names, outputs))


@dataclass(frozen=True)
class EngineSpec:
    """What a model actor needs to open its engine: the runtime, the saved network (torch) or the
    exported file (onnxruntime), which outputs (prefix node names, or ``[]`` for the whole
    network's output), the preprocessing and where it runs."""

    kind: Kind
    network: str
    onnx: str | None
    names: list[str]
    preprocess: dict
    device: str = "cpu"
    threads: int = 1
    channels_last: bool = True


def choose(engine: str, device: str) -> Kind:
    """The runtime ``engine`` (``auto``, ``torch`` or ``onnxruntime``) means on ``device``."""
    if engine != "auto":
        return engine
    if device == "cuda":
        return (
            "onnxruntime" if "CUDAExecutionProvider" in ort.get_available_providers() else "torch"
        )
    return "onnxruntime"
