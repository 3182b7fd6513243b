"""Fitting on Ray Train: real runs on a tiny net (shared by the tests below, since each
TorchTrainer.fit costs ~25 s of start-up), then the shared-data acceptance runs through the
project's own job configs."""

import contextlib
import copy
import json
import os
from pathlib import Path

import pytest
import torch

from conftest import (
    MOBILENET_WEIGHTS,
    REPO,
    SHARED,
    TINY,
    frozen_tensors,
    needs_shared,
    network_input,
    same_tensors,
)
from pipeline.data.listing import plan_data
from pipeline.data.shapes import generate_shapes
from pipeline.features.plan import FeatureSetMismatch, check_feature_set
from pipeline.features.run import featurize
from pipeline.flows.run import run_predict, run_train
from pipeline.inference.batch import accuracy, read_predictions
from pipeline.net.builder import TransferLearning
from pipeline.net.heads import build_network
from pipeline.net.saving import load
from pipeline.settings import (
    AugmentConfig,
    ConfigError,
    DataConfig,
    FeaturizeConfig,
    FineTuneConfig,
    PredictJobConfig,
    TrainConfig,
    TrainJobConfig,
    load_config,
)
from pipeline.train.fit import RESULT, _finished, fit, fit_featurized
from pipeline.train.loop import FAIL_AFTER_EPOCH, accuracy_from_features
from pipeline.train.streaming import row_bytes, streams


def test_mismatched_feature_set_is_refused_naming_the_field(tiny_features, tiny_net):
    with pytest.raises(FeatureSetMismatch, match="frozen differs"):
        check_feature_set(tiny_net(cut="flatten"), tiny_features["pool"])
    with pytest.raises(FeatureSetMismatch, match="model_kwargs differs"):
        check_feature_set(tiny_net(seed=4), tiny_features["pool"])
    edited = tiny_net()
    with torch.no_grad():
        edited.get_parameter(sorted(edited.frozen_parameter_names())[0]).add_(1)
    with pytest.raises(FeatureSetMismatch, match="prefix_sha256 differs"):
        check_feature_set(edited, tiny_features["pool"])  # a frozen weight changed after
    other = tiny_net()
    other.spec["preprocess"] = dict(other.spec["preprocess"], crop_size=24)
    with pytest.raises(FeatureSetMismatch, match="preprocess differs"):
        fit_featurized(other, tiny_features["pool"], TrainConfig(epochs=1))  # before Ray Train
    check_feature_set(tiny_net(), tiny_features["pool"])  # a new head does not matter


@pytest.fixture(scope="module")
def runs(tiny_features, tiny_net, tmp_path_factory):
    """Three real Ray Train runs: a reference, the same with a worker failure injected after
    epoch 2 (one restart allowed), and the failed-then-finished run re-run under its name."""
    storage = str(tmp_path_factory.mktemp("runs"))
    cfg = TrainConfig(
        storage=storage, epochs=4, batch_size=8, keep=1, fine_tune=FineTuneConfig(lr=0.01)
    )
    out = {}
    for key, overrides, fail_after in (
        ("reference", {"name": "reference"}, None),
        ("failed", {"name": "failed", "max_failures": 1}, "2"),
        ("rerun", {"name": "failed"}, None),
    ):
        net = tiny_net()
        before = frozen_tensors(net)
        with injected_failure(fail_after):
            result = fit_featurized(net, tiny_features["pool"], cfg.model_copy(update=overrides))
        files = {p: p.stat().st_mtime_ns for p in Path(result.run_dir).rglob("*")}
        out[key] = {"result": result, "net": net, "frozen_before": before, "files": files}
    return out


@contextlib.contextmanager
def injected_failure(after_epoch: str | None):
    """Rank 0 of the fits started inside fails once after ``after_epoch`` (the environment
    variable the driver reads into the workers' spec; never a setting a user sees)."""
    if after_epoch is None:
        yield
        return
    os.environ[FAIL_AFTER_EPOCH] = after_epoch
    try:
        yield
    finally:
        del os.environ[FAIL_AFTER_EPOCH]


