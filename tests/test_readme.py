"""The README runs as written: its examples as doctests, and its own-images section followed
literally (commands, config and the pandas read copied out of the README) on generated images."""

import doctest
import io
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO
from pipeline.shapes import generate_shapes

README = (REPO / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end]


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_readme_examples_run_and_print_what_it_says(tmp_path, monkeypatch, ray_local):
    monkeypatch.chdir(tmp_path)  # the examples write under runs/
    test = doctest.DocTestParser().get_doctest(README, {}, "README.md", "README.md", 0)
    assert len(test.examples) > 20
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = io.StringIO()
    runner.run(test, out=report.write)
    assert runner.failures == 0, report.getvalue()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_own_images_section_works_as_written(tmp_path, ray_local):
    section = _section("Your own images")
    (config,) = _blocks(section, "yaml")
    assert config == (REPO / "jobs/configs/own_data.yaml").read_text()
    commands = [c for c in _blocks(section, "bash")[0].splitlines() if c.strip()]
    assert [c.split()[:3] for c in commands] == [
        [".venv/bin/python", "-m", "jobs.train"],
        [".venv/bin/python", "-m", "jobs.predict"],
    ]
    generate_shapes(tmp_path / "my_images", per_class=8, size=64)
    (tmp_path / "jobs").symlink_to(REPO / "jobs")  # so `jobs/configs/own_data.yaml` resolves
    # join this session's Ray as `ray job submit` would; the commands themselves are verbatim
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    lines = []
    for command in commands:
        argv = [sys.executable, *shlex.split(command)[1:]]
        done = subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        lines.append((done.stdout + done.stderr).strip().splitlines())
        assert done.returncode == 0, "\n".join(lines[-1])

    runs = tmp_path / "runs"
    latest = runs / "train" / "latest"
    assert latest.resolve().name.startswith("own_data-")
    report = latest / "report.html"
    assert report.is_file() and lines[0][-1].endswith(f"report {latest.resolve() / 'report.html'}")
    assert (latest / "model" / "spec.json").is_file()
    assert (latest / "model" / "model.safetensors").is_file()
    assert list((latest / "tensorboard").rglob("events.out.tfevents.*"))
    assert list((runs / "features").glob("*/_manifest.json"))
    assert list((runs / "train" / "logs").glob("train-*.log"))
    assert list((runs / "predictions" / "logs").glob("predict-*.log"))

    (read,) = _blocks(section, "python")
    names = {}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(read, names)
    finally:
        os.chdir(cwd)
    predictions = names["predictions"]
    assert len(predictions) == 5 * 8
    classes = {"circle", "cross", "square", "stripes", "triangle"}
    assert set(predictions["class"]) <= classes
    assert all(len(p) == 5 for p in predictions["probabilities"])
