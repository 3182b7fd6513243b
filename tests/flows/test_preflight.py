"""Config mistakes are refused before Ray starts, each in one line naming the field, the value
and the closest valid values."""

from pathlib import Path

import pytest

from conftest import REPO
from pipeline.data.shapes import generate_shapes
from pipeline.flows.preflight import check
from pipeline.settings import (
    ConfigError,
    PredictJobConfig,
    TrainJobConfig,
    TuneJobConfig,
    load_config,
)


@pytest.fixture
def images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    generate_shapes(tmp_path / "my_images", per_class=2, size=32)
    return "my_images"


def _train(*overrides: str) -> TrainJobConfig:
    return load_config(TrainJobConfig, str(REPO / "jobs/configs/own_data.yaml"), list(overrides))


def test_the_own_data_template_passes_with_only_its_sources_set(images):
    check(_train(f"data.sources=[{images}]"))


@pytest.mark.parametrize(
    "overrides,start",
    [
        (
            ["model.name=torchvision:mobilenet_v2", "model.cut=features.19"],
            "model.cut: no node 'features.19' in torchvision:mobilenet_v2; did you mean "
            "'features.9', 'features.1', 'features.18'? python -m jobs.inspect --model "
            "torchvision:mobilenet_v2 lists them all",
        ),
        (
            ["model.name=torchvision:mobilenet_v2", "model.head=fc"],
            "model.head: no node 'fc' in torchvision:mobilenet_v2; did you mean 'classifier.1'",
        ),
        (
            ["model.name=torchvision:resnet18", "model.head=classifer"],
            "model.head: no node 'classifer' in torchvision:resnet18; did you mean 'fc'",
        ),
        (
            ["model.name=torchvision:mobilenet_v2", "model.weights=IMAGENET1K_V3"],
            "model.weights: 'IMAGENET1K_V3' is neither a file nor a weights name of "
            "torchvision:mobilenet_v2; did you mean IMAGENET1K_V2 or IMAGENET1K_V1? its names: "
            "IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT",
        ),
        (["model.name=mobilenet_v2"], "model.name: unknown model 'mobilenet_v2'; did you mean "),
        (
            ["model.name=torchvision:mobilenetv2", "model.weights=IMAGENET1K_V1"],
            "model.name: unknown torchvision model 'mobilenetv2'; did you mean "
            "torchvision:mobilenet_v2",
        ),
        (["model.weights=weights/mine.pth"], "model.weights: weights file '"),
    ],
)
def test_each_mistake_names_its_field_and_the_closest_values(images, overrides, start):
    with pytest.raises(ConfigError) as e:
        check(_train(f"data.sources=[{images}]", *overrides))
    assert str(e.value).startswith(start), str(e.value)
    assert "\n" not in str(e.value) and len(str(e.value)) < 400


def test_a_missing_data_path_is_shown_resolved(images):
    with pytest.raises(ConfigError) as e:
        check(_train("data.sources=[my_imgs]"))
    assert str(e.value) == (
        f"data.sources[0]: {Path.cwd() / 'my_imgs'} does not exist "
        f"(relative paths resolve against {Path.cwd()})"
    )


def test_a_sweep_checks_named_unfreeze_depths(images):
    cfg = load_config(
        TuneJobConfig,
        str(REPO / "jobs/configs/tune_tiny.yaml"),
        [f"data.sources=[{images}]", "sweep.space.unfreeze=[0, fetures.1]"],
    )
    match = "sweep.space.unfreeze: no node 'fetures.1' in tiny:cnn"
    with pytest.raises(ConfigError, match=match):
        check(cfg)


def test_predict_needs_a_saved_network(images):
    cfg = PredictJobConfig(model="runs/train/latest/model", data={"sources": [images]})
    with pytest.raises(ConfigError, match="model: .*runs/train/latest/model is not a saved net"):
        check(cfg)


def test_a_glob_source_must_match_a_file(images):
    with pytest.raises(ConfigError, match=r"data.sources\[0\]: .*shards/\*.tar matches no file"):
        check(_train("data.sources=[shards/*.tar]"))
