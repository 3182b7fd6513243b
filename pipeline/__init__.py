"""ray-transfer: Deeplearning4j's transfer-learning API on PyTorch and Ray.

The public surface, importable from here (``from pipeline import TransferLearning``). Names are
resolved on first use, so importing one of them does not import Ray Train and Ray Tune too.

Example:

    >>> from pipeline import TransferLearning
    >>> TransferLearning("tiny:cnn").set_feature_extractor("pool").build().frontier()
    ['pool']
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

_EXPORTS = {
    # surgery and the network
    "TransferLearning": "pipeline.surgery",
    "load": "pipeline.loading",
    "TransferNet": "pipeline.graph",
    "SurgeryError": "pipeline.graph",
    "load_model": "pipeline.zoo",
    "register_model": "pipeline.zoo",
    "register_layer": "pipeline.layers",
    "build_network": "pipeline.networks",
    # settings
    "AugmentConfig": "pipeline.settings",
    "DataConfig": "pipeline.settings",
    "FeaturizeConfig": "pipeline.settings",
    "FineTuneConfig": "pipeline.settings",
    "ModelConfig": "pipeline.settings",
    "NetworkConfig": "pipeline.settings",
    "PredictConfig": "pipeline.settings",
    "Preprocess": "pipeline.settings",
    "SearchSpace": "pipeline.sweep_settings",
    "SweepConfig": "pipeline.sweep_settings",
    "TrainConfig": "pipeline.settings",
    "DemoConfig": "pipeline.config",
    "FeaturizeJobConfig": "pipeline.config",
    "PredictJobConfig": "pipeline.config",
    "TrainJobConfig": "pipeline.config",
    "TuneJobConfig": "pipeline.config",
    "load_config": "pipeline.config",
    # data
    "list_items": "pipeline.sources",
    "Items": "pipeline.sources",
    "generate_shapes": "pipeline.shapes",
    "FeatureSet": "pipeline.featureset",
    # stages
    "featurize": "pipeline.featurize",
    "fit": "pipeline.train",
    "fit_featurized": "pipeline.train",
    "fit_local": "pipeline.loop",
    "evaluate": "pipeline.metrics",
    "Evaluation": "pipeline.metrics",
    "predict": "pipeline.predict",
    "read_predictions": "pipeline.predict",
    "output_from_featurized": "pipeline.predict",
    # flows
    "run_featurize": "pipeline.flows",
    "run_train": "pipeline.flows",
    "run_predict": "pipeline.flows",
    "run_sweep": "pipeline.flows",
    "run_demo": "pipeline.demo",
}
_RENAMED = {"register_model": "register"}

__all__ = sorted(_EXPORTS)


class _Surface(types.ModuleType):
    """The import system sets every submodule on its package once loaded, so importing
    ``pipeline.featurize`` or ``pipeline.predict`` would replace the exported functions of the
    same names with the modules (``from pipeline import featurize`` would give a module)."""

    def __setattr__(self, name: str, value) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return  # the module stays reachable in sys.modules and by ``from ... import``
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Surface


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    # importlib, not import statements: the heavy stage modules load only when used
    module = importlib.import_module(_EXPORTS[name])
    return getattr(module, _RENAMED.get(name, name))


if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ resolves the names
    from pipeline.config import (
        DemoConfig,
        FeaturizeJobConfig,
        PredictJobConfig,
        TrainJobConfig,
        TuneJobConfig,
        load_config,
    )
    from pipeline.demo import run_demo
    from pipeline.featureset import FeatureSet
    from pipeline.featurize import featurize
    from pipeline.flows import run_featurize, run_predict, run_sweep, run_train
    from pipeline.graph import SurgeryError, TransferNet
    from pipeline.layers import register_layer
    from pipeline.loading import load
    from pipeline.loop import fit_local
    from pipeline.metrics import Evaluation, evaluate
    from pipeline.networks import build_network
    from pipeline.predict import output_from_featurized, predict, read_predictions
    from pipeline.settings import (
        AugmentConfig,
        DataConfig,
        FeaturizeConfig,
        FineTuneConfig,
        ModelConfig,
        NetworkConfig,
        PredictConfig,
        Preprocess,
        TrainConfig,
    )
    from pipeline.shapes import generate_shapes
    from pipeline.sources import Items, list_items
    from pipeline.surgery import TransferLearning
    from pipeline.sweep_settings import SearchSpace, SweepConfig
    from pipeline.train import fit, fit_featurized
    from pipeline.zoo import load_model
    from pipeline.zoo import register as register_model
