"""Settings: the typed, validated configuration of every stage and job (pydantic only).

Owns: the stage sections (``ModelConfig``, ``DataConfig``, ``FeaturizeConfig``,
``PredictConfig``, ``TrainConfig``, ``SweepConfig``), the job configs that hold them, loading a
job config from YAML and ``key=value`` overrides, and the generated config reference.
May import: nothing of this project (the bottom layer). Stages take their own section, never a
job config, so a stage can be called from Python with exactly the settings it uses.

Example:

    >>> from pipeline.settings import FineTuneConfig, TrainConfig
    >>> TrainConfig(epochs=3, fine_tune=FineTuneConfig(lr=0.01)).fine_tune.lr
    0.01
"""

from pipeline.settings.base import MAX_IMAGE_PIXELS, ConfigError, Engine, Settings
from pipeline.settings.data import AugmentConfig, DataConfig, SourceConfig
from pipeline.settings.files import load_config
from pipeline.settings.jobs import (
    JOB_CONFIGS,
    DemoConfig,
    FeaturizeJobConfig,
    PredictJobConfig,
    TrainJobConfig,
    TuneJobConfig,
    labelled,
    storage_env,
)
from pipeline.settings.model import FineTuneConfig, LayerOverride, ModelConfig, Preprocess
from pipeline.settings.passes import FeaturizeConfig, PassConfig, PredictConfig
from pipeline.settings.reference import reference
from pipeline.settings.sweeps import (
    COMPARE_ROWS,
    AshaConfig,
    CompareConfig,
    SearchSpace,
    SweepConfig,
    Unfreeze,
)
from pipeline.settings.training import TrainConfig

__all__ = [
    "COMPARE_ROWS",
    "JOB_CONFIGS",
    "MAX_IMAGE_PIXELS",
    "AshaConfig",
    "AugmentConfig",
    "CompareConfig",
    "ConfigError",
    "DataConfig",
    "DemoConfig",
    "Engine",
    "FeaturizeConfig",
    "FeaturizeJobConfig",
    "FineTuneConfig",
    "LayerOverride",
    "ModelConfig",
    "PassConfig",
    "PredictConfig",
    "PredictJobConfig",
    "Preprocess",
    "SearchSpace",
    "Settings",
    "SourceConfig",
    "SweepConfig",
    "TrainConfig",
    "TrainJobConfig",
    "TuneJobConfig",
    "Unfreeze",
    "labelled",
    "storage_env",
    "load_config",
    "reference",
]
