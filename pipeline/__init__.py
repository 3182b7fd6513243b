"""ray-transfer: Deeplearning4j's transfer-learning API on PyTorch and Ray.

The public surface, importable from here (``from pipeline import TransferLearning``), listed
once in ``EXPORTS``: each name is imported from its module on first use, so importing one of
them does not import Ray Train and Ray Tune too.

The packages are the layers, each importing only those below it (``lint-imports`` checks)::

    flows      job config in, the stages called in order; preflight checks; the demo
    tune       sweeps on Ray Tune
    train      fits on Ray Train; evaluation      inference  batch prediction
    features   featurizing: plans, feature sets made in one Ray Data pass
    engine     what runs frozen layers (ONNX Runtime, torch), the model actors, the Ray Data pass
    data       sources, shards, decoding, the feature-set format    net   the traced network
    runs       run directories, logs, reports
    settings   pydantic settings of every stage and job

Example:

    >>> from pipeline import TransferLearning
    >>> TransferLearning("tiny:cnn").set_feature_extractor("pool").build().frontier()
    ['pool']
"""

from __future__ import annotations

import importlib

EXPORTS = {
    # the network: surgery, saving, the zoo
    "TransferLearning": "pipeline.net.builder",
    "TransferNet": "pipeline.net.graph",
    "SavedNet": "pipeline.net.saved",
    "SurgeryError": "pipeline.net.errors",
    "load": "pipeline.net.saving",
    "load_model": "pipeline.net.zoo",
    "register_model": "pipeline.net.zoo",
    "register_layer": "pipeline.net.layers",
    "build_network": "pipeline.net.heads",
    # settings
    "AugmentConfig": "pipeline.settings",
    "DataConfig": "pipeline.settings",
    "FeaturizeConfig": "pipeline.settings",
    "FineTuneConfig": "pipeline.settings",
    "ModelConfig": "pipeline.settings",
    "PredictConfig": "pipeline.settings",
    "Preprocess": "pipeline.settings",
    "SearchSpace": "pipeline.settings",
    "SweepConfig": "pipeline.settings",
    "TrainConfig": "pipeline.settings",
    "DemoConfig": "pipeline.settings",
    "FeaturizeJobConfig": "pipeline.settings",
    "PredictJobConfig": "pipeline.settings",
    "TrainJobConfig": "pipeline.settings",
    "TuneJobConfig": "pipeline.settings",
    "load_config": "pipeline.settings",
    # data
    "plan_data": "pipeline.data.listing",
    "DataPlan": "pipeline.data.plan",
    "generate_shapes": "pipeline.data.shapes",
    "generate_shards": "pipeline.data.shapes",
    "FeatureSet": "pipeline.data.featureset",
    # stages
    "featurize": "pipeline.features.run",
    "fit": "pipeline.train.fit",
    "fit_featurized": "pipeline.train.fit",
    "fit_local": "pipeline.train.loop",
    "evaluate": "pipeline.train.evaluate",
    "Evaluation": "pipeline.train.metrics",
    "predict": "pipeline.inference.batch",
    "read_predictions": "pipeline.inference.batch",
    "output_from_featurized": "pipeline.inference.batch",
    # flows
    "run_featurize": "pipeline.flows.run",
    "run_train": "pipeline.flows.run",
    "run_predict": "pipeline.flows.run",
    "run_sweep": "pipeline.flows.run",
    "run_demo": "pipeline.flows.demo",
}
# exported under another name than the one its module defines
ALIASES = {"register_model": "register"}

__all__ = sorted(EXPORTS)


def __getattr__(name: str):
    if name not in EXPORTS:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    # importlib, not import statements: the heavy stage modules load only when used
    value = getattr(importlib.import_module(EXPORTS[name]), ALIASES.get(name, name))
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(EXPORTS))
