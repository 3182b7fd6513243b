"""Featurizing: the pipeline, run as the job a user runs, against the peers a user would write
instead (:mod:`pipeline.benchmarks.peers`), and all of them against this machine's limit for
the model (the frozen prefix alone, on each engine, on preprocessed batches already in memory).

Every rate is wall clock from a process's start to its exit (the pipeline's:
``python -m jobs.featurize``, interpreter, imports, Ray start-up, the pass, the manifest) as a
user waits; the pipeline's steady-state rate (what its model stage sustained after its first
batch) is printed beside it. Peak memory is PSS over each one's process tree.

Example (the prefix alone, this machine's limit for a model):

    >>> from pipeline.benchmarks.featurize import prefix_alone
    >>> from pipeline.net.builder import TransferLearning
    >>> net = TransferLearning("tiny:cnn").set_feature_extractor("pool").build()
    >>> prefix_alone(net, "onnxruntime", batch_size=8, seconds=0.2) > 0
    True
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.benchmarks.common import (
    PeakRSS,
    gemm_peak_gflops,
    prefix_gflop_per_image,
    sample_images,
)
from pipeline.benchmarks.peers import PEERS
from pipeline.data.featureset import FeatureSet
from pipeline.data.shapes import SHAPES, generate_shapes
from pipeline.engine.export import build_engine
from pipeline.net.builder import TransferLearning
from pipeline.net.graph import TransferNet
from pipeline.settings import Preprocess

log = logging.getLogger(__name__)
SUMMARY = re.compile(
    r"featurize: (\d+) images, (\d+) errors, ([\d.]+) images/s "
    r"\((?:([\d.]+) steady, )?(\w+)\)"
)


def pipeline_job(
    manifest: Path, out: Path, model: str, weights: str | None, cut: str, overrides: list[str]
) -> dict:
    """``python -m jobs.featurize`` on ``manifest`` in a fresh process with its own local Ray:
    its wall time from start to exit, its peak memory, and what its summary line says."""
    command = [
        sys.executable,
        "-m",
        "jobs.featurize",
        f"model.name={model}",
        f"cuts=[{cut}]",
        f"data.sources=[{manifest}]",
        f"featurize.out={out}",
        "ray_address=local",
        *([f"model.weights={weights}"] if weights else []),
        *overrides,
    ]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    start = time.perf_counter()
    job = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    with PeakRSS(job.pid) as rss:
        output = job.communicate()[0]
    seconds = time.perf_counter() - start
    found = SUMMARY.search(output)
    if job.returncode != 0 or not found:
        raise RuntimeError(f"the featurize job failed:\n{output[-3000:]}")
    images = int(found.group(1))
    return {
        "images": images,
        "errors": int(found.group(2)),
        "seconds": seconds,
        "images_per_s": images / seconds,
        "pass_images_per_s": float(found.group(3)),
        "steady_images_per_s": float(found.group(4) or 0),
        "engine": found.group(5),
        "peak_rss_mb": rss.mib,
    }


def prefix_alone(
    net: TransferNet, engine: str, batch_size: int, seconds: float = 5.0, device: str = "cpu"
) -> float:
    """The frozen prefix on ``engine`` with all the cores (or the GPU), on preprocessed uint8
    batches already in memory: this machine's limit for the model (images/s)."""
    preprocess = Preprocess(**net.spec["preprocess"])
    crop = preprocess.crop_size
    runner = build_engine(
        net.prefix(),
        net.frontier(),
        preprocess,
        engine,
        device=device,
        threads=len(os.sched_getaffinity(0)),
        what="the prefix",
    )
    batch = np.random.default_rng(0).integers(0, 256, (batch_size, 3, crop, crop), np.uint8)
    runner(batch)  # the first call sets up the runtime's buffers
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        runner(batch)
        n += batch_size
    return n / (time.perf_counter() - start)


