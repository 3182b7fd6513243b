"""Shards as the unit of work: the same featurize job on N and 100N tiny generated images in
WebDataset shards of 1,000 (a tiny network at 16 px, so planning and decoding dominate), each
a fresh ``python -m jobs.featurize`` with a local Ray of its own, as a user runs it.

Measured from outside the job: its driver's peak RSS (the kernel's high-water mark, VmHWM, read
until it exits: the driver alone, not Ray's processes) and the time from the job's start (Ray
start-up included) to the first part file in the output; from its log: the bytes its decoders
had read from storage when that part was written.

Example:

    >>> from pipeline.benchmarks.shards import shards_line
    >>> shards_line({"peak_mib": 500, "first_part_s": 9.0}, {"peak_mib": 520, "first_part_s": 9.5})
    'shards: driver peak RSS grows 1.04x, first part after 9.5 s vs 9.0 s, for 100x the images'
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pipeline.data.shapes import SHAPES, generate_shards
from pipeline.engine.dataflow import decode_tasks
from pipeline.settings import FeaturizeConfig
from pipeline.train.loop import peak_rss_mib

log = logging.getLogger(__name__)
PER_SHARD = 1000
SIZE = 16
# the driver's debug line (pipeline.features.run) the bytes are read from
READ_LINE = re.compile(r"first part after ([\d.]+|-) s of the pass, (\d+) bytes read before it")


def one_job(out: Path, n: int) -> dict:
    """Featurize ``n`` images in shards with tiny:cnn (a fresh job); its figures."""
    data, features = out / f"shards-{n}" / "data", out / f"shards-{n}" / "features"
    shard_count = generate_shards(data, n, PER_SHARD, SIZE)
    os.sync()  # the shards just written are flushed before the clock starts, not during the job
    for old in features.glob("*/"):  # a cache hit would measure nothing
        if old.name != "logs":
            shutil.rmtree(old)
    command = [
        sys.executable,
        "-m",
        "jobs.featurize",
        "model.name=tiny:cnn",
        "cuts=[pool]",
        f"data.sources=[{{uri: {data}, label_names: {sorted(SHAPES)}}}]",
        "data.splits={train: 1.0}",
        f"featurize.out={features}",
        f"model.image_size={SIZE}",
        "featurize.dtype=float32",
        "ray_address=local",
    ]
    start, peak, first_part = time.perf_counter(), 0.0, None
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while job.poll() is None:
        peak = max(peak, peak_rss_mib(job.pid))
        if first_part is None and next(features.glob("*/part-*.parquet"), None) is not None:
            first_part = time.perf_counter() - start
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    output = job.stdout.read()
    if job.returncode:
        raise RuntimeError(f"the featurize job on {n} images failed:\n{output[-3000:]}")
    log_file = re.search(r"full log in (\S+)", output).group(1)
    found = READ_LINE.search(Path(log_file).read_text())
    shard_bytes = (data / "shard-000000.tar").stat().st_size
    decoders = decode_tasks(FeaturizeConfig()) or 0  # the job's: featurize's defaults
    figures = {
        "images": n,
        "shards": shard_count,
        "seconds": seconds,
        "images_per_s": n / seconds,
        "peak_mib": peak,
        "first_part_s": first_part if first_part is not None else seconds,
        "bytes_before_first_part": int(found.group(2)) if found else -1,
        "shard_bytes": shard_bytes,
        "decoders": decoders,
    }
    log.info(
        "shards %d images (%d shards): %.0f s from the job's start (%.0f images/s); driver peak "
        "RSS %.0f MiB; first part after %.1f s, %.1f MiB read before it: %.2f shards of %.1f "
        "MiB, %d decode task(s) at a time",
        n,
        shard_count,
        seconds,
        figures["images_per_s"],
        peak,
        figures["first_part_s"],
        figures["bytes_before_first_part"] / 2**20,
        figures["bytes_before_first_part"] / shard_bytes,
        shard_bytes / 2**20,
        decoders,
    )
    return figures


def shards_line(small: dict, large: dict, factor: int = 100) -> str:
    """The line scripts read (A: the larger run's first part, B: the smaller's)."""
    return (
        f"shards: driver peak RSS grows {large['peak_mib'] / small['peak_mib']:.2f}x, first "
        f"part after {large['first_part_s']:.1f} s vs {small['first_part_s']:.1f} s, for "
        f"{factor}x the images"
    )


def shards_benchmark(out: Path, images: int, factor: int = 100) -> dict:
    """Run :func:`one_job` at ``images`` and ``images * factor``."""
    small = one_job(out, images)
    large = one_job(out, images * factor)
    log.info(shards_line(small, large, factor))
    return {"small": small, "large": large}
