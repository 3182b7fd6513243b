"""Featurizing: the Ray Data pipeline against the loop a PyTorch user writes, and its memory
for N and 8N images.

Example (the baseline on a small folder):

    >>> from pathlib import Path
    >>> from torchvision.datasets import ImageFolder
    >>> from pipeline.benchmarks.featurize import baseline_featurize
    >>> from pipeline.settings import Preprocess
    >>> from pipeline.surgery import TransferLearning
    >>> net = TransferLearning("tiny:cnn").set_feature_extractor("pool").build()
    >>> rate = baseline_featurize(Path(shapes), ImageFolder(shapes).samples, net,
    ...                           Preprocess(**net.spec["preprocess"]), batch_size=8, workers=0,
    ...                           out=tmp / "plain.parquet")
    >>> rate > 0
    True
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
from torchvision.datasets import ImageFolder

from pipeline import featureset as fset
from pipeline import sources
from pipeline.benchmarks.common import (
    PeakRSS,
    gemm_peak_gflops,
    manifest_of,
    pick_images,
    prefix_gflop_per_image,
)
from pipeline.decode import transform
from pipeline.featurize import featurize
from pipeline.settings import DataConfig, FeaturizeConfig, Preprocess
from pipeline.shapes import SHAPES, generate_shapes
from pipeline.surgery import TransferLearning

log = logging.getLogger(__name__)


def baseline_featurize(
    root: Path, samples, net, preprocess: Preprocess, batch_size: int, workers: int, out: Path
) -> float:
    """The loop a PyTorch user writes: ImageFolder + DataLoader + the prefix + pyarrow."""
    dataset = ImageFolder(str(root), transform=transform(preprocess))
    dataset.samples = dataset.imgs = samples
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    prefix, shapes = net.prefix(), net.frontier_shapes()
    schema = fset.feature_schema(shapes, "float32")
    start, n = time.perf_counter(), 0
    with (
        pq.ParquetWriter(out, schema, compression=fset.COMPRESSION) as writer,
        torch.inference_mode(),
    ):
        for images, labels in loader:
            features = {k: v.numpy() for k, v in prefix(images).items()}
            paths = [p for p, _ in samples[n : n + len(labels)]]
            meta = {
                fset.ID: [sources.item_id(p) for p in paths],
                fset.SOURCE: paths,
                fset.LABEL: labels.numpy(),
                fset.SPLIT: ["train"] * len(labels),
                fset.VIEW: [0] * len(labels),
            }
            writer.write_table(fset.to_table(meta, features, schema))
            n += len(labels)
    return n / (time.perf_counter() - start)


def featurize_memory_benchmark(
    model: str, weights: str | None, cut: str, images: int, factor: int, size: int, batch_size: int
) -> dict:
    """Peak RSS of the pipeline on ``images`` and on ``factor`` times as many generated images
    (small, so it runs in a minute): streaming keeps it flat."""
    net = TransferLearning(model, weights=weights).set_feature_extractor(cut).build()
    preprocess = Preprocess(**dict(net.spec["preprocess"], resize_size=size, crop_size=size))
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        generate_shapes(root, per_class=images * factor // len(SHAPES), size=size)
        folder = sorted(root.rglob("*.png"))
        for n in (images, images * factor):
            manifest = manifest_of(
                [str(p) for p in folder[:n]],
                [p.parent.name for p in folder[:n]],
                Path(tmp) / str(n),
            )
            items = sources.list_items(DataConfig(sources=[str(manifest)]))
            cfg = FeaturizeConfig(
                out=f"{tmp}/features{n}", batch_size=batch_size, preprocess=preprocess
            )
            with PeakRSS() as rss:
                result = featurize(net, items, cfg)
            peaks[n] = rss.peak / 2**20
            log.info(
                f"{n} images at {size} px: {result.images_per_s:.1f} images/s, "
                f"peak RSS {peaks[n]:.0f} MiB"
            )
    ratio = peaks[images * factor] / peaks[images]
    log.info(f"peak RSS grows {ratio:.2f}x for {factor}x the images")
    return {"peak_rss_mb": peaks, "rss_ratio": ratio}


def featurize_benchmark(
    data: Path | None,
    model: str,
    weights: str | None,
    cut: str,
    images: int,
    batch_size: int,
    workers: int,
    actors: int,
) -> dict:
    """Throughput of :func:`pipeline.featurize.featurize` vs the plain loop on the same images,
    model, resolution and batch size; peak RSS of each; achieved GFLOP/s vs the GEMM peak;
    float16 vs float32 bytes on disk."""
    net = TransferLearning(model, weights=weights).set_feature_extractor(cut).build()
    preprocess = Preprocess(**net.spec["preprocess"])
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        root = pick_images(data, images, workdir)
        folder = ImageFolder(str(root))
        samples = folder.samples[:: max(1, len(folder.samples) // images)][:images]
        items = sources.list_items(
            DataConfig(
                sources=[
                    str(
                        manifest_of(
                            [p for p, _ in samples],
                            [folder.classes[c] for _, c in samples],
                            workdir,
                        )
                    )
                ]
            )
        )
        log.info(
            f"{len(samples)} images from {root}, {model} cut at {cut!r}, "
            f"{preprocess.crop_size} px, batch {batch_size}"
        )
        with PeakRSS() as rss_base:
            base_rate = baseline_featurize(
                root, samples, net, preprocess, batch_size, workers, workdir / "baseline.parquet"
            )
        log.info(f"plain PyTorch (DataLoader, {workers} workers): {base_rate:.1f} images/s")
        cfg = FeaturizeConfig(out=str(workdir / "features"), batch_size=batch_size, actors=actors)
        with PeakRSS() as rss_ours:
            result = featurize(net, items, cfg)
        ours_rate = result.images_per_s
        log.info(f"pipeline ({actors} actor(s), {cfg.dtype}): {ours_rate:.1f} images/s")
        # The baseline stored the same rows and columns as float32, in row groups of a batch.
        half = sum(p.stat().st_size for p in Path(result.feature_sets[0].uri).glob("part-*"))
        single = (workdir / "baseline.parquet").stat().st_size
    gflop = prefix_gflop_per_image(net, tuple(net.spec["input_shape"]))
    peak = gemm_peak_gflops()
    figures = {
        "images": len(samples),
        "baseline_images_per_s": base_rate,
        "pipeline_images_per_s": ours_rate,
        "throughput_ratio": ours_rate / base_rate,
        "baseline_peak_rss_mb": rss_base.peak / 2**20,
        "pipeline_peak_rss_mb": rss_ours.peak / 2**20,
        "prefix_gflop_per_image": gflop,
        "pipeline_gflops": gflop * ours_rate,
        "gemm_peak_gflops": peak,
        "float16_over_float32_bytes": half / single,
    }
    log.info(
        f"throughput: pipeline {ours_rate:.1f} vs plain {base_rate:.1f} images/s = "
        f"{figures['throughput_ratio']:.2f}x"
    )
    log.info(
        f"peak RSS: pipeline {figures['pipeline_peak_rss_mb']:.0f} MiB (driver + Ray "
        f"processes), plain {figures['baseline_peak_rss_mb']:.0f} MiB"
    )
    log.info(
        f"compute: {gflop:.2f} GFLOP/image -> {figures['pipeline_gflops']:.1f} GFLOP/s achieved "
        f"vs {peak:.1f} GFLOP/s fp32 GEMM peak ({figures['pipeline_gflops'] / peak:.0%})"
    )
    log.info(f"storage: float16 parts are {figures['float16_over_float32_bytes']:.0%} of float32")
    return figures
