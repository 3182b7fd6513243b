"""The docs run as written: every page's Python examples as doctests, and the own-images path
followed literally (its commands, config and pandas read copied out of the pages) on generated
images."""

import doctest
import io
import os
import re
import shlex
import subprocess
import sys

import pytest

from conftest import REPO
from pipeline.data.shapes import generate_shapes

PAGES = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
WITH_EXAMPLES = [p for p in PAGES if "```pycon" in p.read_text()]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_the_pages_with_examples_are_found():
    names = {p.name for p in WITH_EXAMPLES}
    assert {"README.md", "surgery.md", "featurize.md", "train.md"} <= names


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("page", WITH_EXAMPLES, ids=lambda p: str(p.relative_to(REPO)))
def test_a_pages_examples_run_and_print_what_it_says(page, tmp_path, monkeypatch, ray_local):
    monkeypatch.chdir(tmp_path)  # the examples write under runs/
    text = "\n".join(blocks(page.read_text(), "pycon"))
    test = doctest.DocTestParser().get_doctest(text, {}, page.name, str(page), 0)
    assert test.examples
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = io.StringIO()
    runner.run(test, out=report.write)
    assert runner.failures == 0, report.getvalue()


def _own_images_commands() -> list[str]:
    page = (REPO / "docs" / "own-images.md").read_text()
    commands = [c for c in blocks(page, "bash")[0].splitlines() if c.strip()]
    readme = blocks((REPO / "README.md").read_text(), "bash")[1]
    assert [c for c in readme.splitlines() if c.strip()] == commands  # one path, shown twice
    return commands


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_own_images_page_works_as_written(tmp_path, ray_local):
    page = (REPO / "docs" / "own-images.md").read_text()
    (config,) = blocks(page, "yaml")
    assert config == (REPO / "jobs/configs/own_data.yaml").read_text()
    commands = _own_images_commands()
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

    (read,) = blocks(page, "python")
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
