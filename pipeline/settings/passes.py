"""How a Ray Data pass over images runs (decode tasks, model actors, writers), and what the
featurize and predict passes write.

Example:

    >>> from pipeline.settings import FeaturizeConfig
    >>> FeaturizeConfig(out="runs/features", dtype="float32").actor_cpus
    0.5
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.settings.base import DEFAULT_ENGINE, ENGINE_HELP, Engine, Settings
from pipeline.settings.data import AugmentConfig
from pipeline.settings.model import Preprocess


class PassConfig(Settings):
    """How the decode -> model -> write stages run on Ray Data (featurize and predict)."""

    batch_size: int = Field(
        256,
        gt=0,
        description="images per Ray Data batch: a decode task's block and an actor call's (a "
        "CPU model runs them 8 at a time); fewer, larger batches cost Ray less. Parts are sized "
        "by part_rows and part_mib, not by batch",
    )
    actors: int = Field(1, gt=0, description="model actors (one per GPU on a GPU cluster)")
    actor_cpus: float = Field(0.5, gt=0, description="fractional, so decoders keep running")
    actor_gpus: float = Field(0, ge=0)
    engine: Engine = Field(DEFAULT_ENGINE, description=ENGINE_HELP)
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
    write_cpus: float = Field(0.25, gt=0, description="the writer actor's")
    part_rows: int = Field(
        100_000, gt=0, description="rows a Parquet part holds at most (a unit's rows, or fewer)"
    )
    part_mib: float = Field(
        128, gt=0, description="MiB of data a Parquet part holds at most (a unit's, or less)"
    )
    channels_last: bool = True

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


class FeaturizeConfig(PassConfig):
    """How featurization runs and what it stores."""

    out: str = Field("runs/features", description="root under which feature sets are cached")
    dtype: Literal["float16", "float32"] = "float16"
    views: int = Field(
        0, ge=0, description="augmented views per image of augment.splits, beside the plain view 0"
    )
    augment: AugmentConfig = AugmentConfig()
    preprocess: Preprocess | None = Field(None, description="override the network's own")


class PredictConfig(PassConfig):
    """Where predictions go and how the stages run."""

    out: str = Field("runs/predictions", description="the predictions directory")
