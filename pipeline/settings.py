"""Stage settings: the typed, validated settings every stage takes (a leaf: pydantic only).

Job configs (:mod:`pipeline.config`) are assembled from these; stages take these, never a job
config, so a stage can be called from Python with exactly the settings it uses.

Example:

    >>> from pipeline.settings import FineTuneConfig, TrainConfig
    >>> TrainConfig(epochs=3, fine_tune=FineTuneConfig(lr=0.01)).fine_tune.lr
    0.01
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Engine = Literal["auto", "torch", "onnxruntime"]


class ConfigError(ValueError):
    """A setting that cannot work, in one line: the field, the value, what to do instead.
    Jobs print it as ``error: <field>: <message>`` and exit 2, before Ray starts."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class Settings(BaseModel):
    """Unknown keys are errors, so a typo never silently keeps a default."""

    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------- models


class Preprocess(Settings):
    """How an image becomes the network's input tensor (resize, center crop, normalize)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def at_size(self, crop: int) -> Preprocess:
        """The same framing at another crop size: the resize scales with the crop."""
        return self.model_copy(
            update={
                "crop_size": crop,
                "resize_size": round(crop * self.resize_size / self.crop_size),
            }
        )


class ModelConfig(Settings):
    """A zoo network and where its frozen prefix ends."""

    name: str = Field("torchvision:mobilenet_v2", description="zoo name (see pipeline.zoo)")
    weights: str | None = Field(
        None,
        description="path/URI of a .pth/.safetensors state_dict, "
        "a torchvision enum name, 'hub', or none",
    )
    kwargs: dict = Field(default_factory=dict, description="constructor arguments")
    image_size: int | None = Field(
        None,
        ge=16,
        description="square input crops of this size "
        "instead of the zoo's (e.g. 96 for "
        "small images on CPU)",
    )


class LayerOverride(Settings):
    """Per-layer settings that win over the network-wide ones (DL4J's per-layer updater)."""

    lr: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)


