import json

import pytest

from jobs._cli import config_from_args
from pipeline import sources
from pipeline.config import DemoConfig, load_config
from pipeline.demo import generated_data, run_demo
from pipeline.surgery import load


@pytest.mark.slow
def test_demo_on_the_packaged_default_shows_pretrained_beating_scratch(ray_local, tmp_path):
    # the demo's own flow on its own data, only fewer images and epochs than the defaults
    cfg = load_config(DemoConfig, None, [
        f"out={tmp_path}", "images_per_class=30", "train.epochs=6", "space.epochs=4",
        "space.lr=0.01", "compare.epochs=4"])
    result = run_demo(cfg, progress=None)

    assert result.fit.evaluation.accuracy > 0.5  # five classes: chance is 0.2
    assert len(result.sweep.table) == 2 and {r["unfreeze"] for r in result.sweep.table} == {
        "0", "2"}
    rows = {r["row"]: r for r in result.compare.compare}
    assert rows["frozen"]["val_accuracy"] > rows["scratch"]["val_accuracy"] + 0.2
    assert rows["frozen"]["test_accuracy"] > rows["scratch"]["test_accuracy"] + 0.2
    # the fit's feature set is the one the sweep and the comparison read: one per cut
    assert len(list((tmp_path / "features").iterdir())) == 2
    page = (tmp_path / "report.html").read_text()
    for linked in (result.fit.report, result.sweep.report, result.compare.report):
        assert linked.removeprefix(str(tmp_path) + "/") in page
    assert (tmp_path / "compare.png").stat().st_size > 0
    net = load(result.fit.model)
    assert net.spec["classes"] == list(sources.SHAPES) and net.spec["input_shape"] == [3, 96, 96]


def test_generated_data_is_written_once_per_setting(tmp_path):
    cfg = DemoConfig(out=tmp_path, images_per_class=2, image_size=32)
    root = generated_data(cfg)
    files = sorted(root.rglob("*.png"))
    stamps = [f.stat().st_mtime_ns for f in files]
    assert len(files) == 10 and json.loads((root / ".generated.json").read_text())["size"] == 32
    assert generated_data(cfg) == root  # unchanged settings: the files (and caches) are kept
    assert [f.stat().st_mtime_ns for f in files] == stamps
    generated_data(cfg.model_copy(update={"images_per_class": 3}))
    assert len(list(root.rglob("*.png"))) == 15


def test_cluttered_shapes_are_seeded_and_differ_from_plain(tmp_path):
    for name in ("a", "b"):
        sources.generate_shapes(tmp_path / name, per_class=2, size=48, seed=3, clutter=8)
    sources.generate_shapes(tmp_path / "plain", per_class=2, size=48, seed=3)
    for path in (tmp_path / "a").rglob("*.png"):
        relative = path.relative_to(tmp_path / "a")
        assert path.read_bytes() == (tmp_path / "b" / relative).read_bytes()
        assert path.read_bytes() != (tmp_path / "plain" / relative).read_bytes()


def test_demo_flags_and_overrides_are_validated(tmp_path):
    cfg = config_from_args("", DemoConfig, "", ["--data", str(tmp_path), "steps=[fit]",
                                                "train.epochs=3"], flags=("data",))
    assert cfg.data == tmp_path and cfg.steps == ["fit"] and cfg.train.epochs == 3
    with pytest.raises(ValueError, match="key=value"):
        load_config(DemoConfig, None, ["epochs"])
    with pytest.raises(ValueError, match="step"):
        load_config(DemoConfig, None, ["steps=[fit, predict]"])
