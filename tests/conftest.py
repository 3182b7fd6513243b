import os

# Before Ray is imported anywhere: no auth prompt on loopback, no telemetry, quiet progress.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

import io  # noqa: E402
import socket  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.settings import Preprocess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The suite's S3-protocol server (moto's, started by the `s3` fixture in this process), reached
# the standard way: the AWS variables, set before Ray starts so its workers inherit them. Never
# a real account: these replace whatever the environment had.
S3_ENDPOINT = f"http://127.0.0.1:{free_port()}"
os.environ.update(
    AWS_ENDPOINT_URL=S3_ENDPOINT,
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_DEFAULT_REGION="us-east-1",
)
for _name in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
    os.environ.pop(_name, None)

# Real data and weights beside the checkout; tests that read them skip when they are absent.
SHARED = Path(os.environ.get("SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet.pth"
REPO = Path(__file__).resolve().parents[1]
TINY = Preprocess(resize_size=36, crop_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def needs_shared(*paths: Path):
    missing = [str(p) for p in paths if not p.exists()]
    return pytest.mark.skipif(bool(missing), reason=f"shared data absent: {missing}")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------------------- Ray


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


# ---------------------------------------------------------------------------- object storage


@pytest.fixture(scope="session")
def _s3_server():
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise

    port = int(S3_ENDPOINT.rsplit(":", 1)[1])
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield
    server.stop()


@pytest.fixture
def s3(_s3_server, request) -> str:
    """A fresh bucket on the suite's S3 server, as ``s3://<bucket>``."""
    import s3fs

    readable = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())
    bucket = f"{readable[:40].strip('-')}-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem().mkdir(bucket)
    return f"s3://{bucket}"


# ---------------------------------------------------------------------------- helpers


def plan_rows(plan, classes=None) -> dict[str, list]:
    """Every image a plan reads, as columns (id, source, label, split) sorted by source: the
    per-image table the driver never builds, read here to check what the units hold."""
    from pipeline.data.rows import member_rows

    rows = sorted(member_rows(plan, plan.units, classes), key=lambda r: r[1])
    labels = [None if r[2] < 0 else r[2] for r in rows]
    return {
        "id": [r[0] for r in rows],
        "source": [r[1] for r in rows],
        "label": labels,
        "split": [r[3] for r in rows],
    }


def write_tars(folder, out, per_shard: int, label: str = "name", prefix: str = "train") -> list:
    """The images of a folder-per-class dataset as WebDataset tars of ``per_shard`` samples,
    ``<prefix>-00000.tar``...: ``<key>.png`` beside ``<key>.cls`` holding the class name
    (``label="name"``) or its sorted index (``"index"``), or ``<key>.json`` (``"json"``).
    Returns the tars' paths."""
    import json
    import tarfile

    files = sorted(Path(folder).rglob("*.png"))
    classes = sorted({f.parent.name for f in files})
    Path(out).mkdir(parents=True, exist_ok=True)
    tars = []
    for n, start in enumerate(range(0, len(files), per_shard)):
        tars.append(Path(out) / f"{prefix}-{n:05d}.tar")
        with tarfile.open(tars[-1], "w") as tar:
            for f in files[start : start + per_shard]:
                key = f"{f.parent.name}_{f.stem}"
                tar.add(f, arcname=f"{key}.png")
                name = f.parent.name
                meta = {
                    "name": ("cls", name.encode()),
                    "index": ("cls", str(classes.index(name)).encode()),
                    "json": ("json", json.dumps({"label": name}).encode()),
                }[label]
                info = tarfile.TarInfo(f"{key}.{meta[0]}")
                info.size = len(meta[1])
                tar.addfile(info, io.BytesIO(meta[1]))
    return tars


def frozen_tensors(net) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items() if k in net.frozen_parameter_names()}


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def standardized(images: torch.Tensor, p: Preprocess) -> torch.Tensor:
    """uint8 crops as the network's input (what the engines compute on the device)."""
    mean, std = torch.tensor(p.mean).view(1, 3, 1, 1), torch.tensor(p.std).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def network_input(sources, preprocess: Preprocess) -> torch.Tensor:
    """Image files as the network's float input, decoded as every pass decodes them."""
    from pipeline.data.decode import load_crop

    crops = torch.stack([torch.from_numpy(load_crop(str(s), preprocess)) for s in sources])
    return standardized(crops, preprocess)


def add_bad_files(root):
    """One of each kind of bad input, beside good images of the same class (same block)."""
    good = next((root / "circle").glob("*.png"))
    buffer = io.BytesIO()
    Image.open(good).convert("RGB").save(buffer, "JPEG")
    (root / "circle" / "empty.png").write_bytes(b"")
    (root / "circle" / "notes.txt").write_text("not an image")
    (root / "circle" / "truncated.jpg").write_bytes(buffer.getvalue()[:300])
    png = good.read_bytes()
    (root / "circle" / "garbage.png").write_bytes(png[:60] + bytes(len(png) - 60))  # zeroed data
    Image.new("RGB", (90, 90), "red").save(root / "circle" / "bomb.png")  # > max_image_pixels
    return {
        "empty.png": "empty file",
        "notes.txt": "not an image",
        "truncated.jpg": "truncated or corrupt",
        "garbage.png": "truncated or corrupt",
        "bomb.png": "decompression bomb",
    }


def make_tiny_net(cut="pool", seed=3, classes=5):
    """tiny:cnn frozen through ``cut``, its head resized to ``classes`` (seeded)."""
    from pipeline.net.builder import TransferLearning

    torch.manual_seed(seed)
    return (
        TransferLearning("tiny:cnn", seed=seed)
        .set_feature_extractor(cut)
        .n_out_replace("fc2", classes)
        .build()
    )


@pytest.fixture(scope="session")
def tiny_net():
    return make_tiny_net


@pytest.fixture(scope="session")
def tiny_features(_ray_session, tmp_path_factory):
    """Generated shapes (plus one corrupt file) featurized in float32 at two cuts, once per
    session: the data of the training, evaluation and loop tests."""
    from pipeline.data.listing import plan_data
    from pipeline.data.shapes import generate_shapes
    from pipeline.features.run import featurize
    from pipeline.settings import DataConfig, FeaturizeConfig

    start_ray()
    root = tmp_path_factory.mktemp("tiny")
    generate_shapes(root / "data", per_class=12, size=32)
    (root / "data" / "circle" / "broken.png").write_bytes(b"\x89PNG not really")
    items = plan_data(DataConfig(sources=[str(root / "data")]))
    cfg = FeaturizeConfig(out=str(root / "features"), batch_size=16, dtype="float32")
    sets = featurize(make_tiny_net(), items, cfg, cuts=["pool", "features.0"]).feature_sets
    return {"root": root / "data", "items": items, "pool": sets[0], "features.0": sets[1]}


# ---------------------------------------------------------------------------- shared data


@pytest.fixture(scope="session")
def flowers_features(_ray_session, tmp_path_factory):
    """flowers128 featurized once per session at mobilenet_v2's penultimate layer (80/20 split),
    through the example job config; tests that need real features share it. The same pass also
    writes the features.16 set that the fine-tuning step reads (a cache hit there)."""
    from pipeline.flows.run import run_featurize
    from pipeline.settings import FeaturizeJobConfig, load_config

    start_ray()
    cfg = load_config(
        FeaturizeJobConfig,
        str(REPO / "jobs/configs/featurize_flowers.yaml"),
        [
            f"featurize.out={tmp_path_factory.mktemp('flowers')}",
            "cuts=[flatten, features.16]",
            f"data.sources=[{SHARED / 'data' / 'flowers128'}]",
            f"model.weights={MOBILENET_WEIGHTS}",
        ],
    )
    return run_featurize(cfg).feature_sets[0]


@pytest.fixture(scope="session")
def hymenoptera_features(_ray_session, tmp_path_factory):
    """hymenoptera (its own train/val folders) featurized once per session at mobilenet_v2's
    penultimate layer through the example config; jobs.train on the same data is a cache hit."""
    from pipeline.flows.run import run_featurize
    from pipeline.settings import FeaturizeJobConfig, load_config

    start_ray()
    root = SHARED / "data" / "hymenoptera"
    cfg = load_config(
        FeaturizeJobConfig,
        str(REPO / "jobs/configs/featurize_hymenoptera.yaml"),
        [
            f"featurize.out={tmp_path_factory.mktemp('hymenoptera')}",
            f"model.weights={MOBILENET_WEIGHTS}",
            (f"data.sources=[{{uri: {root}/train, split: train}},{{uri: {root}/val, split: val}}]"),
        ],
    )
    return run_featurize(cfg)
