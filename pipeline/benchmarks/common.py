"""What every benchmark shares: peak memory of a process tree, the GEMM peak, the images.

Example:

    >>> from pipeline.benchmarks.common import gemm_peak_gflops
    >>> gemm_peak_gflops(n=128, seconds=0.1) > 0
    True
"""

from __future__ import annotations

import csv
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from torch.utils.flop_counter import FlopCounterMode
from torchvision.datasets import ImageFolder
from torchvision.transforms import InterpolationMode, v2

from pipeline.data.shapes import SHAPES, generate_shapes
from pipeline.settings import Preprocess


class PeakRSS:
    """Peak memory of a process and all its descendants (Ray's processes included when it
    started Ray), sampled once a second while in the ``with`` block (reading PSS is not free:
    sampling faster slowed the measured loops down). Summed as PSS (each shared page split
    among the processes mapping it), since plain RSS would count torch's libraries and Ray's
    shared-memory object store once per process. ``pid``: the root (default: this process);
    ``tree=False``: that process alone."""

    def __init__(self, pid: int | None = None, tree: bool = True):
        self.pid, self.tree = pid, tree

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while True:  # at the start, once a second, and once more at the end
            self._measure()
            if self._stop.wait(1.0):
                return

    def _measure(self) -> None:
        try:
            root = psutil.Process(self.pid)
            processes = [root, *(root.children(recursive=True) if self.tree else [])]
        except psutil.Error:
            return
        total = 0
        for p in processes:
            try:
                total += p.memory_full_info().pss
            except psutil.Error:
                pass
        self.peak = max(self.peak, total)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._measure()

    @property
    def mib(self) -> float:
        return self.peak / 2**20


def gemm_peak_gflops(n: int = 1024, seconds: float = 2.0) -> float:
    """fp32 matrix-multiply rate on this machine, with all of torch's threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start, reps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def prefix_gflop_per_image(net, shape: tuple[int, ...]) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        net.prefix()(torch.zeros(1, *shape))
    return counter.get_total_flops() / 1e9


@dataclass
class Sample:
    """The images a benchmark runs on: a folder-per-class root, every ``len/n``-th file of it
    (``(path, class index)``, as ``ImageFolder`` lists them) and a manifest of those files."""

    root: Path
    samples: list[tuple[str, int]]
    classes: list[str]
    manifest: Path


def sample_images(data: Path | None, images: int, workdir: Path) -> Sample:
    """``images`` files spread over ``data`` (generated shapes when it is absent), listed in a
    manifest of absolute paths and labels (splits by hash, as for any source)."""
    root = data.resolve() if data is not None and data.exists() else workdir / "generated"
    if root == workdir / "generated":
        generate_shapes(root, per_class=max(1, images // len(SHAPES)), size=128)
    folder = ImageFolder(str(root))
    samples = folder.samples[:: max(1, len(folder.samples) // images)][:images]
    workdir.mkdir(parents=True, exist_ok=True)
    manifest = workdir / "images.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows([p, folder.classes[c]] for p, c in samples)
    return Sample(root, samples, folder.classes, manifest)


def torchvision_transform(preprocess: Preprocess, normalize: bool = True) -> v2.Compose:
    """The preprocessing a plain PyTorch loop writes: torchvision's resize, center crop,
    to-float and normalize, on PIL images (``normalize=False``: uint8 crops, for an engine that
    normalizes itself)."""
    steps = [
        v2.ToImage(),
        v2.Resize(
            preprocess.resize_size,
            interpolation=InterpolationMode(preprocess.interpolation),
            antialias=True,
        ),
        v2.CenterCrop(preprocess.crop_size),
    ]
    if normalize:
        steps += [
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(preprocess.mean, preprocess.std),
        ]
    return v2.Compose(steps)
