"""The cluster configs validate: the launcher YAML against the JSON schema Ray ships for it, the
KubeRay RayJob manifest for its required fields and an entrypoint that exists here."""

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jsonschema
import psutil
import pytest
import ray
import yaml

from conftest import REPO
from pipeline.data.featureset import FeatureSet
from pipeline.data.shapes import generate_shapes
from pipeline.settings import FeaturizeJobConfig, load_config

CLUSTER = REPO / "cluster"


def test_launcher_config_matches_rays_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((CLUSTER / "launcher-aws.yaml").read_text())
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"].get("GPU", 0) == 0
    assert any(t["resources"].get("GPU", 0) >= 1 for t in types.values())
    # the project is installed on every node, and the job API stays on the head's loopback
    assert any("pip install" in c and "/ray-transfer" in c for c in config["setup_commands"])
    assert all(
        "--dashboard-host=127.0.0.1" in c
        for c in config["head_start_ray_commands"]
        if "ray start" in c
    )


def test_rayjob_manifest_names_a_real_entrypoint():
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"]
    gpus = [
        g
        for g in cluster["workerGroupSpecs"]
        for c in g["template"]["spec"]["containers"]
        if "nvidia.com/gpu" in c["resources"]["limits"]
    ]
    assert gpus
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    python, flag, module, option, config, *overrides = shlex.split(spec["entrypoint"])
    assert (python, flag, option) == ("python", "-m", "--config")
    assert (REPO / (module.replace(".", "/") + ".py")).is_file()
    local = REPO / config.removeprefix("/app/")
    # the config exists and, with the manifest's overrides, validates as the job's config
    cfg = load_config(FeaturizeJobConfig, str(local), overrides)
    assert str(cfg.data.sources[0].uri).startswith("s3://")


# ---------------------------------------------------------------------------- ray job submit


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ray_job_submit_runs_featurize_on_a_loopback_cluster(ray_local, tmp_path):
    """cluster/local.sh: `ray start --head` on 127.0.0.1 with token auth, `ray job submit
    --working-dir .` of the featurize job, succeeded, its feature set complete; `stop` ends only
    that cluster (this session's own Ray keeps running)."""
    generate_shapes(tmp_path / "data", per_class=4, size=32)
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's socket paths must stay short
    gcs, dashboard, client, agent = _free_ports(4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        STATE=str(tmp_path / "state"),
        RAY_TMP=ray_tmp,
        NUM_CPUS="2",
        RAY_PORT=str(gcs),
        DASHBOARD_PORT=str(dashboard),
        CLIENT_PORT=str(client),
        AGENT_PORT=str(agent),
        RAY_DATA_DISABLE_PROGRESS_BARS="1",
        PATH=f"{Path(sys.executable).parent}:{env['PATH']}",
    )
    script = [str(CLUSTER / "local.sh")]

    def run(*args, timeout=240):
        return subprocess.run(
            script + list(args), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )

    try:
        started = run("start")
        assert started.returncode == 0, started.stdout + started.stderr
        pid = int((tmp_path / "state" / "ray.pid").read_text())
        token = tmp_path / "state" / "auth_token"
        assert token.stat().st_mode & 0o077 == 0  # only its owner reads the token
        # the job API answers on loopback only, and refuses a client without the token
        with pytest.raises(OSError):
            socket.create_connection((_outward_ip(), dashboard), timeout=2).close()
        anonymous = subprocess.run(
            ["ray", "job", "list", "--address", f"http://127.0.0.1:{dashboard}"],
            env={**env, "RAY_AUTH_MODE": "disabled"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert anonymous.returncode != 0

        out = tmp_path / "features"  # absolute: the job runs in a temporary copy of the tree
        job = run(
            "submit",
            "featurize",
            "--config",
            "jobs/configs/featurize_tiny.yaml",
            f"data.sources=[{tmp_path / 'data'}]",
            f"featurize.out={out}",
            timeout=420,
        )
        log = job.stdout + job.stderr
        assert job.returncode == 0 and re.search(r"Job 'raysubmit_\w+' succeeded", log), log[-3000:]
        assert "featurize: 20 images, 0 errors" in log
        (feature_set,) = FeatureSet.under(str(out))
        assert feature_set.count() == 20
        _plain_submit_keeps_relative_paths(tmp_path, dashboard, env)
        status = run("status")
        assert re.search(r"raysubmit_\w+\s+SUCCEEDED\s+python -m jobs.featurize", status.stdout)
    finally:
        began = time.monotonic()
        stopped = run("stop", timeout=120)
        took = time.monotonic() - began
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert stopped.returncode == 0 and stopped.stdout.splitlines()[-1] == "stopped"
    assert f"stopping the node started by pid {pid}" in stopped.stdout
    assert took < 15, f"stop took {took:.0f} s"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    leftovers = [
        p.info["pid"]
        for p in psutil.process_iter(["pid", "cmdline"])
        if any(ray_tmp in part for part in (p.info["cmdline"] or []))
    ]
    assert not leftovers, f"processes of the stopped cluster still run: {leftovers}"
    assert ray_local.get(ray_local.remote(lambda: 1).remote()) == 1  # ours was left alone


def _plain_submit_keeps_relative_paths(tmp_path: Path, dashboard: int, env: dict) -> None:
    """``ray job submit --working-dir .`` itself, relative paths in its arguments: the job
    finds the checkout the project is installed from (its content is what was uploaded) and
    reads and writes there, not in Ray's temporary copy."""
    from pipeline.runs.storage import editable_origin

    if editable_origin() != REPO:
        return  # installed from another checkout: what was uploaded is not it
    rel = Path("runs") / f"submit-test-{tmp_path.name}"
    token = f"{env['STATE']}/auth_token"
    try:
        generate_shapes(REPO / rel / "data", per_class=2, size=32)
        done = subprocess.run(
            ["ray", "job", "submit", "--address", f"http://127.0.0.1:{dashboard}"]
            + ["--working-dir", ".", "--", "python", "-m", "jobs.featurize"]
            + ["--config", "jobs/configs/featurize_tiny.yaml", f"data.sources=[{rel / 'data'}]"]
            + [f"featurize.out={rel / 'features'}"],
            cwd=REPO,
            env={
                **env,
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": token,
            },
            capture_output=True,
            text=True,
            timeout=420,
        )
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        (feature_set,) = FeatureSet.under(str(REPO / rel / "features"))
        assert feature_set.count() == 10
    finally:
        shutil.rmtree(REPO / rel, ignore_errors=True)


def _outward_ip() -> str:
    """This machine's address on its default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            return s.getsockname()[0]
        except OSError:
            pytest.skip("no network interface besides loopback")
