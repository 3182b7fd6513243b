"""The job entrypoints stay thin, and a job's console is short while its log file is full."""

import subprocess
import sys
from pathlib import Path

import pytest
import ray

from conftest import REPO
from pipeline.shapes import generate_shapes

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
