import os

# Before Ray is imported anywhere: no auth prompt on loopback, no telemetry, quiet progress.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

from pathlib import Path

import pytest
import torch

# Real data and weights beside the checkout; tests that read them skip when they are absent.
SHARED = Path(os.environ.get("SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet.pth"
REPO = Path(__file__).resolve().parents[1]


def needs_shared(*paths: Path):
    missing = [str(p) for p in paths if not p.exists()]
    return pytest.mark.skipif(bool(missing), reason=f"shared data absent: {missing}")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def start_ray():
    """The session's local Ray, started unless it is up (a multi-node test may have shut it
    down). ``address="local"`` so a cluster running on the machine is never joined by accident."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    return ray


@pytest.fixture(scope="session")
def _ray_session():
    import ray

    yield
    ray.shutdown()


@pytest.fixture
def ray_local(_ray_session):
    """The session's local Ray (see :func:`start_ray`)."""
    return start_ray()


@pytest.fixture(scope="session")
def flowers_features(_ray_session, tmp_path_factory):
    """flowers128 featurized once per session at mobilenet_v2's penultimate layer (80/20 split),
    through the example job config; tests that need real features share it. The same pass also
    writes the features.16 set that the fine-tuning step reads (a cache hit there)."""
    from pipeline.config import FeaturizeJobConfig, load_config
    from pipeline.featurize import featurize
    from pipeline.sources import list_items
    from pipeline.surgery import TransferLearning

    start_ray()
    cfg = load_config(FeaturizeJobConfig, str(REPO / "jobs/configs/featurize_flowers.yaml"),
                      [f"featurize.out={tmp_path_factory.mktemp('flowers')}",
                       "cuts=[flatten, features.16]",
                       f"data.sources=[{SHARED / 'data' / 'flowers128'}]",
                       f"model.weights={MOBILENET_WEIGHTS}"])
    net = TransferLearning(cfg.model.name, weights=cfg.model.weights).build()
    result = featurize(net, list_items(cfg.data), cfg.featurize, cuts=cfg.cuts)
    return result.feature_sets[0]


@pytest.fixture(scope="session")
def hymenoptera_features(_ray_session, tmp_path_factory):
    """hymenoptera (its own train/val folders) featurized once per session at mobilenet_v2's
    penultimate layer through the example config; jobs.train on the same data is a cache hit."""
    from pipeline.config import FeaturizeJobConfig, load_config
    from pipeline.featurize import featurize
    from pipeline.sources import list_items
    from pipeline.surgery import TransferLearning

    start_ray()
    root = SHARED / "data" / "hymenoptera"
    cfg = load_config(FeaturizeJobConfig, str(REPO / "jobs/configs/featurize_hymenoptera.yaml"),
                      [f"featurize.out={tmp_path_factory.mktemp('hymenoptera')}",
                       f"model.weights={MOBILENET_WEIGHTS}",
                       (f"data.sources=[{{uri: {root}/train, split: train}},"
                        f"{{uri: {root}/val, split: val}}]")])
    net = TransferLearning(cfg.model.name, weights=cfg.model.weights).build()
    return featurize(net, list_items(cfg.data), cfg.featurize, cuts=cfg.cuts, progress=None)
