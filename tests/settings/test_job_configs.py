"""The example configs parse and validate; overrides, defaults and the generated reference."""

from pathlib import Path

import pytest

from conftest import REPO
from jobs.reference import spliced
from pipeline.settings import (
    ConfigError,
    DemoConfig,
    FeaturizeJobConfig,
    PredictJobConfig,
    TrainJobConfig,
    TuneJobConfig,
    load_config,
    reference,
)

CONFIGS = sorted((REPO / "jobs" / "configs").glob("*.yaml"))
KINDS = {
    "featurize": FeaturizeJobConfig,
    "demo": DemoConfig,
    "train": TrainJobConfig,
    "predict": PredictJobConfig,
    "tune": TuneJobConfig,
    "own": TrainJobConfig,  # own_data.yaml: the template for one's own images
}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_configs_validate(path: Path):
    kind = TuneJobConfig if path.stem.endswith("_tune") else KINDS[path.stem.split("_")[0]]
    cfg = load_config(kind, str(path), [])
    assert isinstance(cfg, kind)


def test_overrides_reach_nested_fields_and_typos_are_refused():
    cfg = load_config(
        FeaturizeJobConfig,
        str(REPO / "jobs/configs/featurize_flowers.yaml"),
        ["featurize.dtype=float32", "cuts=[flatten]"],
    )
    assert cfg.featurize.dtype == "float32" and cfg.cuts == ["flatten"]
    with pytest.raises(ValueError, match="dtyp"):
        load_config(
            FeaturizeJobConfig,
            str(REPO / "jobs/configs/featurize_flowers.yaml"),
            ["featurize.dtyp=float32"],
        )


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["train.epoch=5"], "train.epoch: unknown key; did you mean train.epochs"),
        (["epochs=5"], "epochs: unknown key; did you mean train.epochs?"),
        (["data.sources=[{uri: x, spilt: val}]"], "data.sources[0].spilt: unknown key; did you "),
        (["train.epochs=many"], "train.epochs: Input should be a valid integer"),
        (["train.epochs"], "train.epochs: an override must look like key=value"),
    ],
)
def test_config_mistakes_are_one_line_naming_the_field(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(TrainJobConfig, str(REPO / "jobs/configs/own_data.yaml"), overrides)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_missing_config_file_is_shown_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=f"--config: {tmp_path / 'nope.yaml'} does not exist"):
        load_config(TrainJobConfig, "nope.yaml", [])


def test_partial_sections_keep_their_configured_defaults():
    cfg = load_config(DemoConfig, None, ["train.fine_tune.lr=0.5", "sweep.space.lr=0.01"])
    assert cfg.train.fine_tune.lr == 0.5 and cfg.train.fine_tune.optimizer == "adamw"
    assert cfg.train.patience == DemoConfig().train.patience
    demo = DemoConfig().sweep
    assert cfg.sweep.space.lr == 0.01 and cfg.sweep.space.unfreeze == demo.space.unfreeze
    assert cfg.sweep.num_samples == demo.num_samples == 1
    tune = load_config(
        TuneJobConfig, str(REPO / "jobs/configs/tune_tiny.yaml"), ["sweep.compare.frozen.lr=0.5"]
    )
    frozen = tune.sweep.compare.frozen
    assert frozen.lr == 0.5 and frozen.weight_decay == 0.01
    assert tune.sweep.compare.epochs == 5  # from the YAML file


def test_the_docs_config_reference_is_generated_and_current():
    text = (REPO / "docs" / "reference" / "config.md").read_text()
    fix = "run: python -m jobs.reference --write docs/reference/config.md"
    assert spliced(text, reference()) == text, fix
    for name in ("DemoConfig", "TuneJobConfig", "SearchSpace", "FineTuneConfig", "Preprocess"):
        assert f"### {name}\n" in text