def test_worker_failure_resumes_from_the_epoch_2_checkpoint(runs):
    result = runs["failed"]["result"]
    assert result.attempts == [[1, 2], [3, 4]]  # the restarted group began at epoch 3
    assert result.epochs == [1, 2, 3, 4]


def test_same_seed_same_weights_and_resume_is_exact(runs):
    reference, failed = runs["reference"]["net"], runs["failed"]["net"]
    assert same_tensors(reference.state_dict(), failed.state_dict())
    measured = ("seconds", "worker_peak_mib")  # wall clock and memory, not results

    def results(history: list[dict]) -> list[dict]:
        return [{k: v for k, v in h.items() if k not in measured} for h in history]

    assert results(runs["reference"]["result"].history) == results(runs["failed"]["result"].history)


def test_rerunning_a_finished_run_resumes_it_without_training(runs):
    rerun = runs["rerun"]["result"]
    assert rerun.run_dir == runs["failed"]["result"].run_dir
    assert rerun.attempts == [[1, 2], [3, 4]]  # nothing new ran
    assert same_tensors(runs["rerun"]["net"].state_dict(), runs["failed"]["net"].state_dict())
    assert rerun.finished_before and "was finished already (4 epochs); nothing ran" in (
        rerun.summary()
    )
    assert rerun.evaluation.accuracy == runs["failed"]["result"].evaluation.accuracy
    assert runs["rerun"]["files"] == runs["failed"]["files"]  # not a file written


def test_copy_back_restores_the_best_checkpoint_and_keeps_the_prefix(runs, tiny_features):
    run = runs["reference"]
    result, net = run["result"], run["net"]
    best = max(result.history, key=lambda h: h["val_accuracy"])
    assert result.history[result.restored_epoch - 1]["val_accuracy"] == best["val_accuracy"]
    assert same_tensors(load(result.checkpoint).state_dict(), net.state_dict())
    assert same_tensors(run["frozen_before"], frozen_tensors(net))
    features, labels = tiny_features["pool"].tensors("val", torch.float32, plain=True)
    assert result.evaluation.accuracy == pytest.approx(best["val_accuracy"])
    assert result.evaluation.accuracy == pytest.approx(
        accuracy_from_features(net, features, labels)
    )
    assert sum(map(sum, result.evaluation.confusion)) == len(labels)


def test_best_k_checkpoints_are_kept_and_each_is_a_loadable_network(runs):
    run_dir = Path(runs["reference"]["result"].run_dir)
    kept = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    assert 1 <= len(kept) <= 2  # keep=1 best, plus the latest when it is not the best
    for checkpoint in kept:
        assert {"spec.json", "model.safetensors", "optimizer.safetensors", "state.json"} <= {
            p.name for p in checkpoint.iterdir()
        }
        load(str(checkpoint))


