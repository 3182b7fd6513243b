"""How the trainable part of a network is fitted, checkpointed, stopped and scaled.

Example:

    >>> from pipeline.settings import FineTuneConfig, TrainConfig
    >>> TrainConfig(epochs=3, fine_tune=FineTuneConfig(lr=0.01)).fine_tune.lr
    0.01
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.settings.base import DEFAULT_ENGINE, ENGINE_HELP, Engine, Settings
from pipeline.settings.data import AugmentConfig
from pipeline.settings.model import FineTuneConfig


class TrainConfig(Settings):
    """How the trainable part is fitted, checkpointed, stopped and scaled."""

    name: str | None = Field(
        None,
        description="run name; re-running the same name resumes the run (one that finished "
        "with other settings is refused). Default: <label>-<hash of the net, data and config>",
    )
    label: str | None = Field(
        None,
        description="readable start of the default run name; jobs set it to the config "
        "file's stem. Default: the model's name",
    )
    storage: str = Field(
        "runs/train",
        description="runs live in <storage>/<name>; use shared "
        "storage (NFS, s3://) on a multi-node cluster",
    )
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(64, gt=0, description="per worker")
    fine_tune: FineTuneConfig | None = Field(None, description="default: the network's own")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    bn_eval: bool = Field(
        True,
        description="keep the trainable part's BatchNorm layers in "
        "inference mode (their running statistics fixed; "
        "scale and shift still train), as is usual when "
        "fine-tuning pretrained blocks on a small dataset",
    )
    metric: str = Field("val_accuracy", description="what best-k, early stopping and restore use")
    mode: Literal["max", "min"] = "max"
    keep: int = Field(2, gt=0, description="best checkpoints kept (the latest is kept too)")
    patience: int | None = Field(
        None, gt=0, description="stop after this many epochs without improving the metric"
    )
    restore: Literal["best", "last"] = Field("best", description="which weights end up in the net")
    top_k: int = Field(5, gt=1, description="also report top-k accuracy")
    train_split: str = "train"
    val_split: str = "val"
    workers: int = Field(1, gt=0)
    memory_budget: int | None = Field(
        None,
        gt=0,
        description="bytes a worker may hold its shard of a feature set in (as float32); a "
        "larger shard is read from its Parquet files a few rows at a time (pyarrow) through a "
        "seeded shuffle buffer. Default: a quarter of the node's memory over the workers",
    )
    image_buffer: int = Field(
        1024,
        gt=0,
        description="end to end on shards (read front to back): images (as their encoded "
        "bytes) a worker's shuffle buffer holds; a shard that holds one class needs more",
    )
    use_gpu: bool = False
    cpus_per_worker: float = Field(1, gt=0)
    max_failures: int = Field(
        0, ge=-1, description="worker-group restarts from the last checkpoint (-1: unlimited)"
    )
    augment: AugmentConfig | None = Field(
        None, description="end-to-end only: random resized crop and flip per epoch; none when unset"
    )
    engine: Engine = Field(DEFAULT_ENGINE, description="end to end: " + ENGINE_HELP)

    @property
    def distributed(self) -> bool:
        """Several workers or a GPU: a fit that needs a TorchTrainer even inside a sweep."""
        return self.workers > 1 or self.use_gpu
