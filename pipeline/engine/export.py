"""Running frozen layers on images: uint8 crops in, float outputs out, on the fastest runtime.

Every pass that runs layers without gradients goes through an engine: the featurize actors (the
frozen prefix), the predict actors (the whole network), the frozen prefix inside end-to-end
training and evaluation on images. Two runtimes:

- ``onnxruntime``: the layers exported to ONNX once (cached next to the outputs, keyed by the
  network's hash), then run by ONNX Runtime with exactly the threads the stage was given. On
  CPUs its kernels are ~4x eager PyTorch's for mobilenet_v2, with the same numbers to ~1e-5.
  Loading an ONNX file parses protobuf; nothing is unpickled.
- ``torch``: eager PyTorch (channels-last, ``inference_mode``, fp16 autocast on a GPU): the
  reference, the fallback, and the default on GPUs.

``auto`` picks ONNX Runtime on CPU (and on GPU when its CUDA provider is installed), torch
otherwise. An export that fails, or whose outputs differ from torch's, falls back to torch with
one warning line naming the module and the reason.

Example:

    >>> import numpy as np
    >>> from pipeline.engine.export import build_engine
    >>> from pipeline.net.builder import TransferLearning
    >>> net = TransferLearning("tiny:cnn").set_feature_extractor("pool").build()
    >>> engine = build_engine(net.prefix(), ["pool"], net.spec["preprocess"], "onnxruntime",
    ...                       cache=str(tmp))
    >>> engine.kind, engine(np.zeros((2, 3, 32, 32), np.uint8))["pool"].shape
    ('onnxruntime', (2, 16, 1, 1))
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import uuid
import warnings

import fsspec
import numpy as np
import torch
from torch import nn

from pipeline.engine.runtime import EngineSpec, OnnxEngine, choose, joined, micro_batches
from pipeline.settings import Preprocess

log = logging.getLogger(__name__)

OPSET = 17


class Normalized(nn.Module):
    """uint8 images -> standardized floats -> ``module`` -> its outputs, a tuple in ``names``
    order (a module returning one tensor gives a 1-tuple). What both runtimes run."""

    def __init__(self, module: nn.Module, names: list[str], preprocess: Preprocess):
        super().__init__()
        self.module, self.names = module, list(names)
        self.register_buffer("mean", torch.tensor(preprocess.mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(preprocess.std).view(1, 3, 1, 1) * 255)
        self.channels_last = False

    def forward(self, images: torch.Tensor):
        x = (images.float() - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.module(x)
        return tuple(out[n] for n in self.names) if isinstance(out, dict) else (out,)


class TorchEngine:
    """The layers in eager PyTorch, under ``inference_mode``; fp16 autocast only on a GPU (CPUs
    without half-precision units run it hundreds of times slower)."""

    kind = "torch"

    def __init__(
        self,
        model: Normalized,
        device: str | None = None,
        threads: int | None = None,
        channels_last: bool = True,
    ):
        if threads:
            torch.set_num_threads(threads)  # Ray sets OMP_NUM_THREADS=1 for fractional CPUs
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = model.eval().to(self.device)
        model.channels_last = channels_last and self.device.type in ("cpu", "cuda")
        self.model = model.to(memory_format=torch.channels_last) if model.channels_last else model

    def __call__(self, images: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        return joined([self._run(part) for part in micro_batches(images, self.device.type)])

    def _run(self, images: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        x = torch.as_tensor(images).to(self.device, non_blocking=True)
        with (
            torch.inference_mode(),
            torch.autocast("cuda", torch.float16, enabled=self.device.type == "cuda"),
        ):
            outputs = self.model(x)
        return {n: o.float().cpu().numpy() for n, o in zip(self.model.names, outputs)}


AnyEngine = TorchEngine | OnnxEngine


def build_engine(
    module: nn.Module,
    names: list[str],
    preprocess: Preprocess | dict,
    engine: str = "auto",
    device: str = "cpu",
    threads: int | None = None,
    channels_last: bool = True,
    cache: str | None = None,
    key: str = "",
    what: str = "the network",
) -> AnyEngine:
    """An engine running ``module`` (a prefix returning ``{name: tensor}``, or a whole network)
    in this process; the ONNX file goes to ``cache`` (a temporary directory when unset)."""
    preprocess = Preprocess.model_validate(preprocess)
    model = Normalized(module, names, preprocess)
    if choose(engine, device) == "onnxruntime":
        path = export(model, preprocess.crop_size, cache or tempfile.mkdtemp(), key, what)
        if path is not None:
            return OnnxEngine(path, model.names, device, threads or torch.get_num_threads())
    return TorchEngine(model, device, threads, channels_last)


def torch_engine(spec: EngineSpec, module: nn.Module) -> TorchEngine:
    """``module`` (the part of the network ``spec`` names, loaded by the caller) in torch, as
    ``spec`` says it runs."""
    model = Normalized(module, spec.names or ["output"], Preprocess(**spec.preprocess))
    return TorchEngine(model, spec.device, spec.threads, spec.channels_last)


def export(model: Normalized, size: int, directory: str, key: str, what: str) -> str | None:
    """Export ``model`` for uint8 inputs of (n, 3, size, size) with a dynamic batch, check it
    against torch, and return its URI under ``directory`` (reused when it is already there for
    ``key``); ``None``, with one warning naming the module and the reason, when it cannot."""
    digest = hashlib.sha256(f"{key}|{model.names}|{size}|{OPSET}|{torch.__version__}".encode())
    uri = f"{directory.rstrip('/')}/{digest.hexdigest()[:16]}.onnx"
    fs, path = fsspec.core.url_to_fs(uri)
    if fs.exists(path):
        return uri
    # its own generator: building an engine leaves the caller's random stream alone
    example = torch.randint(
        0, 256, (2, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    with tempfile.TemporaryDirectory() as local:
        tmp = os.path.join(local, "model.onnx")
        try:
            _export(model.eval(), example, tmp)
            _check(model, tmp, example)
        except Exception as e:  # an export failure is a fallback, never a crash
            reason = str(e).splitlines()[0][:200] if str(e) else ""
            culprit = _culprit(model) or what
            log.warning(
                "engine: cannot run %s on onnxruntime (%s: %s); using torch",
                culprit,
                type(e).__name__,
                reason,
            )
            return None
        fs.makedirs(fs._parent(path), exist_ok=True)
        staged = f"{path}.{uuid.uuid4().hex}.tmp"  # readers never see half a file
        fs.put_file(tmp, staged)
        fs.mv(staged, path)
    return uri


def _export(model: nn.Module, example: torch.Tensor, path: str) -> None:
    outputs = [f"out{i}" for i in range(len(model.names))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            model,
            (example,),
            path,
            input_names=["images"],
            output_names=outputs,
            dynamic_axes={n: {0: "batch"} for n in ["images", *outputs]},
            opset_version=OPSET,
            dynamo=False,
        )


def _check(model: Normalized, path: str, example: torch.Tensor) -> None:
    """The exported file computes what torch computes, to float32 rounding."""
    with torch.inference_mode():
        expected = [o.float().numpy() for o in model(example)]
    got = OnnxEngine(path, model.names, threads=1)(example.numpy())
    for name, want in zip(model.names, expected):
        scale = max(1.0, float(np.abs(want).max()))
        diff = float(np.abs(got[name] - want).max())
        if not diff <= 1e-4 * scale:
            raise ValueError(f"output {name!r} differs from torch by {diff:.2e}")


def _culprit(model: Normalized) -> str | None:
    """The first leaf module that cannot be exported on its own (a guess at what failed)."""
    root = model.module
    graph = getattr(root, "graph", None)
    if graph is None:
        return None
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        module = root.get_submodule(node.target)
        shape = node.meta.get("shape")
        if shape is None:
            continue
        try:
            with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # a stand-in input: leaves after the first rarely take the image's shape
                torch.onnx.export(
                    module,
                    (torch.zeros(1, *_input_shape(node)),),
                    os.path.join(d, "m.onnx"),
                    opset_version=OPSET,
                    dynamo=False,
                )
        except Exception:
            return f"module {node.target!r} ({type(module).__name__})"
    return None


def _input_shape(node) -> tuple[int, ...]:
    parent = node.all_input_nodes[0] if node.all_input_nodes else None
    shape = parent.meta.get("shape") if parent is not None else None
    if shape is None:
        raise ValueError("unknown input shape")
    return tuple(shape)
