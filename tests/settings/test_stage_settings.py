"""Stage settings validate at the edge and say what would be right."""

import pytest

from pipeline.settings import (
    CompareConfig,
    FeaturizeConfig,
    ModelConfig,
    SearchSpace,
    SweepConfig,
    Unfreeze,
)


def test_search_space_is_validated():
    space = SearchSpace(lr={"loguniform": [1e-4, 1e-2]}, unfreeze=[0, "top:2"], width=[0, 64])
    assert space.choices("unfreeze") == [0, "top:2"]
    with pytest.raises(ValueError, match="loguniform"):
        SearchSpace(lr={"logunifrom": [1e-4, 1e-2]})
    with pytest.raises(ValueError, match="low, high"):
        SearchSpace(lr={"uniform": [1e-4]})
    with pytest.raises(ValueError, match="nothing to choose"):
        SearchSpace(width=[])
    with pytest.raises(ValueError, match="must be a value or a list"):
        SearchSpace(epochs={"randint": [1, 5]}).choices("epochs")


def test_unfreeze_values_parse_once_into_one_meaning():
    assert Unfreeze.parse(2) == Unfreeze.parse("top:2") == Unfreeze.parse("2") == Unfreeze(top=2)
    assert Unfreeze.parse("all").everything and Unfreeze.parse("all").key == "all"
    assert Unfreeze.parse("features.10") == Unfreeze(through="features.10")
    assert [d.key for d in SearchSpace(unfreeze={"grid": [0, "top:2", "layer3"]}).depths()] == [
        "0",
        "2",
        "layer3",
    ]
    with pytest.raises(ValueError, match="top:N takes a block count"):
        Unfreeze.parse("top:two")


def test_the_compare_rows_map_to_depths_in_one_place():
    compare = CompareConfig(unfreeze="top:3")
    assert [compare.depth(r).key for r in ("scratch", "frozen", "fine-tuned")] == ["all", "0", "3"]
    assert compare.fine_tune("frozen") == compare.frozen
    assert [d.key for d in SweepConfig(preset="compare", compare=compare).depths()] == [
        "all",
        "0",
        "3",
    ]


def test_stage_settings_refuse_fusing_decode_into_the_model():
    with pytest.raises(ValueError, match="make them differ"):
        FeaturizeConfig(decode_cpus=0.5, actor_cpus=0.5)
    FeaturizeConfig(decode_cpus=0.5, actor_cpus=0.5, actor_gpus=1)


def test_unknown_keys_are_refused():
    with pytest.raises(ValueError, match="hiden"):
        ModelConfig(hiden=[3])
    assert ModelConfig(cut=["a", "b"]).cuts() == ["a", "b"]
    assert ModelConfig().cuts() is None  # below the head
