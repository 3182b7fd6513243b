"""Job configs: what each ``python -m jobs.X`` reads. Each holds the sections of the stages it
runs (``model``, ``data``, ``featurize``, ``train``, ``sweep``, ``predict``), never a copy of
their fields, and hands those sections to the stages as they are.

Example:

    >>> from pipeline.settings import TrainJobConfig
    >>> cfg = TrainJobConfig(data={"sources": ["images/"]}, train={"epochs": 3})
    >>> cfg.train.epochs, cfg.model.name, cfg.data.sources[0].uri
    (3, 'default', 'images/')
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, model_validator

from pipeline.settings.base import RAY_ADDRESS_HELP, Settings
from pipeline.settings.data import DataConfig
from pipeline.settings.model import FineTuneConfig, ModelConfig
from pipeline.settings.passes import FeaturizeConfig, PredictConfig
from pipeline.settings.sweeps import CompareConfig, SearchSpace, SweepConfig
from pipeline.settings.training import TrainConfig

RayAddress = Field(None, description=RAY_ADDRESS_HELP)

# storage_options -> the standard variables s3fs, pyarrow and Ray Train's storage all read
STORAGE_ENV = {
    "endpoint_url": "AWS_ENDPOINT_URL",
    "key": "AWS_ACCESS_KEY_ID",
    "secret": "AWS_SECRET_ACCESS_KEY",
    "token": "AWS_SESSION_TOKEN",
    "region": "AWS_DEFAULT_REGION",
}


def _known_storage_options(options: dict[str, str]) -> dict[str, str]:
    unknown = sorted(set(options) - set(STORAGE_ENV))
    if unknown:
        raise ValueError(f"unknown storage options {unknown}; valid: {sorted(STORAGE_ENV)}")
    return options


StorageOptions = Annotated[
    dict[str, str],
    AfterValidator(_known_storage_options),
    Field(
        description="how s3:// paths (AWS S3, MinIO, any S3-protocol server) are reached: "
        "endpoint_url, key, secret, token, region; set for this job and its Ray workers as the "
        "standard AWS variables they stand for (default: those variables as they are)"
    ),
]


def storage_env(options: dict[str, str]) -> dict[str, str]:
    """The environment variables ``storage_options`` stand for.

    >>> storage_env({"endpoint_url": "http://minio:9000"})
    {'AWS_ENDPOINT_URL': 'http://minio:9000'}
    """
    return {STORAGE_ENV[k]: v for k, v in options.items()}


class FeaturizeJobConfig(Settings):
    """``python -m jobs.featurize``: one pass over the images, one feature set per cut."""

    model: ModelConfig = ModelConfig()
    cuts: list[str | list[str]] | None = Field(
        None,
        min_length=1,
        description="several cuts in one pass, a feature set each (a cut: a node or a list of "
        "nodes to freeze through). Default: model.cut",
    )
    data: DataConfig
    featurize: FeaturizeConfig = FeaturizeConfig()
    ray_address: str | None = RayAddress
    storage_options: StorageOptions = {}

    def output_root(self) -> str:
        return self.featurize.out


class TrainJobConfig(Settings):
    """``python -m jobs.train``: surgery, featurize when needed (cached), fit, report, export."""

    model: ModelConfig = ModelConfig()
    mode: Literal["features", "end_to_end"] = Field(
        "features",
        description="features: featurize once (cached), fit on the feature set; "
        "end_to_end: decode, augment and run the prefix every epoch",
    )
    data: DataConfig
    featurize: FeaturizeConfig = FeaturizeConfig()
    train: TrainConfig = TrainConfig()
    ray_address: str | None = RayAddress
    storage_options: StorageOptions = {}

    def output_root(self) -> str:
        return self.train.storage


class TuneJobConfig(Settings):
    """``python -m jobs.tune``: featurize every cut in the sweep once, run the trials on Ray
    Tune, write the results table, plots, best network and report. A trial trains with
    ``train``'s settings, the ones it samples replaced; ``sweep.preset: compare`` runs the
    scratch / frozen / fine-tuned comparison instead of the search space."""

    model: ModelConfig = ModelConfig()
    data: DataConfig
    featurize: FeaturizeConfig = FeaturizeConfig()
    train: TrainConfig = TrainConfig()
    sweep: SweepConfig = SweepConfig()
    ray_address: str | None = RayAddress
    storage_options: StorageOptions = {}

    @model_validator(mode="after")
    def _cuts_come_from_the_sweep(self):
        if self.model.cut is not None or self.model.start_from or self.model.hidden:
            raise ValueError(
                "model.cut, model.start_from and model.hidden are not used by a sweep: its cuts "
                "come from sweep.space.unfreeze, its hidden blocks from sweep.space.width/depth"
            )
        return self

    def test_splits(self) -> list[str]:
        """Splits of the data besides train and val that are evaluated at the end (``test``)."""
        return [s for s in self.data.splits if s == "test"]

    def output_root(self) -> str:
        return self.sweep.storage


class PredictJobConfig(Settings):
    """``python -m jobs.predict``: classify images with an exported network."""

    model: str = Field(
        description="an exported network: a directory with spec.json and "
        "model.safetensors (e.g. <run>/model)"
    )
    data: DataConfig
    predict: PredictConfig = PredictConfig()
    ray_address: str | None = RayAddress
    storage_options: StorageOptions = {}

    def output_root(self) -> str:
        # the logs go beside the predictions, not into them: the directory stays readable as
        # one Parquet dataset (pandas.read_parquet(predict.out))
        return self.predict.out.rstrip("/").rpartition("/")[0] or "."


class DemoConfig(Settings):
    """``python -m jobs.demo``: the packaged pretrained default on a generated (or given)
    dataset; featurize, fit a head, sweep, compare, one report. Everything lands under ``out``:
    ``data`` (generated), ``features``, ``train``, ``tune`` and ``report.html``."""

    model: ModelConfig = Field(
        ModelConfig(),
        description="the network; its image_size defaults to the demo's image_size, its cut "
        "(the fit step's) to everything below the head",
    )
    data: Path | None = Field(None, description="folder-per-class images; generated when unset")
    images_per_class: int = Field(60, gt=1, description="generated dataset: images per class")
    clutter: int = Field(12, ge=0, description="generated dataset: distractors per image")
    image_size: int = Field(
        96,
        ge=16,
        description="generated images' size and the network's input crops (96 keeps CPU runs "
        "short)",
    )
    splits: dict[str, float] = Field(
        {"train": 0.6, "val": 0.2, "test": 0.2}, description="hash split of the images"
    )
    steps: list[Literal["fit", "sweep", "compare"]] = Field(
        ["fit", "sweep", "compare"], min_length=1, description="which steps run, in this order"
    )
    train: TrainConfig = Field(
        TrainConfig(
            epochs=20,
            batch_size=32,
            patience=6,
            fine_tune=FineTuneConfig(
                optimizer="adamw", lr=3e-3, weight_decay=1e-4, schedule="cosine"
            ),
        ),
        description="the fit step's settings (its storage is <out>/train); the sweep's trials "
        "take the rest of theirs from it, without patience",
    )
    sweep: SweepConfig = Field(
        SweepConfig(
            space=SearchSpace(
                unfreeze={"grid": [0, 2]}, lr={"grid": [1e-3, 1e-2]}, epochs=12, batch_size=32
            ),
            num_samples=1,
            compare=CompareConfig(unfreeze=2, epochs=8, batch_size=32),
        ),
        description="the sweep and compare steps (their storage is <out>/tune)",
    )
    out: Path = Field(Path("runs/demo"), description="where everything is written")
    seed: int = Field(0, description="seeds the generated data")
    ray_address: str | None = RayAddress
    storage_options: StorageOptions = {}

    def network(self) -> ModelConfig:
        """``model``, fed crops of the demo's ``image_size`` unless it sets its own."""
        return self.model.model_copy(
            update={"image_size": self.model.image_size or self.image_size}
        )

    def output_root(self) -> str:
        return str(self.out)


JOB_CONFIGS = (DemoConfig, FeaturizeJobConfig, TrainJobConfig, TuneJobConfig, PredictJobConfig)


def labelled(cfg: BaseModel, label: str) -> BaseModel:
    """``cfg`` with ``label`` as the readable start of its default run or sweep name, unless
    the config gives its own."""
    if isinstance(cfg, TrainJobConfig) and cfg.train.label is None:
        return cfg.model_copy(update={"train": cfg.train.model_copy(update={"label": label})})
    if isinstance(cfg, TuneJobConfig) and cfg.sweep.label is None:
        return cfg.model_copy(update={"sweep": cfg.sweep.model_copy(update={"label": label})})
    return cfg