def featurize_benchmark(
    data: Path | None,
    model: str,
    weights: str | None,
    cut: str,
    images: int,
    batch_size: int,
    workers: int,
    actors: int,
    engine: str = "auto",
    measure_s: float = 5.0,
    device: str = "cpu",
    gpu_decode: bool = False,
    pipeline_batch_size: int | None = None,
) -> dict:
    """The pipeline (as a job, with its own batch size unless ``pipeline_batch_size``) vs its
    peers (:mod:`pipeline.benchmarks.peers`, batch ``batch_size``), each a process timed from its
    start to its exit, on the same images, model and resolution; the prefix alone on each
    engine; the GEMM peak; peak memory of each; float16 vs float32 bytes on disk. Ends with the
    ``throughput:`` and ``limit:`` lines and one ``peer:`` line per peer."""
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "device=cuda: no CUDA device here (torch.cuda.is_available() is "
            "False); run it where a GPU is, or with device=cpu"
        )
    net = TransferLearning(model, weights=weights).set_feature_extractor(cut).build()
    crop = net.spec["preprocess"]["crop_size"]
    gpu = (
        ["featurize.actor_gpus=1", f"featurize.gpu_decode={gpu_decode}"] if device == "cuda" else []
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sample = sample_images(data, images, work)
        log.info(
            f"{len(sample.samples)} images from {sample.root}, {model} cut at {cut!r}, "
            f"{crop} px, {len(os.sched_getaffinity(0))} CPUs; plain loop batch {batch_size}, "
            f"pipeline batch {pipeline_batch_size or 'its default'}"
        )
        options = ["--batch-size", str(batch_size), "--workers", str(workers), "--device", device]
        peers = {}
        for name in PEERS if device == "cpu" else ["plain"]:  # the Ray recipe is a CPU run here
            out = work / f"{name}.parquet"
            peers[name] = peer_process(name, sample.manifest, out, model, weights, cut, options)
            log.info(
                f"{PEERS[name]}: {peers[name]['images_per_s']:.1f} images/s from its process's "
                f"start ({peers[name]['seconds']:.0f} s), peak memory "
                f"{peers[name]['peak_rss_mb']:.0f} MiB"
            )
        plain, plain_mib = peers["plain"]["images_per_s"], peers["plain"]["peak_rss_mb"]
        job = pipeline_job(
            sample.manifest,
            work / "features",
            model,
            weights,
            cut,
            [
                *([f"featurize.batch_size={pipeline_batch_size}"] if pipeline_batch_size else []),
                f"featurize.actors={actors}",
                f"featurize.engine={engine}",
                *gpu,
            ],
        )
        log.info(
            f"pipeline (jobs.featurize, {job['engine']}): {job['images_per_s']:.1f} images/s "
            f"from the job's start ({job['seconds']:.0f} s, Ray start-up included); "
            f"{job['steady_images_per_s']:.1f} steady; peak memory "
            f"{job['peak_rss_mb']:.0f} MiB"
        )
        (feature_set,) = FeatureSet.under(str(work / "features"))
        half = sum(
            Path(feature_set.uri, f["name"]).stat().st_size for f in feature_set.manifest["files"]
        )
        single = (work / "plain.parquet").stat().st_size
    alone = {
        kind: prefix_alone(net, kind, batch_size, measure_s, device)
        for kind in ("torch", "onnxruntime")
    }
    for kind, rate in alone.items():
        log.info(f"the prefix alone on {kind}: {rate:.1f} images/s")
    gflop = prefix_gflop_per_image(net, tuple(net.spec["input_shape"]))
    gemm = gemm_peak_gflops(seconds=min(2.0, measure_s))
    figures = {
        "images": len(sample.samples),
        "plain_images_per_s": plain,
        "plain_peak_rss_mb": plain_mib,
        **{f"peer_{k}": v for k, v in peers.items()},
        **{f"pipeline_{k}": v for k, v in job.items()},
        **{f"prefix_{k}_images_per_s": v for k, v in alone.items()},
        "prefix_gflop_per_image": gflop,
        "gemm_peak_gflops": gemm,
        "float16_over_float32_bytes": half / single,
    }
    figures["throughput_ratio"] = job["images_per_s"] / plain
    figures["limit_fraction"] = job["images_per_s"] / alone["onnxruntime"]
    log.info(
        f"compute: {gflop:.2f} GFLOP/image; the prefix alone on onnxruntime reaches "
        f"{gflop * alone['onnxruntime']:.0f} GFLOP/s of a {gemm:.0f} GFLOP/s fp32 GEMM peak"
    )
    log.info(
        f"memory: pipeline {job['peak_rss_mb']:.0f} MiB (its driver and every Ray process) "
        f"= {job['peak_rss_mb'] / plain_mib:.2f}x the plain loop's"
    )
    log.info(f"storage: float16 parts are {half / single:.0%} of float32")
    log.info(
        f"throughput: pipeline {job['images_per_s']:.1f} vs plain {plain:.1f} images/s = "
        f"{figures['throughput_ratio']:.2f}x"
    )
    log.info(
        f"limit: pipeline at {figures['limit_fraction']:.0%} of the prefix-only onnxruntime rate"
    )
    for name, peer in peers.items():
        ratio = job["images_per_s"] / peer["images_per_s"]
        figures[f"ratio_{name}"] = ratio
        log.info(
            f"peer: {PEERS[name]} {peer['images_per_s']:.1f} images/s; the pipeline is {ratio:.2f}x"
        )
    return figures


def peer_process(
    name: str,
    manifest: Path,
    out: Path,
    model: str,
    weights: str | None,
    cut: str,
    options: list[str],
) -> dict:
    """``python -m jobs.peer NAME`` on the benchmark's images: its wall time from start to exit
    and its peak memory (its whole process tree: DataLoader workers, Ray's processes)."""
    command = [
        sys.executable,
        "-m",
        "jobs.peer",
        name,
        "--manifest",
        str(manifest),
        "--out",
        str(out),
        "--model",
        model,
        "--cut",
        cut,
        *(["--weights", weights] if weights else []),
        *options,
    ]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    start = time.perf_counter()
    peer = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    with PeakRSS(peer.pid) as rss:
        output = peer.communicate()[0]
    seconds = time.perf_counter() - start
    found = re.search(rf"peer {re.escape(name)}: (\d+) images", output)
    if peer.returncode != 0 or not found:
        raise RuntimeError(f"the {name} peer failed:\n{output[-3000:]}")
    images = int(found.group(1))
    return {
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "peak_rss_mb": rss.mib,
    }


def featurize_memory_benchmark(
    model: str, weights: str | None, cut: str, images: int, factor: int, size: int, batch_size: int
) -> dict:
    """Peak memory of the featurize job on ``images`` and on ``factor`` times as many generated
    images (small, so it runs in a minute): streaming keeps it flat."""
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        generate_shapes(work / "images", per_class=images * factor // len(SHAPES), size=size)
        files = sorted((work / "images").rglob("*.png"))
        preprocess = json.dumps(
            {"resize_size": size, "crop_size": size, "mean": [0.5] * 3, "std": [0.5] * 3}
        )
        for n in (images, images * factor):
            manifest = work / f"{n}.csv"
            manifest.write_text(
                "path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in files[:n])
            )
            job = pipeline_job(
                manifest,
                work / f"features{n}",
                model,
                weights,
                cut,
                [f"featurize.batch_size={batch_size}", f"featurize.preprocess={preprocess}"],
            )
            peaks[n] = job["peak_rss_mb"]
            log.info(
                f"{n} images at {size} px: {job['images_per_s']:.1f} images/s, peak memory "
                f"{peaks[n]:.0f} MiB"
            )
    ratio = peaks[images * factor] / peaks[images]
    log.info(f"peak memory grows {ratio:.2f}x for {factor}x the images")
    return {"peak_rss_mb": peaks, "rss_ratio": ratio}