class FineTuneConfig(Settings):
    """DL4J's FineTuneConfiguration: how the trainable part of a network is optimized."""

    optimizer: Literal["sgd", "nesterov", "adam", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    decay_norm_and_bias: bool = False
    schedule: Literal["constant", "cosine", "onecycle"] = "constant"
    grad_clip: float | None = Field(None, gt=0)
    seed: int = 0
    overrides: dict[str, LayerOverride] = Field(default_factory=dict)


class NetworkConfig(Settings):
    """How a job's network is made: a zoo model frozen through ``cut``, optional hidden blocks
    before ``head``, ``head`` resized to the classes (or an exported network to continue from)."""

    model: ModelConfig = ModelConfig()
    cut: str | list[str] = Field("flatten", description="freeze through this node (or nodes)")
    head: str = Field("classifier.1", description="the output layer, resized to the classes")
    start_from: str | None = Field(
        None,
        description="an exported network (e.g. an earlier "
        "run's model) to continue from: refrozen at "
        "cut, its trained head kept",
    )
    hidden: list[int] = Field(
        default_factory=list,
        description="widths of Linear+ReLU+Dropout blocks inserted before the head",
    )
    hidden_dropout: float = Field(0.0, ge=0, lt=1)

    def cuts(self) -> list[str]:
        """``cut`` as a list of node names (empty: nothing frozen)."""
        return [self.cut] if isinstance(self.cut, str) else list(self.cut)


# ---------------------------------------------------------------------------- data


class SourceConfig(Settings):
    """One source of images: a folder (a folder per class, or just images: unlabeled), a
    manifest (``.csv``/``.parquet`` with ``path``, optionally a label and ``split``; relative
    paths are relative to the manifest), or shards: Parquet files of encoded images (the
    Hugging Face ``datasets`` layout) or WebDataset ``.tar`` files, as one file, a folder of
    them or a glob."""

    uri: str
    split: str | None = Field(None, description="put every item of this source in this split")
    format: Literal["folder", "manifest", "parquet", "webdataset"] | None = Field(
        None,
        description="default: inferred: .csv a manifest, .tar WebDataset, .parquet a manifest "
        "when it has a path column and no image column, else Parquet shards; a folder holding "
        "only .tar (or .parquet) files, shards; any other folder, images",
    )
    image_column: str = Field(
        "image", description="Parquet shards: the image column (struct {bytes, path} or binary)"
    )
    label_column: str | None = Field(
        None,
        description="default: 'label' (Parquet shards, manifests); WebDataset: the .cls file, "
        "else the .json file's 'label'. Absent from the data: the images are unlabeled",
    )
    label_names: list[str] | None = Field(
        None,
        description="class names when labels are indexes; default: a datasets Parquet file's "
        "own (schema metadata), else the labels as they are",
    )


class DataConfig(Settings):
    """Where the images are and how items without a split are split."""

    sources: list[SourceConfig]
    splits: dict[str, float] = Field(
        default_factory=lambda: {"train": 0.8, "val": 0.2},
        description="ratios for items whose source gives no split",
    )
    listing: Literal["auto", "tasks", "local"] = Field(
        "auto",
        description="where sources are listed: tasks (a Ray task per class folder or shard), "
        "local (this process), auto (tasks for object stores and shards, local for folders "
        "on a mounted disk, where a scan beats starting tasks: jobs.benchmark listing)",
    )

    @field_validator("sources", mode="before")
    @classmethod
    def _plain_uris(cls, value):
        return [{"uri": str(v)} if isinstance(v, (str, Path)) else v for v in value]

    @model_validator(mode="after")
    def _check(self):
        if not self.sources:
            raise ValueError("data.sources is empty: give at least one folder or manifest")
        if abs(sum(self.splits.values()) - 1) > 1e-6 or min(self.splits.values()) < 0:
            raise ValueError(f"data.splits {self.splits} must be non-negative and sum to 1")
        return self


class AugmentConfig(Settings):
    """Augmented views (random resized crop, flip), seeded by (image id, view, seed)."""

    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    splits: list[str] = ["train"]
    seed: int = 0


# ---------------------------------------------------------------------------- Ray Data stages


class StageConfig(Settings):
    """How the decode -> model -> write stages run on Ray Data (featurize and predict)."""

    out: str = Field("runs/features", description="where the output directories go")
    batch_size: int = Field(
        256,
        gt=0,
        description="images per Ray Data batch: a decode task's, an actor call's and a Parquet "
        "part's (a CPU model runs them 8 at a time); fewer, larger batches cost Ray less",
    )
    actors: int = Field(1, gt=0, description="model actors (one per GPU on a GPU cluster)")
    actor_cpus: float = Field(0.5, gt=0, description="fractional, so decoders keep running")
    actor_gpus: float = Field(0, ge=0)
    engine: Engine = Field(
        "auto",
        description="what runs the network: onnxruntime (exported once, ~4x eager PyTorch on "
        "CPUs), torch, or auto (onnxruntime on CPU, torch on GPU unless ONNX Runtime's CUDA "
        "provider is installed)",
    )
    threads: int | None = Field(
        None, description="per actor; default: the node's cores divided by actors"
    )
    decode_cpus: float = Field(
        0.25, gt=0, description="per decode task; must differ from actor_cpus on CPU-only actors"
    )
    decoders: int | None = Field(
        None,
        gt=0,
        description="decode tasks at a time; default: one per 4 cores the CPU actors' models "
        "use (one decoder outpaces 4 cores of model), as many as the CPUs allow beside GPU "
        "actors",
    )
    gpu_decode: bool = Field(
        False,
        description="GPU actors: JPEGs travel as bytes and are decoded, resized and "
        "cropped on the actor's GPU (torchvision.io.decode_jpeg); other images on CPUs",
    )
    write_cpus: float = Field(0.25, gt=0)
    channels_last: bool = True
    max_image_pixels: int = Field(
        89_478_485, gt=0, description="larger images are rejected as decompression bombs"
    )

    @model_validator(mode="after")
    def _separate_stages(self):
        # Ray Data fuses a task stage into the next actor stage when their resources are equal;
        # decoding would then run inside the model actors, in series with the forward pass.
        if self.gpu_decode and not self.actor_gpus:
            raise ValueError(
                "gpu_decode decodes on the model actors' GPUs: give them one "
                "(actor_gpus=1) or leave gpu_decode off"
            )
        if self.decode_cpus == self.actor_cpus and not self.actor_gpus:
            raise ValueError(
                f"decode_cpus and actor_cpus are both {self.decode_cpus}: make them "
                "differ (e.g. decode_cpus=0.25, actor_cpus=0.5) so decoding stays a "
                "separate stage that overlaps the model"
            )
        return self


class FeaturizeConfig(StageConfig):
    """How featurization runs and what it stores."""

    out: str = Field("runs/features", description="root under which feature sets are cached")
    dtype: Literal["float16", "float32"] = "float16"
    views: int = Field(
        0, ge=0, description="augmented views per image of augment.splits, beside the plain view 0"
    )
    augment: AugmentConfig = AugmentConfig()
    preprocess: Preprocess | None = Field(None, description="override the network's own")


class PredictConfig(StageConfig):
    """Where predictions go and how the stages run."""

    out: str = Field("runs/predictions", description="the predictions directory")


# ---------------------------------------------------------------------------- training


class TrainConfig(Settings):
    """How the trainable part is fitted, checkpointed, stopped and scaled."""

    name: str | None = Field(
        None,
        description="run name; re-running the same name resumes the "
        "run. Default: <label>-<hash of the net, data and config>",
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
        "larger shard streams through Ray Data with a seeded shuffle buffer. Default: a quarter "
        "of the node's memory over the workers",
    )
    use_gpu: bool = False
    cpus_per_worker: float = Field(1, gt=0)
    max_failures: int = Field(
        0, ge=-1, description="worker-group restarts from the last checkpoint (-1: unlimited)"
    )
    augment: AugmentConfig | None = Field(
        None, description="end-to-end only: random resized crop and flip per epoch; none when unset"
    )
    max_image_pixels: int = Field(89_478_485, gt=0)
    engine: Engine = Field(
        "auto", description="end to end: what runs the frozen prefix (see FeaturizeConfig)"
    )
    fail_after_epoch: int | None = Field(
        None,
        description="fault injection for tests: rank 0 raises once, after reporting this epoch",
    )

    @property
    def distributed(self) -> bool:
        """Several workers or a GPU: a fit that needs a TorchTrainer even inside a sweep."""
        return self.workers > 1 or self.use_gpu
