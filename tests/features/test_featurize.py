import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import (
    MOBILENET_WEIGHTS,
    REPO,
    SHARED,
    TINY,
    add_bad_files,
    needs_shared,
    network_input,
    plan_rows,
    standardized,
    start_ray,
)
from pipeline.data.decode import load_crop
from pipeline.data.featureset import FeatureSet
from pipeline.data.listing import plan_data
from pipeline.data.plan import item_id
from pipeline.data.schema import MANIFEST
from pipeline.data.shapes import SHAPES, generate_shapes
from pipeline.engine.actors import PrefixModel
from pipeline.engine.dataflow import prepare_engine
from pipeline.features.plan import plan
from pipeline.features.run import featurize
from pipeline.net.builder import TransferLearning
from pipeline.settings import DataConfig, FeaturizeConfig, Preprocess

CUTS = ["pool", "features.1"]


def _net():
    return TransferLearning("tiny:cnn", seed=3).set_feature_extractor("pool").build()


def _reference(net, cut, paths):
    """What the network computes for these images, in one process, float32."""
    variant = TransferLearning(net).set_feature_extractor(cut).build()
    images = network_input(paths, TINY)
    return variant.featurize(images)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, _ray_session):
    start_ray()
    root = tmp_path_factory.mktemp("featurize")
    generate_shapes(root / "data", per_class=8, size=32)
    bad = add_bad_files(root / "data")
    items = plan_data(DataConfig(sources=[str(root / "data")], max_image_pixels=64 * 64))
    cfg = FeaturizeConfig(out=str(root / "out"), batch_size=16, dtype="float32")
    result = featurize(_net(), items, cfg, cuts=CUTS)
    return dict(root=root, items=items, cfg=cfg, result=result, bad=bad)


# ---------------------------------------------------------------------------- stages, no Ray


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
def test_prefix_model_matches_the_network_on_either_engine(tmp_path, engine):
    net = _net()
    spec = prepare_engine(
        net, net.frontier(), TINY, FeaturizeConfig(out=str(tmp_path), engine=engine), "the prefix"
    )
    assert spec.kind == engine and (spec.onnx is not None) == (engine == "onnxruntime")
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    model = PrefixModel(spec, net.frontier_shapes(), dtype="float32")
    batch = {
        "error": np.array(["", "", "broken", "", "", ""], dtype=object),
        "image": images.numpy(),
    }
    out = model(batch)
    expected = net.featurize(standardized(images, TINY))
    ok = np.array([True, True, False, True, True, True])
    assert "image" not in out
    torch.testing.assert_close(
        torch.from_numpy(out["pool"][ok]), expected["pool"][ok], atol=1e-5, rtol=1e-4
    )
    assert not out["pool"][2].any()


def test_fingerprint_follows_what_changes_the_features(tmp_path):
    generate_shapes(tmp_path / "d", per_class=1, size=16)
    items = plan_data(DataConfig(sources=[str(tmp_path / "d")]))
    cfg = FeaturizeConfig(out=str(tmp_path / "out"))
    net = _net()
    uri = plan(net, items.fingerprint, cfg)[0].uri
    assert plan(_net(), items.fingerprint, cfg)[0].uri == uri
    new_head = TransferLearning(net).n_out_replace("fc2", 7).build()
    assert plan(new_head, items.fingerprint, cfg)[0].uri == uri  # a new head reuses the features
    assert plan(net, items.fingerprint, cfg.model_copy(update={"dtype": "float32"}))[0].uri != uri
    assert plan(net, items.fingerprint, cfg.model_copy(update={"views": 2}))[0].uri != uri
    assert plan(net, items.fingerprint, cfg, cuts=["features.1"])[0].uri != uri
    assert (
        plan(
            TransferLearning("tiny:cnn", seed=4).set_feature_extractor("pool").build(),
            items.fingerprint,
            cfg,
        )[0].uri
        != uri
    )  # other weights
    (tmp_path / "d" / "circle" / "extra.png").write_bytes(b"")
    items2 = plan_data(DataConfig(sources=[str(tmp_path / "d")]))
    assert plan(net, items2.fingerprint, cfg)[0].uri != uri


