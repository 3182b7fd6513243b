"""Data at scale: featurize and fit N and 10N generated images on a 3-node cluster
(``ray.cluster_utils.Cluster``), the training workers streaming their shards, and how time and
memory grow with the images.

The claim is the shape of the growth, not a rate: on one 2-CPU machine the three nodes share the
same cores. The driver's memory (this process alone, sampled) and the busiest training worker's
(its own peak, reported with every epoch) must stay flat while the images grow tenfold.

Example:

    >>> from pipeline.benchmarks.scale import growth_line
    >>> growth_line({"driver_mib": 500, "worker_mib": 900}, {"driver_mib": 560, "worker_mib": 990})
    'scale: peak RSS grows 1.12x for 10x the images'
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from pipeline.benchmarks.common import PeakRSS
from pipeline.data.listing import plan_data
from pipeline.data.shapes import generate_shapes
from pipeline.features.run import featurize
from pipeline.net.builder import TransferLearning
from pipeline.settings import DataConfig, FeaturizeConfig, TrainConfig
from pipeline.train.fit import fit_featurized
from pipeline.train.streaming import streams

log = logging.getLogger(__name__)
NODES = 3


def images_at(root: Path, n: int, size: int = 32) -> Path:
    """``n`` generated images (a fifth per class) under ``root``, kept between runs."""
    marker = root / ".complete"
    if not (marker.exists() and marker.read_text() == str(n)):
        generate_shapes(root, per_class=n // 5, size=size)
        marker.write_text(str(n))
    return root


def one_size(out: Path, n: int, budget: int, epochs: int) -> dict:
    """Featurize ``n`` images with tiny:cnn frozen through its first block (16 KiB of float16
    features an image at 32 px), then fit its head on two workers that stream their shards."""
    data = images_at(out / f"scale-{n}" / "data", n)
    net = (
        TransferLearning("tiny:cnn", seed=3)
        .set_feature_extractor("features.0")
        .n_out_replace("fc2", 5)
        .build()
    )
    with PeakRSS(tree=False) as driver:
        start = time.perf_counter()
        items = plan_data(DataConfig(sources=[str(data)]))
        cfg = FeaturizeConfig(out=str(out / f"scale-{n}" / "features"), actors=NODES)
        fs = featurize(net, items, cfg).feature_sets[0]
        featurized = time.perf_counter()
        train = TrainConfig(
            epochs=epochs,
            batch_size=256,
            workers=2,
            memory_budget=budget,
            storage=str(out / f"scale-{n}" / "train"),
        )
        fit = fit_featurized(net, fs, train)
        end = time.perf_counter()
    figures = {
        "images": n,
        "featurize_s": featurized - start,
        "images_per_s": n / (featurized - start),
        "fit_s": end - featurized,
        "driver_mib": driver.mib,
        "worker_mib": max(h["worker_peak_mib"] for h in fit.history),
        "accuracy": fit.evaluation.accuracy,
        "streamed": streams(fs, train, train.workers),
    }
    log.info(
        "scale %d images: featurize %.0f s (%.0f images/s), fit %.0f s (%d epochs, streamed); "
        "peak RSS driver %.0f MiB, busiest worker %.0f MiB; val accuracy %.3f",
        n,
        figures["featurize_s"],
        figures["images_per_s"],
        figures["fit_s"],
        epochs,
        figures["driver_mib"],
        figures["worker_mib"],
        figures["accuracy"],
    )
    return figures


def growth_line(small: dict, large: dict) -> str:
    """The line scripts read: the larger of the driver's and the worker's peak growth."""
    growth = max(large[k] / small[k] for k in ("driver_mib", "worker_mib"))
    return f"scale: peak RSS grows {growth:.2f}x for 10x the images"


def scale_benchmark(out: Path, images: int, epochs: int = 1, budget: int = 64 * 2**20) -> dict:
    """Run :func:`one_size` at ``images`` and 10x that on a fresh 3-node cluster."""
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "include_dashboard": False},
    )
    for _ in range(NODES - 1):
        cluster.add_node(num_cpus=2)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        small = one_size(out, images, budget, epochs)
        large = one_size(out, images * 10, budget, epochs)
    finally:
        ray.shutdown()
        cluster.shutdown()
    log.info(
        "scale: 10x the images: featurize %.1fx the seconds (%.0f vs %.0f images/s), driver "
        "peak %.2fx, busiest worker peak %.2fx",
        large["featurize_s"] / small["featurize_s"],
        large["images_per_s"],
        small["images_per_s"],
        large["driver_mib"] / small["driver_mib"],
        large["worker_mib"] / small["worker_mib"],
    )
    log.info(growth_line(small, large))
    return {"small": small, "large": large}
