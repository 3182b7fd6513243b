"""The example configs parse and validate, and the job entrypoints stay thin."""

from pathlib import Path

import pytest
from conftest import REPO

from pipeline.config import (DemoConfig, FeaturizeJobConfig, PredictJobConfig, TrainJobConfig,
                             TuneJobConfig, load_config)

CONFIGS = sorted((REPO / "jobs" / "configs").glob("*.yaml"))
KINDS = {"featurize": FeaturizeJobConfig, "demo": DemoConfig, "train": TrainJobConfig,
         "predict": PredictJobConfig, "tune": TuneJobConfig}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_configs_validate(path: Path):
    kind = KINDS[path.stem.split("_")[0]]
    cfg = load_config(kind, str(path), [])
    assert isinstance(cfg, kind)


def test_overrides_reach_nested_fields_and_typos_are_refused():
    cfg = load_config(FeaturizeJobConfig, str(REPO / "jobs/configs/featurize_flowers.yaml"),
                      ["featurize.dtype=float32", "cuts=[flatten]"])
    assert cfg.featurize.dtype == "float32" and cfg.cuts == ["flatten"]
    with pytest.raises(ValueError, match="dtyp"):
        load_config(FeaturizeJobConfig, str(REPO / "jobs/configs/featurize_flowers.yaml"),
                    ["featurize.dtyp=float32"])


@pytest.mark.parametrize("job", sorted((REPO / "jobs").glob("*.py")), ids=lambda p: p.name)
def test_entrypoints_are_thin(job: Path):
    assert len(job.read_text().splitlines()) <= 60