# ---------------------------------------------------------------------------- on Ray


def test_one_pass_writes_each_cut_with_the_networks_features(tiny_run):
    result, items = tiny_run["result"], tiny_run["items"]
    assert len(result.feature_sets) == 2
    good = [
        s for s in plan_rows(items)["source"] if not any(s.endswith(b) for b in tiny_run["bad"])
    ]
    for cut, fs in zip(CUTS, result.feature_sets):
        assert fs.manifest["cut"] == [cut]
        table = fs.table()
        assert sorted(table.column("source").to_pylist()) == sorted(good)  # each exactly once
        order = sorted(range(len(good)), key=lambda i: item_id(good[i]))
        expected = _reference(_net(), cut, [good[i] for i in order])
        got, _ = fs.tensors()
        for name, value in expected.items():
            torch.testing.assert_close(got[name], value, atol=1e-4, rtol=1e-4)
        assert fs.classes == sorted(SHAPES)


def test_bad_files_are_recorded_skipped_and_counted(tiny_run):
    result = tiny_run["result"]
    assert result.errors == len(tiny_run["bad"]) and result.images == 40
    for fs in result.feature_sets:
        errors = fs.errors().to_pylist()
        by_name = {e["source"].rsplit("/", 1)[1]: e["reason"] for e in errors}
        assert set(by_name) == set(tiny_run["bad"])
        assert all(reason in by_name[name] for name, reason in tiny_run["bad"].items())
        assert fs.manifest["errors"] == 5 and fs.manifest["rows"] == 40
    summary = result.summary()
    assert summary.startswith("featurize: 40 images, 5 errors, ")
    assert "onnxruntime) -> " in summary
    assert all(fs.uri in summary for fs in result.feature_sets)
    first, second = summary.splitlines()  # where the errors are, and the first few
    assert second.startswith("featurize: 5 input(s) skipped, listed in ")
    assert f"{result.feature_sets[0].uri}/_errors.parquet: " in second and second.endswith(", ...")
    assert sum(name in second for name in tiny_run["bad"]) == 3


def test_same_inputs_again_is_a_cache_hit_that_computes_nothing(tiny_run):
    out = tiny_run["root"] / "out"
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    again = featurize(_net(), tiny_run["items"], tiny_run["cfg"], cuts=CUTS)
    assert again.images == 0 and len(again.cached) == 2
    assert "cache hit, nothing computed" in again.summary()
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_an_interrupted_directory_is_completed_without_duplicates(tiny_run, tmp_path):
    """The states a killed run leaves: finished units (parts and a marker), an unfinished unit
    (a part, no marker), a half-written temporary, no manifest."""
    done = tiny_run["result"].feature_sets[0]
    name = done.uri.rsplit("/", 1)[1]
    whole, partial = tiny_run["root"] / "out" / name, tmp_path / "out" / name
    (partial / "_units").mkdir(parents=True)
    markers = sorted((whole / "_units").glob("*.json"))
    finished = [m.stem for m in markers[:2]]
    for unit in finished:
        shutil.copy(whole / "_units" / f"{unit}.json", partial / "_units")
        for part in whole.glob(f"part-{unit}-*.parquet"):
            shutil.copy(part, partial)
    unfinished = markers[2].stem  # its part made it, its marker did not: redone, not doubled
    for part in whole.glob(f"part-{unfinished}-*.parquet"):
        shutil.copy(part, partial)
    (partial / ".tmp-killed-part-x.parquet").write_bytes(b"PAR1 half")
    cfg = tiny_run["cfg"].model_copy(update={"out": str(tmp_path / "out")})
    result = featurize(_net(), tiny_run["items"], cfg, cuts=CUTS[:1])
    reused = sum(pq.read_table(p).num_rows for u in finished for p in partial.glob(f"part-{u}-*"))
    assert 0 < reused < 40 and result.images == 40 - reused  # only the rest was computed
    assert result.feature_sets[0].uri == str(partial)
    table = result.feature_sets[0].table()
    assert table.num_rows == 40 and len(set(table.column("id").to_pylist())) == 40
    torch.testing.assert_close(
        result.feature_sets[0].tensors()[0]["pool"], done.tensors()[0]["pool"]
    )
    assert not list(partial.glob(".tmp-*"))


