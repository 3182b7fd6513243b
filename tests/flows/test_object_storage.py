"""Data, feature sets and runs on an S3-protocol server (moto's, in this process; see the ``s3``
fixture): the jobs as a user runs them, reaching it through the AWS variables or the config's
``storage_options``."""

import os
import signal
import subprocess
import sys
import time

import pytest
import s3fs

from conftest import REPO, S3_ENDPOINT, write_tars
from pipeline.data.featureset import FeatureSet
from pipeline.data.schema import MANIFEST
from pipeline.data.shapes import generate_shapes
from pipeline.inference.batch import read_predictions
from pipeline.runs.storage import resolve_latest

PER_CLASS = 6
TINY = [
    "model.name=tiny:cnn",
    "model.image_size=32",
    "featurize.batch_size=8",
    "featurize.dtype=float32",
]


@pytest.fixture
def shards(s3, tmp_path):
    """30 generated images as WebDataset tars of 8, class names in ``.cls``, on the bucket."""
    generate_shapes(tmp_path / "images", per_class=PER_CLASS, size=32)
    write_tars(tmp_path / "images", tmp_path / "wds", per_shard=8, prefix="shard")
    s3fs.S3FileSystem().put(str(tmp_path / "wds") + "/", f"{s3}/data/", recursive=True)
    return f"{s3}/data"


def _job(name: str, *args, env=None, wait=True, timeout=300):
    command = [sys.executable, "-m", f"jobs.{name}", *args]
    job = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if not wait:
        return job
    output = job.communicate(timeout=timeout)[0]
    assert job.returncode == 0, output
    return output.splitlines()


def _ids(uri: str) -> list[str]:
    (fs,) = FeatureSet.under(uri)
    return fs.table().column("id").to_pylist()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_featurize_train_predict_and_latest_all_on_s3(shards, s3, ray_local):
    address = f"ray_address={ray_local.get_runtime_context().gcs_address}"
    train = [
        *TINY,
        f"data.sources=[{shards}]",
        f"featurize.out={s3}/features",
        f"train.storage={s3}/runs",
        "train.epochs=2",
        address,
    ]
    lines = _job("train", *train)
    assert lines[-2].startswith("fit: 2 epochs") and f"report {s3}/runs/" in lines[-1], lines
    (fs,) = FeatureSet.under(f"{s3}/features")
    assert fs.uri.startswith("s3://") and fs.manifest["rows"] == 5 * PER_CLASS
    assert fs.classes == ["circle", "cross", "square", "stripes", "triangle"]  # found in .cls
    model = resolve_latest(f"{s3}/runs/latest/model")
    assert model.startswith(f"{s3}/runs/") and s3fs.S3FileSystem().exists(f"{model}/spec.json")
    again = _job("train", *train)
    assert any("cache hit" in line for line in again), again  # the feature set is reused
    predicted = f"{s3}/predictions"
    _job(
        "predict",
        f"model={s3}/runs/latest/model",
        f"data.sources=[{shards}]",
        f"predict.out={predicted}",
        address,
    )
    table = read_predictions(predicted)
    assert table.num_rows == 5 * PER_CLASS == len(set(table.column("id").to_pylist()))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_sweep_keeps_its_trials_and_results_on_s3(shards, s3, ray_local):
    lines = _job(
        "tune",
        *TINY,
        f"data.sources=[{shards}]",
        "data.splits={train: 0.7, val: 0.3}",
        f"featurize.out={s3}/features",
        f"sweep.storage={s3}/tune",
        "sweep.space={unfreeze: [0], lr: {grid: [0.01, 0.1]}, epochs: 2, batch_size: 8}",
        "sweep.num_samples=1",
        "sweep.cpus_per_trial=0.5",
        "sweep.asha=null",
        f"ray_address={ray_local.get_runtime_context().gcs_address}",
    )
    assert "featurize: cache hit" not in "\n".join(lines)  # one featurize found the classes
    assert lines[-1].startswith(f"sweep: best model {s3}/tune/"), lines
    model = resolve_latest(f"{s3}/tune/latest/best/model")
    bucket = s3fs.S3FileSystem()
    sweep = model.removesuffix("/best/model")
    assert bucket.exists(f"{model}/spec.json") and bucket.exists(f"{sweep}/results.csv")
    trials = [p for p in bucket.ls(sweep) if p.rsplit("/", 1)[1].startswith("unfreeze-")]
    assert len(trials) == 2, bucket.ls(sweep)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_killed_featurize_of_s3_shards_reruns_to_every_member_once(s3, tmp_path, ray_local):
    generate_shapes(tmp_path / "images", per_class=60, size=64)
    write_tars(tmp_path / "images", tmp_path / "wds", per_shard=20)  # 15 shards
    bucket = s3fs.S3FileSystem()
    bucket.put(str(tmp_path / "wds") + "/", f"{s3}/data/", recursive=True)
    args = [
        "model.name=tiny:resnet",
        "model.image_size=64",
        f"data.sources=[{s3}/data]",
        f"featurize.out={s3}/features",
        "featurize.batch_size=4",
        "featurize.dtype=float32",
        f"ray_address={ray_local.get_runtime_context().gcs_address}",
    ]
    job = _job("featurize", *args, wait=False)
    deadline = time.time() + 180
    while time.time() < deadline and job.poll() is None:
        bucket.invalidate_cache()
        if bucket.glob(f"{s3}/features/*/_units/*.json"):
            break
        time.sleep(0.3)
    job.send_signal(signal.SIGKILL)
    job.wait()
    bucket.invalidate_cache()
    assert bucket.glob(f"{s3}/features/*/_units/*.json"), job.stdout.read()
    assert not bucket.glob(f"{s3}/features/*/{MANIFEST}"), (
        "the job finished before it could be killed; give it more images"
    )
    lines = _job("featurize", *args)
    assert (
        lines[-1].startswith("featurize: ")
        and " of 15 units computed now, 300 rows in all" in (lines[-1])
    )
    ids = _ids(f"{s3}/features")
    assert len(ids) == 300 == len(set(ids))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_storage_options_in_the_config_reach_the_job_and_its_workers(shards, s3, tmp_path):
    """No AWS variables in the job's environment: the config's storage_options are all it has,
    and it starts its own Ray, whose workers read the shards and write the parts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
    options = (
        f"storage_options={{endpoint_url: '{S3_ENDPOINT}', key: testing, secret: testing, "
        "region: us-east-1}"
    )
    args = [*TINY, f"data.sources=[{shards}]", f"featurize.out={s3}/features", "cuts=[pool]"]
    lines = _job("featurize", *args, options, "ray_address=local", env=env)
    assert lines[-1].startswith(f"featurize: {5 * PER_CLASS} images, 0 errors"), lines
    assert len(_ids(f"{s3}/features")) == 5 * PER_CLASS