def test_run_writes_tensorboard_report_curves_and_the_exported_model(runs, tiny_features):
    result = runs["reference"]["result"]
    run_dir = Path(result.run_dir)
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    for name in ("loss.png", "accuracy.png", "confusion.png"):
        assert (run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (run_dir / "report.html").read_text()
    assert "confusion.png" in page and "val_accuracy" in page
    assert "<h2>Inputs skipped</h2>" in page and "broken.png" in page  # the set's errors
    exported = load(result.model)
    assert exported.spec["classes"] == tiny_features["items"].classes
    image = next((tiny_features["root"] / "square").glob("*.png"))
    x = network_input([image], TINY)
    exported.eval()
    runs["reference"]["net"].eval()
    assert torch.equal(exported(x), runs["reference"]["net"](x))
    assert "fit: 4 epochs" in result.summary() and result.model in result.summary()


@pytest.mark.slow
def test_two_workers_train_data_parallel_on_their_shards(tiny_features, tiny_net, tmp_path):
    """DDP over two workers (half a CPU each): each reads half of the rows and takes the same
    number of steps; the fit completes and its result is copied back."""
    net = tiny_net()
    result = fit_featurized(
        net,
        tiny_features["pool"],
        TrainConfig(storage=str(tmp_path), epochs=2, batch_size=8, workers=2, cpus_per_worker=0.5),
    )
    assert result.attempts == [[1, 2]]
    features, labels = tiny_features["pool"].tensors("val", torch.float32, plain=True)
    assert result.evaluation.accuracy == pytest.approx(
        accuracy_from_features(net, features, labels)
    )
    # the workers' val counts were summed across both shards: the best epoch's figure is the
    # whole split's accuracy of the restored weights
    best = max(h["val_accuracy"] for h in result.history)
    assert best == pytest.approx(result.evaluation.accuracy)


@pytest.mark.slow
def test_end_to_end_fine_tuning_with_augmentation_keeps_the_prefix_bit_identical(
    tiny_features, tiny_net, tmp_path
):
    net = tiny_net(cut="features.0")
    before, trainable_before = frozen_tensors(net), copy.deepcopy(net.trainable().state_dict())
    result = fit(
        net,
        tiny_features["items"],
        TrainConfig(
            storage=str(tmp_path),
            epochs=2,
            batch_size=8,
            augment=AugmentConfig(scale=(0.6, 1.0)),
            fine_tune=FineTuneConfig(lr=0.01),
        ),
    )
    assert result.attempts == [[1, 2]]
    assert [h["skipped_images"] for h in result.history] == [1, 1]  # broken.png, each epoch
    assert same_tensors(before, frozen_tensors(net))
    after = net.trainable().state_dict()
    assert any(not torch.equal(trainable_before[k], after[k]) for k in after)
    assert result.evaluation.n == len(tiny_features["pool"].tensors("val", plain=True)[1])


# ---------------------------------------------------------------------------- shared data


def _job(config: str, tmp_path, *overrides):
    return load_config(
        TrainJobConfig,
        str(REPO / "jobs" / "configs" / config),
        [
            f"model.weights={MOBILENET_WEIGHTS}",
            f"featurize.out={tmp_path / 'features'}",
            f"train.storage={tmp_path / 'train'}",
            *overrides,
        ],
    )


@pytest.mark.slow
@pytest.mark.shared
@needs_shared(SHARED / "data" / "hymenoptera", MOBILENET_WEIGHTS)
@pytest.mark.timeout(900)
def test_hymenoptera_frozen_features_reach_95_percent_and_predict_yaml_works_as_shipped(
    hymenoptera_features, tmp_path, ray_local, monkeypatch
):
    hymenoptera = SHARED / "data" / "hymenoptera"
    cached = hymenoptera_features.feature_sets[0]
    monkeypatch.chdir(tmp_path)  # runs/train below is where both shipped configs point
    cfg = _job(
        "train_hymenoptera.yaml",
        tmp_path,
        "data.sources=["
        f"{{uri: {hymenoptera / 'train'}, split: train}}, "
        f"{{uri: {hymenoptera / 'val'}, split: val}}]",
        f"featurize.out={cached.uri.rsplit('/', 1)[0]}",
        "train.storage=runs/train",
    )
    result = run_train(cfg)
    print(result.summary())
    assert result.evaluation.n == 153
    assert result.evaluation.accuracy >= 0.95
    shipped = load_config(
        PredictJobConfig,
        str(REPO / "jobs" / "configs" / "predict_hymenoptera.yaml"),
        [f"data.sources=[{{uri: {hymenoptera / 'val'}, split: val}}]"],  # ../shared from here
    )
    assert shipped.model == "runs/train/latest/model"
    table = read_predictions(run_predict(shipped))
    # the whole network on images vs the head on float16 features: an image may tip over
    assert table.num_rows == 153 and abs(accuracy(table) - result.evaluation.accuracy) <= 2 / 153


@pytest.fixture(scope="module")
def flowers_frozen(flowers_features, tmp_path_factory):
    """Step 1 of the flowers example: the train_flowers.yaml head on the session's features."""
    cfg = _job("train_flowers.yaml", tmp_path_factory.mktemp("flowers"))
    net = build_network(cfg.model, flowers_features.classes, cfg.train.fine_tune)
    result = fit_featurized(net, flowers_features, cfg.train)
    print(result.summary())
    return result


@pytest.mark.slow
@pytest.mark.shared
@needs_shared(SHARED / "data" / "flowers128", MOBILENET_WEIGHTS)
@pytest.mark.timeout(900)
def test_flowers_frozen_features_reach_74_percent(flowers_frozen):
    assert flowers_frozen.evaluation.accuracy >= 0.74


@pytest.mark.slow
@pytest.mark.shared
@needs_shared(SHARED / "data" / "flowers128", MOBILENET_WEIGHTS)
@pytest.mark.timeout(1500)
def test_flowers_top_blocks_fine_tuned_beat_frozen(
    flowers_frozen, flowers_features, tmp_path, ray_local
):
    """Steps 2 and 3: features.17-18 unfrozen and trained with the head from step 1's model, on
    cached features.16 outputs, then polished end to end on augmented images."""
    flowers = f"data.sources=[{SHARED / 'data' / 'flowers128'}]"
    cfg = _job(
        "train_flowers_finetune.yaml",
        tmp_path,
        f"model.start_from={flowers_frozen.model}",
        flowers,
        f"featurize.out={flowers_features.uri.rsplit('/', 1)[0]}",
    )
    tuned = run_train(cfg)
    print(tuned.summary())
    frozen = flowers_frozen.evaluation
    assert tuned.evaluation.n == frozen.n
    assert tuned.evaluation.accuracy > frozen.accuracy
    cfg = _job("train_flowers_e2e.yaml", tmp_path, f"model.start_from={tuned.model}", flowers)
    polished = run_train(cfg)
    print(polished.summary())
    # one epoch at lr 3e-5 keeps what the top blocks learned, within the noise of 901 images
    # (0.771 and 0.782 measured from the same network with two data orders): it must not undo it
    assert polished.evaluation.accuracy >= tuned.evaluation.accuracy - 0.02
    before = load(tuned.model).state_dict()
    assert all(
        torch.equal(polished.net.state_dict()[k], before[k])
        for k in polished.net.frozen_parameter_names()
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_feature_set_four_times_the_memory_budget_streams_within_it(tmp_path, ray_local):
    # tiny:cnn at 64 px, frozen through its first block: 128 KiB of float32 features an image
    generate_shapes(tmp_path / "data", per_class=100, size=64)
    items = plan_data(DataConfig(sources=[str(tmp_path / "data")]))
    net = (
        TransferLearning("tiny:cnn", image_size=64, seed=3)
        .set_feature_extractor("features.0")
        .n_out_replace("fc2", 5)
        .build()
    )
    cfg = FeaturizeConfig(out=str(tmp_path / "features"), batch_size=64)
    fs = featurize(net, items, cfg).feature_sets[0]
    data_bytes = (fs.count("train") + fs.count("val", plain=True)) * row_bytes(fs)
    budget = data_bytes // 4
    runs = {}
    for name, memory_budget in (("in memory", None), ("streamed", budget)):
        train = TrainConfig(
            epochs=4,
            batch_size=32,
            fine_tune={"lr": 0.01},
            memory_budget=memory_budget,
            storage=str(tmp_path / "train"),
        )
        runs[name] = fit_featurized(copy.deepcopy(net), fs, train)
    memory, streamed = runs["in memory"], runs["streamed"]
    assert not streams(fs, TrainConfig(), 1) and streams(fs, TrainConfig(memory_budget=budget), 1)
    peak = {k: max(h["worker_peak_mib"] for h in r.history) for k, r in runs.items()}
    print(f"data {data_bytes / 2**20:.0f} MiB, budget {budget / 2**20:.0f} MiB, peaks {peak}")
    # the in-memory worker holds the shard (and its copy while reading it); the streamed one
    # holds a budget's worth at most, over the same fixed overhead (torch, Ray, the network)
    assert peak["streamed"] <= peak["in memory"] - data_bytes / 2**20 + budget / 2**20
    assert streamed.evaluation.n == memory.evaluation.n
    assert abs(streamed.evaluation.accuracy - memory.evaluation.accuracy) <= 0.1


def test_a_named_run_finished_with_other_settings_is_refused_not_resumed(tmp_path):
    (tmp_path / RESULT).write_text(json.dumps({"settings": "the old ones"}))
    with pytest.raises(ConfigError, match=r"^train.name: .* finished with other settings"):
        _finished(None, str(tmp_path), [], "new ones", named=True)
    assert _finished(None, str(tmp_path), [], "new ones", named=False) is None  # a new run
