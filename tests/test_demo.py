import pytest

from jobs import demo
from pipeline.config import DemoConfig, load_config
from pipeline.surgery import load


@pytest.mark.slow
def test_demo_job_runs_end_to_end(tmp_path, capsys):
    demo.main([f"out={tmp_path}", "images_per_class=6", "epochs=3", "image_size=48"])
    printed = capsys.readouterr().out
    assert "30 images (0 skipped), 5 classes" in printed
    net = load(str(tmp_path / "model"))
    assert net.outputs() == ["_fc"] and net.get_submodule("_fc").out_features == 5
    assert net.frontier() == ["_bn1"]


def test_demo_skips_unreadable_images(tmp_path):
    from pipeline import sources
    from pipeline.demo import run_demo

    sources.generate_shapes(tmp_path / "data", per_class=3, size=32)
    (tmp_path / "data" / "circle" / "broken.png").write_bytes(b"not an image")
    summary = run_demo(DemoConfig(data=tmp_path / "data", out=tmp_path / "run", epochs=1,
                                  model="tiny:cnn", cut="features", head="fc2"))
    assert summary["images"] == 15 and summary["skipped"] == 1


def test_overrides_are_validated(tmp_path):
    cfg = load_config(DemoConfig, None, ["epochs=3", "fine_tune.lr=0.5"])
    assert cfg.epochs == 3 and cfg.fine_tune.lr == 0.5
    with pytest.raises(ValueError, match="key=value"):
        load_config(DemoConfig, None, ["epochs"])
    with pytest.raises(ValueError, match="epoch"):
        load_config(DemoConfig, None, ["epoch=3"])
