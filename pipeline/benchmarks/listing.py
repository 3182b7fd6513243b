"""Listing at scale: seconds and the driver's memory to list N and 10N files, against the scan a
plain PyTorch program makes (``torchvision.datasets.ImageFolder``'s ``make_dataset``).

Each listing runs in a fresh process (with a local Ray of its own for the pipeline, whose tasks
list a class folder each), so its peak memory is its own and not this process's imports.

Example:

    >>> from pipeline.benchmarks.listing import empty_files
    >>> empty_files(tmp / "files", 30, classes=3)
    30
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

# The child processes: list, then report seconds, items, the process's memory before and after
# and its peak (VmHWM: getrusage's peak would carry over the forking parent's).
MEASURE = """
import json, sys, time, psutil
rss = lambda: psutil.Process().memory_info().rss / 2**20
def peak():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
before, start = rss(), time.perf_counter()
{list}
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "items": count, "before_mib": before,
                  "after_mib": rss(), "peak_mib": peak()}}))
"""
PIPELINE = """
import ray
from pipeline.settings import DataConfig
from pipeline.data.listing import plan_data
if sys.argv[2] == "tasks":
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
"""
PIPELINE_LIST = (
    "count = sum(plan_data(DataConfig(sources=[sys.argv[1]], listing=sys.argv[2])).counts.values())"
)
PLAIN = "from torchvision.datasets.folder import find_classes, make_dataset"
PLAIN_LIST = (
    "count = len(make_dataset(sys.argv[1], find_classes(sys.argv[1])[1], "
    "is_valid_file=lambda path: True))"
)
WAYS = {
    "plain ImageFolder scan": (PLAIN, PLAIN_LIST, "-"),
    "pipeline, this process": (PIPELINE, PIPELINE_LIST, "local"),
    "pipeline, Ray tasks": (PIPELINE, PIPELINE_LIST, "tasks"),
}


def empty_files(root: Path, n: int, classes: int = 20) -> int:
    """``n`` empty files in ``classes`` class folders under ``root`` (kept between runs: a
    ``.complete`` marker says they are all there)."""
    marker = root / ".complete"
    if marker.exists() and marker.read_text() == str(n):
        return n
    for c in range(classes):
        (root / f"class{c:03d}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"class{i % classes:03d}" / f"{i:08d}.jpg").touch()
    marker.write_text(str(n))
    return n


def _child(way: str, root: Path) -> dict:
    setup, listing, mode = WAYS[way]
    code = "import sys\n" + setup + MEASURE.format(list=listing)
    done = subprocess.run(
        [sys.executable, "-c", code, str(root), mode], capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise RuntimeError(f"listing {root} ({way}) failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def listing_benchmark(out: Path, images: int, factor: int = 20) -> dict:
    """List ``images`` and ``images * factor`` empty files with the plain scan and the
    pipeline's listing (in this process and on Ray tasks); log seconds, the listing process's
    memory that the listing kept and its peak, and how the pipeline's grow with the files."""
    figures: dict[int, dict] = {}
    for n in (images, images * factor):
        root = out / f"listing-{n}"
        empty_files(root, n)
        figures[n] = {way: _child(way, root) for way in WAYS}
        for way, got in figures[n].items():
            assert got["items"] == n, (way, got)
            log.info(
                "listing %d files, %s: %.2f s; process %.0f -> %.0f MiB (peak %.0f)",
                n,
                way,
                got["seconds"],
                got["before_mib"],
                got["after_mib"],
                got["peak_mib"],
            )
    small, large = figures[images], figures[images * factor]
    for way in WAYS:
        log.info(
            "listing: %s: %dx the files, %.1fx the seconds; memory the listing kept %.0f vs "
            "%.0f MiB, peak %.2fx",
            way,
            factor,
            large[way]["seconds"] / small[way]["seconds"],
            large[way]["after_mib"] - large[way]["before_mib"],
            small[way]["after_mib"] - small[way]["before_mib"],
            large[way]["peak_mib"] / small[way]["peak_mib"],
        )
    return figures
