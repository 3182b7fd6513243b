"""Running frozen layers on images: uint8 crops in, normalized on the device, outputs out.

One engine serves every pass that runs layers without gradients: the featurize actors (the
frozen prefix), the predict actors (the whole network), the frozen prefix inside end-to-end
training and evaluation on images.

Example:

    >>> import torch
    >>> from pipeline.engine import TorchEngine
    >>> from pipeline.surgery import TransferLearning
    >>> net = TransferLearning("tiny:cnn").set_feature_extractor("pool").build()
    >>> engine = TorchEngine(net.prefix(), net.spec["preprocess"], device="cpu")
    >>> engine(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))["pool"].shape
    torch.Size([2, 16, 1, 1])
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.settings import Preprocess


class TorchEngine:
    """``module`` on uint8 (n, 3, h, w) batches: standardized with the preprocessing's mean and
    std on the device, channels-last, under ``inference_mode``; fp16 autocast only on a GPU
    (CPUs without half-precision units run it hundreds of times slower)."""

    def __init__(
        self,
        module: nn.Module,
        preprocess: Preprocess | dict,
        device: str | torch.device | None = None,
        threads: int | None = None,
        channels_last: bool = True,
    ):
        if threads:
            torch.set_num_threads(threads)  # Ray sets OMP_NUM_THREADS=1 for fractional CPUs
        preprocess = Preprocess.model_validate(preprocess)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.channels_last = channels_last and self.device.type in ("cpu", "cuda")
        module = module.eval().to(self.device)
        self.module = module.to(memory_format=torch.channels_last) if self.channels_last else module
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(preprocess.mean, device=self.device).view(shape) * 255
        self.std = torch.tensor(preprocess.std, device=self.device).view(shape) * 255

    def __call__(self, images: torch.Tensor):
        x = images.to(self.device, non_blocking=True).float().sub_(self.mean).div_(self.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with (
            torch.inference_mode(),
            torch.autocast("cuda", torch.float16, enabled=self.device.type == "cuda"),
        ):
            return self.module(x)
