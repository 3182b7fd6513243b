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
from pathlib import Path

import psutil
import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.shapes import SHAPES, generate_shapes


class PeakRSS:
    """Peak resident memory of this process and all its descendants (Ray's workers included
    when this process started Ray), sampled once a second while in the ``with`` block
    (reading PSS is not free: sampling faster slowed the measured loops down). Summed as
    PSS (each shared page split among the processes mapping it), since plain RSS would count
    torch's libraries and Ray's shared-memory object store once per process."""

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        me = psutil.Process()
        while not self._stop.wait(1.0):
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_full_info().pss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


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


def pick_images(data: Path | None, images: int, workdir: Path) -> Path:
    """A folder-per-class root: ``data`` or a generated set."""
    if data is not None and data.exists():
        return data
    root = workdir / "generated"
    generate_shapes(root, per_class=max(1, images // len(SHAPES)), size=128)
    return root


def manifest_of(paths: list[str], labels: list[str], workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "images.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        writer.writerows([p, lab, "train"] for p, lab in zip(paths, labels))
    return path
