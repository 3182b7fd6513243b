"""The cluster configs validate: the launcher YAML against the JSON schema Ray ships for it, the
KubeRay RayJob manifest for its required fields and an entrypoint that exists here."""

import json
import shlex
from pathlib import Path

import jsonschema
import ray
import yaml
from conftest import REPO

from pipeline.config import FeaturizeJobConfig, load_config

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
    assert all("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"]
               if "ray start" in c)


def test_rayjob_manifest_names_a_real_entrypoint():
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    cluster = spec["rayClusterSpec"]
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"]
    gpus = [g for g in cluster["workerGroupSpecs"]
            for c in g["template"]["spec"]["containers"]
            if "nvidia.com/gpu" in c["resources"]["limits"]]
    assert gpus
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    python, flag, module, option, config, *overrides = shlex.split(spec["entrypoint"])
    assert (python, flag, option) == ("python", "-m", "--config")
    assert (REPO / (module.replace(".", "/") + ".py")).is_file()
    local = REPO / config.removeprefix("/app/")
    # the config exists and, with the manifest's overrides, validates as the job's config
    cfg = load_config(FeaturizeJobConfig, str(local), overrides)
    assert str(cfg.data.sources[0].uri).startswith("s3://")
