"""The benchmark job: which claim to measure, on what, and the call that measures it.

Example:

    >>> from pipeline.benchmarks.run import BenchmarkConfig
    >>> cfg = BenchmarkConfig(what="fit", model="tiny:cnn", cut="pool", head="fc2")
    >>> cfg.image_count(), cfg.model_weights()
    (512, None)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from pipeline.benchmarks import featurize, fit, listing, scale, shards, sweep
from pipeline.settings import Settings

SHARED = Path(__file__).resolve().parents[3] / "shared"
MOBILENET = SHARED / "weights" / "mobilenet_v2_imagenet.pth"
DEFAULT_IMAGES = {
    "featurize": 10**9,
    "featurize-memory": 250,
    "fit": 512,
    "sweep": 512,
    "listing": 10_000,
    "scale": 20_000,
    "shards": 10_000,
}


class BenchmarkConfig(Settings):
    """``python -m jobs.benchmark WHAT``: one measured claim, with its plain PyTorch baseline
    measured in the same run."""

    what: Literal["featurize", "featurize-memory", "fit", "sweep", "listing", "scale", "shards"]
    data: Path | None = Field(
        SHARED / "data" / "flowers128",
        description="folder per class (default ../shared/data/flowers128; generated when absent)",
    )
    model: str = "torchvision:mobilenet_v2"
    weights: str | None = Field(
        None,
        description="default: ../shared mobilenet_v2 weights when "
        "present (timing does not depend on the values)",
    )
    cut: str = "flatten"
    head: str = Field("classifier.1", description="fit, sweep: the layer resized")
    epochs: int = Field(5, gt=0, description="fit, sweep: epochs (per trial)")
    trials: int = Field(8, gt=0, description="sweep: trials")
    images: int | None = Field(
        None,
        gt=0,
        description="default: all (featurize), 250 (featurize-memory), 512 (fit, sweep), "
        "10000 (listing: empty files), 20000 (scale: 32 px images; the large run is 10x), "
        "10000 (shards: 16 px images in tars of 1000; the large run is 100x)",
    )
    batch_size: int = Field(
        64, gt=0, description="the baseline's batch (and the fit and sweep benchmarks')"
    )
    pipeline_batch_size: int | None = Field(
        None, gt=0, description="featurize: the pipeline's batch (default: the job's own)"
    )
    workers: int = Field(2, ge=0, description="the baseline's DataLoader workers")
    actors: int = Field(1, gt=0)
    engine: str = Field("auto", description="featurize: the pipeline's engine")
    device: Literal["cpu", "cuda"] = Field(
        "cpu", description="featurize: cuda runs the actors, the plain loop and the prefix on a GPU"
    )
    gpu_decode: bool = Field(False, description="featurize on cuda: decode JPEGs on the GPU")
    factor: int = Field(
        8,
        gt=1,
        description="featurize-memory, listing (default 20), shards (default 100): the larger "
        "run's multiple",
    )
    size: int = Field(64, ge=16, description="featurize-memory: generated image size")
    out: str = Field("runs/benchmark", description="where the log goes")
    ray_address: str | None = Field(
        "local",
        description="fit, sweep: the Ray this process joins (featurize runs the job "
        "in a fresh process with a local Ray of its own, as a user would)",
    )

    def image_count(self) -> int:
        return self.images or DEFAULT_IMAGES[self.what]

    def model_weights(self) -> str | None:
        if self.weights or self.model != "torchvision:mobilenet_v2" or not MOBILENET.exists():
            return self.weights
        return str(MOBILENET)

    def output_root(self) -> str:
        return self.out

    def needs_ray(self) -> bool:
        """Whether this process starts Ray (featurize runs its pipeline as a job of its own)."""
        return self.what in ("fit", "sweep")


def run_benchmark(cfg: BenchmarkConfig) -> dict:
    """Measure ``cfg.what``; returns its figures (they are logged as they are measured)."""
    weights, images = cfg.model_weights(), cfg.image_count()
    if cfg.what == "featurize":
        return featurize.featurize_benchmark(
            cfg.data,
            cfg.model,
            weights,
            cfg.cut,
            images,
            cfg.batch_size,
            cfg.workers,
            cfg.actors,
            engine=cfg.engine,
            device=cfg.device,
            gpu_decode=cfg.gpu_decode,
            pipeline_batch_size=cfg.pipeline_batch_size,
        )
    if cfg.what == "scale":  # its own 3-node cluster: this process starts no other Ray
        epochs = cfg.epochs if "epochs" in cfg.model_fields_set else 1
        return scale.scale_benchmark(Path(cfg.out), images, epochs)
    if cfg.what == "shards":  # each size a featurize job of its own, with its own Ray
        factor = cfg.factor if "factor" in cfg.model_fields_set else 100
        return shards.shards_benchmark(Path(cfg.out), images, factor)
    if cfg.what == "listing":
        factor = cfg.factor if "factor" in cfg.model_fields_set else 20
        return listing.listing_benchmark(Path(cfg.out), images, factor)
    if cfg.what == "featurize-memory":
        return featurize.featurize_memory_benchmark(
            cfg.model, weights, cfg.cut, images, cfg.factor, cfg.size, cfg.batch_size
        )
    if cfg.what == "fit":
        return fit.fit_benchmark(
            cfg.data,
            cfg.model,
            weights,
            cfg.cut,
            cfg.head,
            images,
            cfg.batch_size,
            cfg.workers,
            cfg.epochs,
        )
    return sweep.sweep_benchmark(
        cfg.data,
        cfg.model,
        weights,
        cfg.head,
        images,
        cfg.trials,
        cfg.epochs,
        cfg.batch_size,
        cfg.workers,
    )
