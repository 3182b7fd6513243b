"""The job entrypoints stay thin, and a job's console is short while its log file is full."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import torch

from conftest import REPO
from pipeline.data.shapes import generate_shapes
from pipeline.net.builder import TransferLearning

JOBS = sorted(p for p in (REPO / "jobs").glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("job", JOBS, ids=lambda p: p.name)
def test_entrypoints_are_thin(job: Path):
    assert len(job.read_text().splitlines()) <= 40


def test_a_job_prints_a_few_lines_and_logs_everything_to_its_output(ray_local, tmp_path):
    generate_shapes(tmp_path / "data", per_class=4, size=32)
    out = tmp_path / "features"
    command = [
        sys.executable,
        "-m",
        "jobs.featurize",
        "model.name=tiny:cnn",
        "cuts=[pool]",
        f"data.sources=[{tmp_path / 'data'}]",
        f"featurize.out={out}",
        f"ray_address={ray.get_runtime_context().gcs_address}",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
    console = (done.stdout + done.stderr).splitlines()
    assert done.returncode == 0, "\n".join(console)
    (log,) = (out / "logs").glob("featurize-*.log")
    assert console[0] == f"featurize: full log in {log}"
    assert console[-1].startswith("featurize: 20 images, 0 errors") and len(console) <= 4
    text = log.read_text()
    assert "Starting execution of Dataset" in text  # Ray Data's own lines, kept off the console
    verbose = subprocess.run(
        command + ["-v"], cwd=REPO, capture_output=True, text=True, timeout=240
    )
    assert verbose.returncode == 0 and "is complete; reusing it" in verbose.stderr  # debug


def _train_own_data(tmp_path, *overrides: str, env: dict | None = None):
    """``jobs.train`` with the shipped own_data.yaml on a few generated images in ``tmp_path``
    (its working directory), as a user runs it."""
    generate_shapes(tmp_path / "my_images", per_class=2, size=32)
    config = str(REPO / "jobs/configs/own_data.yaml")
    command = [sys.executable, "-m", "jobs.train", "--config", config, "data.sources=[my_images]"]
    return subprocess.run(
        [*command, *overrides], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "mistake,field",
    [
        ("train.epoch=5", "train.epoch"),
        ("model.cut=features.19", "model.cut"),
        ("model.head=fc", "model.head"),
        ("data.sources=[nowhere]", "data.sources[0]"),
        ("model.weights=IMAGENET1K_V3", "model.weights"),
    ],
)
def test_a_mistake_exits_2_in_one_line_before_ray_starts(tmp_path, mistake, field):
    # an address nothing listens on: a job that got as far as ray.init would fail there instead
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9"}
    done = _train_own_data(tmp_path, "model.name=torchvision:mobilenet_v2", mistake, env=env)
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and done.stderr.startswith(f"error: {field}: ")
    assert done.stderr.count("\n") == 1
    assert "did you mean" in done.stderr or "does not exist" in done.stderr
    assert not (tmp_path / "runs").exists()  # no log file: nothing started


@pytest.mark.slow
def test_weights_of_another_architecture_name_the_one_they_fit_and_exit_2(tmp_path):
    from pipeline.net.tiny import TinyCNN

    torch.save(TinyCNN().state_dict(), tmp_path / "cnn.pth")
    done = _train_own_data(tmp_path, "model.name=tiny:resnet", "model.weights=cnn.pth")
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        "error: model.name: weights 'cnn.pth' do not fit tiny:resnet; they fit tiny:cnn: "
        "set model.name=tiny:cnn\n"
    )


def test_inspect_lists_nodes_shapes_and_the_frontier_of_a_cut(capsys):
    from jobs import inspect

    for model, cut in [
        ("torchvision:mobilenet_v2", "features.16"),
        ("torchvision:resnet18", "layer3"),
        ("default", "_blocks.10"),
    ]:
        inspect.main(["--model", model, "--cut", cut, "--json"])
        printed = json.loads(capsys.readouterr().out)
        net = TransferLearning(model).set_feature_extractor(cut).build()
        assert [r["name"] for r in printed["rows"]] == net.nodes()
        assert all(r["shape"] for r in printed["rows"])
        assert list(printed["frontier"]) == net.frontier()
        assert printed["blocks"] == net.blocks()
        inspect.main(["--model", model, "--cut", cut])
        text = capsys.readouterr().out
        assert all(f"\n{name} " in text for name in net.nodes()[1:])
        assert f"frontier (what a feature set stores): {net.frontier()[0]} " in text


def test_inspect_refuses_an_unknown_node_in_one_line():
    done = subprocess.run(
        [sys.executable, "-m", "jobs.inspect", "--model", "tiny:cnn", "--cut", "fc9"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: no node named 'fc9'; did you mean 'fc2', 'fc1'?")
    assert done.stderr.count("\n") == 1