def test_views_are_written_for_training_images_and_reproducible(ray_local, tmp_path):
    generate_shapes(tmp_path / "d", per_class=2, size=32)
    items = plan_data(DataConfig(sources=[str(tmp_path / "d")], splits={"train": 0.5, "val": 0.5}))
    runs = []
    for out in ("a", "b"):
        cfg = FeaturizeConfig(out=str(tmp_path / out), views=2, batch_size=8)
        runs.append(featurize(_net(), items, cfg).feature_sets[0])
    table = runs[0].table()
    views = {}
    for split, view in zip(table.column("split").to_pylist(), table.column("view").to_pylist()):
        views.setdefault(split, set()).add(view)
    assert views["train"] == {0, 1, 2} and views["val"] == {0}
    assert table.num_rows == 3 * items.count("train") + items.count("val")
    torch.testing.assert_close(runs[0].tensors()[0]["pool"], runs[1].tensors()[0]["pool"])


def test_feature_set_reads_as_a_ray_dataset(tiny_run, ray_local):
    fs = tiny_run["result"].feature_sets[0]
    ds = fs.dataset(split="train")
    batch = next(iter(ds.select_columns(["pool", "label"]).iter_torch_batches(batch_size=4)))
    assert batch["pool"].shape[1:] == (16, 1, 1) and batch["pool"].dtype == torch.float32
    assert ds.count() == sum(fs.manifest["counts"]["train"].values())


# ---------------------------------------------------------------------------- the job, killed


def _job(args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.featurize", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def _job_args(data, out, address, *extra):
    return [
        "model.name=tiny:resnet",
        "cuts=[pool]",
        f"data.sources=[{data}]",
        f"featurize.out={out}",
        "featurize.batch_size=4",
        "featurize.dtype=float32",
        f"ray_address={address}",
        *extra,
    ]


@pytest.mark.slow
def test_a_killed_job_rerun_completes_with_every_image_once(ray_local, tmp_path):
    generate_shapes(tmp_path / "d", per_class=60, size=64)
    address = ray_local.get_runtime_context().gcs_address
    args = _job_args(
        tmp_path / "d",
        tmp_path / "out",
        address,
        "featurize.preprocess={"
        "resize_size: 64, crop_size: 64, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}",
    )
    job = _job(args)
    deadline = time.time() + 120
    while not list((tmp_path / "out").glob("*/part-*")) and time.time() < deadline:
        time.sleep(0.2)
    job.send_signal(signal.SIGKILL)
    job.wait()
    written = list((tmp_path / "out").glob("*/part-*"))
    assert written and not list((tmp_path / "out").glob(f"*/{MANIFEST}")), (
        "the job finished before it could be killed; give it more images"
    )
    rerun = _job(args)
    output = rerun.communicate(timeout=240)[0]
    assert rerun.returncode == 0, output
    assert "featurize: " in output.splitlines()[-1]
    (fs,) = FeatureSet.under(str(tmp_path / "out"))
    ids = fs.table().column("id").to_pylist()
    assert len(ids) == 300 == len(set(ids))


@pytest.mark.slow
def test_removing_a_worker_node_mid_run_loses_and_doubles_nothing(tmp_path):
    """Head (no CPUs) + 2 worker nodes; one worker node is removed while the job runs. Ray Data
    retries its tasks and restarts its actor elsewhere; every image comes out exactly once,
    with the features an uninterrupted run computes."""
    from ray.cluster_utils import Cluster

    generate_shapes(tmp_path / "d", per_class=60, size=64)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
    try:
        cluster.wait_for_nodes()
        args = _job_args(
            tmp_path / "d",
            tmp_path / "out",
            cluster.address,
            "featurize.actors=2",
            "featurize.preprocess={resize_size: 64, "
            "crop_size: 64, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}",
        )
        job = _job(args)
        deadline = time.time() + 150
        while len(list((tmp_path / "out").glob("*/part-*"))) < 3 and time.time() < deadline:
            time.sleep(0.2)
        assert not list((tmp_path / "out").glob(f"*/{MANIFEST}")), "finished too early"
        cluster.remove_node(workers[0])
        output = job.communicate(timeout=300)[0]
        assert job.returncode == 0, output
    finally:
        cluster.shutdown()
    # the job checked that each of the three nodes sees its data and output, and cleaned up
    assert not list((tmp_path / "out").glob(".visible-*"))
    (fs,) = FeatureSet.under(str(tmp_path / "out"))
    table = fs.table()
    assert table.num_rows == 300 == len(set(table.column("id").to_pylist()))
    net = TransferLearning("tiny:resnet").set_feature_extractor("pool").build()
    preprocess = Preprocess(resize_size=64, crop_size=64, mean=(0.5,) * 3, std=(0.5,) * 3)
    spec = prepare_engine(
        net,
        net.frontier(),
        preprocess,
        FeaturizeConfig(out=str(tmp_path), engine="torch"),
        "the prefix",
    )
    model = PrefixModel(spec, net.frontier_shapes())
    order = sorted(range(300), key=lambda i: table.column("id")[i].as_py())
    sources_sorted = [table.column("source")[i].as_py() for i in order]
    crops = np.stack([load_crop(s, preprocess) for s in sources_sorted])
    expected = model({"error": np.array([""] * 300, dtype=object), "image": crops})["pool"]
    torch.testing.assert_close(
        fs.tensors()[0]["pool"], torch.from_numpy(expected), atol=1e-4, rtol=1e-4
    )


# ---------------------------------------------------------------------------- real data


def _fit_probe(x, y, l2: float) -> torch.nn.Linear:
    """A multinomial logistic regression with an L2 penalty, full-batch L-BFGS."""
    head = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(x), y) + l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head


