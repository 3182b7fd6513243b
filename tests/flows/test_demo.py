"""The demo, as a newcomer runs it: its own flow on its own data, a short console, a full log."""

import json
import subprocess
import sys

import pytest
import ray

from conftest import REPO
from jobs._cli import parse
from pipeline.data.featureset import FeatureSet
from pipeline.data.shapes import SHAPES
from pipeline.flows.demo import generated_data
from pipeline.net.saving import load
from pipeline.settings import DemoConfig, load_config


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_command_shows_pretrained_beating_scratch_in_a_short_console(ray_local, tmp_path):
    # python -m jobs.demo with fewer images and epochs than the defaults, joined to this
    # session's Ray: the console is what a newcomer reads
    command = [
        sys.executable,
        "-m",
        "jobs.demo",
        f"out={tmp_path}",
        "images_per_class=30",
        "train.epochs=6",
        "sweep.space.epochs=4",
        "sweep.space.lr=0.01",
        "sweep.compare.epochs=4",
        f"ray_address={ray.get_runtime_context().gcs_address}",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=840)
    console = (done.stdout + done.stderr).splitlines()
    assert done.returncode == 0, "\n".join(console[-40:])
    assert len(console) < 40, "\n".join(console)
    assert console[-1].endswith(f"report: {tmp_path}/report.html")
    (log,) = (tmp_path / "logs").glob("demo-*.log")
    text = log.read_text()
    assert "epoch 1/6" in text and "Starting execution of Dataset" in text  # workers and Ray

    result = json.loads((tmp_path / "summary.json").read_text())
    assert result["fit"]["val_accuracy"] > 0.5  # five classes: chance is 0.2
    assert sorted(result["sweep"]["unfreeze"]) == ["0", "2"]
    rows = result["compare"]
    assert rows["frozen"]["val_accuracy"] > rows["scratch"]["val_accuracy"] + 0.2
    assert rows["frozen"]["test_accuracy"] > rows["scratch"]["test_accuracy"] + 0.2
    # the fit's feature set is the one the sweep and the comparison read: one per cut
    assert len(FeatureSet.under(str(tmp_path / "features"))) == 2
    page = (tmp_path / "report.html").read_text()
    for step in ("fit", "sweep", "compare"):
        assert result[step]["report"].removeprefix(str(tmp_path) + "/") in page
    assert (tmp_path / "compare.png").stat().st_size > 0
    net = load(result["fit"]["model"])
    assert net.spec["classes"] == list(SHAPES) and net.spec["input_shape"] == [3, 96, 96]


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


def test_demo_flags_and_overrides_are_validated(tmp_path):
    cfg, opts = parse(
        "",
        DemoConfig,
        "",
        ["--data", str(tmp_path), "steps=[fit]", "-v", "train.epochs=3", "--dashboard"],
        flags={"data": "data"},
    )
    assert cfg.data == tmp_path and cfg.steps == ["fit"] and cfg.train.epochs == 3
    assert opts.verbose and opts.dashboard
    with pytest.raises(ValueError, match="key=value"):
        load_config(DemoConfig, None, ["epochs"])
    with pytest.raises(ValueError, match="step"):
        load_config(DemoConfig, None, ["steps=[fit, predict]"])