def _probe_accuracy(train, val) -> float:
    """Logistic-regression probe: the L2 strength is chosen on a fifth of train held out (val
    is never looked at), then the probe is refitted on all of train and scored on val."""
    (x, y), (vx, vy) = ((f["flatten"].float(), lab) for f, lab in (train, val))
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, vx = (x - mean) / std, (vx - mean) / std
    cut = len(y) * 4 // 5
    scores = {
        l2: (_fit_probe(x[:cut], y[:cut], l2)(x[cut:]).argmax(1) == y[cut:]).float().mean()
        for l2 in (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    }
    head = _fit_probe(x, y, max(scores, key=scores.get))
    return (head(vx).argmax(1) == vy).float().mean().item()


@pytest.mark.slow
@needs_shared(SHARED / "data" / "hymenoptera", MOBILENET_WEIGHTS)
@pytest.mark.timeout(600)
def test_hymenoptera_features_give_a_linear_probe_over_94_percent(hymenoptera_features):
    fs = hymenoptera_features.feature_sets[0]
    accuracy = _probe_accuracy(fs.tensors("train"), fs.tensors("val"))
    print(
        f"hymenoptera linear probe: val accuracy {accuracy:.3f}, "
        f"{hymenoptera_features.errors} errors"
    )
    assert accuracy >= 0.94 and fs.errors().num_rows == 0


@pytest.mark.slow
@pytest.mark.timeout(900)  # the session fixture featurizes 4317 images at 224 px: ~3.5 min here
@needs_shared(SHARED / "data" / "flowers128", MOBILENET_WEIGHTS)
def test_flowers_features_give_a_linear_probe_over_70_percent(flowers_features):
    accuracy = _probe_accuracy(flowers_features.tensors("train"), flowers_features.tensors("val"))
    print(f"flowers128 linear probe (80/20): val accuracy {accuracy:.3f}")
    assert accuracy >= 0.70
