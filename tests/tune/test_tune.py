"""Sweeps: search spaces, unfreeze depths, feature reuse, resume after a killed driver, the
compare preset. Real Ray Tune on the session's local Ray, real feature sets, tiny nets."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import ray
import yaml

from conftest import MOBILENET_WEIGHTS, REPO, SHARED, needs_shared, plan_rows
from pipeline.data.featureset import FeatureSet
from pipeline.data.listing import plan_data
from pipeline.data.shapes import generate_shapes
from pipeline.flows.run import run_sweep
from pipeline.net.builder import TransferLearning
from pipeline.net.heads import cut_for, head_of, zoo_network
from pipeline.net.saving import from_files, load
from pipeline.settings import (
    DataConfig,
    SweepConfig,
    TrainJobConfig,
    TuneJobConfig,
    load_config,
)
from pipeline.train.evaluate import evaluate
from pipeline.tune.plan import plan_sweep


def _config(tmp: Path, **changes) -> dict:
    """A tiny sweep's job config; ``changes`` of SweepConfig's fields go to its sweep section."""
    data = tmp / "data"
    if not data.exists():
        generate_shapes(data, per_class=12, size=32)
    sweep = {
        "space": {
            "unfreeze": {"grid": [0, 1, 2]},
            "lr": {"loguniform": [0.003, 0.03]},
            "width": [0, 16],
            "depth": 1,
            "epochs": 3,
            "batch_size": 16,
        },
        "num_samples": 1,
        "storage": str(tmp / "tune"),
        "cpus_per_trial": 0.5,
        "asha": None,
    }
    cfg = {
        "model": {"name": "tiny:cnn"},
        "data": {"sources": [str(data)], "splits": {"train": 0.6, "val": 0.2, "test": 0.2}},
        "featurize": {"out": str(tmp / "features"), "batch_size": 32},
        "sweep": sweep,
    }
    for key, value in changes.items():
        (sweep if key in SweepConfig.model_fields else cfg)[key] = value
    return cfg


# ---------------------------------------------------------------------------- no Ray


def test_listed_depths_are_each_tried_and_a_choice_samples_them():
    from pipeline.settings import SearchSpace
    from pipeline.tune.trials import param_space

    listed = param_space(SearchSpace(unfreeze=[0, 1, "all"]))["unfreeze"]
    assert listed == {"grid_search": ["0", "1", "all"]}
    chosen = param_space(SearchSpace(unfreeze={"choice": [0, 1]}))["unfreeze"]
    assert sorted(chosen.categories) == ["0", "1"]


def test_own_data_tune_shares_own_datas_network_and_data_and_its_depth_0_is_that_cut():
    own = load_config(TrainJobConfig, str(REPO / "jobs/configs/own_data.yaml"), [])
    tune = load_config(TuneJobConfig, str(REPO / "jobs/configs/own_data_tune.yaml"), [])
    assert tune.model.name == own.model.name and tune.data == own.data
    assert tune.featurize == own.featurize
    base = zoo_network(tune.model)
    depth0 = cut_for(base, tune.sweep.depths()[0], head_of(base, tune.model))
    frozen = [
        TransferLearning("default").set_feature_extractor(*cut).build().frozen_parameter_names()
        for cut in (depth0, own.model.cuts())
    ]
    assert frozen[0] == frozen[1]  # the same parameters train: the head's
    assert len(tune.sweep.depths()) == 3


def test_compare_plan_builds_scratch_from_random_weights_and_the_rest_pretrained(tmp_path):
    # "default" means the packaged *pretrained* network; the scratch row must not load it
    generate_shapes(tmp_path / "d", per_class=2, size=16)
    items = plan_data(DataConfig(sources=[str(tmp_path / "d")]))
    cfg = TuneJobConfig(
        sweep={"preset": "compare"},
        model={"name": "default", "image_size": 64},
        data={"sources": [str(tmp_path / "d")]},
    )
    base = zoo_network(cfg.model)
    plan = plan_sweep(cfg.sweep, cfg.train, cfg.model, base, items, "unused")
    assert plan.head == "_fc"  # the network's own output layer
    assert plan.cuts == {"all": [], "0": ["_dropout"], "2": ["_blocks.15"]}
    nets = {key: from_files(files) for key, files in plan.networks.items()}
    assert nets["all"].spec["base"]["model"] == "efficientnet_lite0"
    assert nets["all"].spec["weights_sha256"] is None and not nets["all"].frozen
    assert nets["0"].spec["weights_sha256"] == nets["2"].spec["weights_sha256"] is not None
    assert nets["2"].spec["input_shape"] == [3, 64, 64]
    assert all(n.get_submodule("_fc").out_features == 5 for n in nets.values())


def test_a_plan_of_the_used_splits_keeps_the_fingerprint_when_every_row_is_used(tmp_path):
    generate_shapes(tmp_path, per_class=4, size=16)
    items = plan_data(
        DataConfig(sources=[str(tmp_path)], splits={"train": 0.5, "val": 0.3, "rest": 0.2})
    )
    # the same rows: the fingerprint (and so every feature set keyed on it) is the train job's
    assert items.only(["train", "val", "rest"]).fingerprint == items.fingerprint
    fewer = items.only(["train", "val"])
    assert fewer.fingerprint != items.fingerprint
    assert set(plan_rows(fewer)["split"]) == {"train", "val"} and fewer.count("rest") == 0


def test_a_sweep_without_val_rows_is_refused_before_any_trial(tmp_path):
    cfg = _config(tmp_path, data={"sources": [str(tmp_path / "d")], "splits": {"train": 1.0}})
    generate_shapes(tmp_path / "d", per_class=2, size=16)
    with pytest.raises(ValueError, match="no 'val' rows, so val_accuracy cannot be measured"):
        run_sweep(TuneJobConfig.model_validate(cfg))


# ---------------------------------------------------------------------------- sweeps


@pytest.fixture(scope="module")
def sweep(_ray_session, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    return tmp, run_sweep(TuneJobConfig.model_validate(_config(tmp)))


def test_sweep_writes_table_plots_report_and_best_network(sweep):
    tmp, result = sweep
    table = pd.read_csv(f"{result.path}/results.csv")
    assert len(table) == 3 and set(table["unfreeze"].astype(str)) == {"0", "1", "2"}
    assert (table["status"] == "ok").all() and (table["epochs_run"] == 3).all()
    assert (
        pd.read_parquet(f"{result.path}/results.parquet")["best"].tolist() == table["best"].tolist()
    )
    for name in ("by_unfreeze.png", "by_lr.png", "report.html"):
        assert os.path.getsize(f"{result.path}/{name}") > 1000
    assert result.best["trial"] in Path(result.report).read_text()
    # the exported best network loads and predicts: its accuracy on the val split of its
    # feature set is the best trial's reported best val accuracy
    net = load(result.best_model)
    assert net.spec["classes"] == sorted(os.listdir(tmp / "data"))
    features = FeatureSet.under(str(tmp / "features"))
    mine = next(fs for fs in features if list(fs.shapes) == net.frontier())
    assert evaluate(net, mine, "val").accuracy == pytest.approx(result.best["best"])


def test_every_cut_is_featurized_once_before_the_trials(sweep):
    tmp, result = sweep
    sets = FeatureSet.under(str(tmp / "features"))
    assert len(sets) == 3  # one per unfreeze depth, all written by one pass
    frontiers = {tuple(fs.shapes) for fs in sets}
    assert len(frontiers) == 3
    # each trial read the feature set of its own cut
    for row in result.table:
        net = load(row["checkpoint"])
        assert tuple(net.frontier()) in frontiers


def test_rerunning_a_finished_sweep_runs_nothing(sweep):
    tmp, result = sweep
    progress = {p: p.read_bytes() for p in Path(result.path).glob("*/progress.csv")}
    again = run_sweep(TuneJobConfig.model_validate(_config(tmp)))
    assert again.path == result.path and again.best["trial"] == result.best["trial"]
    assert {p: p.read_bytes() for p in Path(result.path).glob("*/progress.csv")} == progress


def test_asha_stops_trailing_trials_early_and_processes_serve_trial_after_trial(
    ray_local, tmp_path
):
    # one trial learns, three barely move, each a little less than the one before (the order
    # Tune runs them in): at the first rung ASHA keeps the top half by training loss (12
    # validation images are too few to rank on, and a loss has no ties)
    cfg = _config(
        tmp_path,
        max_concurrent_trials=1,
        metric="train_loss",
        mode="min",
        asha={"grace_period": 1, "reduction_factor": 2},
        space={
            "unfreeze": 0,
            "lr": {"grid": [0.05, 3e-7, 2e-7, 1e-7]},
            "epochs": 6,
            "batch_size": 16,
        },
    )
    result = run_sweep(TuneJobConfig.model_validate(cfg))
    runs = {round(r["lr"], 9): r["epochs_run"] for r in result.table}
    assert runs[0.05] == 6 and min(runs.values()) < 6
    assert all(r["status"] == "ok" for r in result.table)
    # one process trained them all in turn (Tune reused it): no trial waited for a new one
    pids = {
        json.loads(line)["pid"]
        for trial in Path(result.path).glob("unfreeze-*")
        for line in (trial / "result.json").read_text().splitlines()
    }
    assert len(pids) == 1


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_driver_resumes_without_rerunning_finished_trials(ray_local, tmp_path):
    # short and long trials (grid over epochs): whichever finishes first, a long one is still
    # to run or running when the driver is killed
    cfg = _config(
        tmp_path,
        name="killed",
        max_concurrent_trials=1,
        space={
            "unfreeze": {"grid": [0, 1, 2]},
            "lr": [0.01],
            "epochs": {"grid": [3, 150]},
            "batch_size": 16,
        },
    )
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(cfg))
    # Tune snapshots its state every second here (default: adaptive, ~10 s), so the test sees
    # a finished trial while the next one still runs
    env = dict(
        os.environ,
        RAY_ADDRESS=ray.get_runtime_context().gcs_address,
        PYTHONPATH=str(REPO),
        TUNE_GLOBAL_CHECKPOINT_S="1",
    )
    command = [sys.executable, "-m", "jobs.tune", "--config", str(tmp_path / "tune.yaml")]
    driver = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    run = tmp_path / "tune" / "killed"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and driver.poll() is None:
        states = list(run.glob("experiment_state-*.json"))
        if states and '\\"status\\": \\"TERMINATED\\"' in states[0].read_text():
            break  # Tune has recorded a finished trial; the next one is running
        time.sleep(0.2)
    assert driver.poll() is None, "the sweep ended before it could be interrupted"
    os.killpg(driver.pid, signal.SIGKILL)  # only the driver this test started
    driver.wait()
    finished = _terminated(run)
    assert 1 <= len(finished) < 6
    before = {t: (run / t / "progress.csv").read_bytes() for t in finished}
    subprocess.run(
        command,
        cwd=REPO,
        env=env,
        check=True,
        timeout=400,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    table = pd.read_csv(run / "results.csv")
    assert len(table) == 6 and (table["status"] == "ok").all()
    assert (table["epochs_run"] == table["epochs"]).all()
    assert {t: (run / t / "progress.csv").read_bytes() for t in finished} == before


def _terminated(run: Path) -> list[str]:
    """Trials Tune's experiment state records as finished (what a resume goes by)."""
    state = json.loads(sorted(run.glob("experiment_state-*.json"))[0].read_text())
    trials = [json.loads(t[0]) for t in state["trial_data"]]
    return [t["relative_logdir"] for t in trials if t["status"] == "TERMINATED"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_trial_asking_for_two_workers_runs_a_torch_trainer(ray_local, tmp_path):
    cfg = _config(
        tmp_path,
        space={"unfreeze": [1], "lr": [0.01], "epochs": 2, "batch_size": 8},
        train={"workers": 2, "cpus_per_worker": 0.5},
    )
    result = run_sweep(TuneJobConfig.model_validate(cfg))
    (row,) = result.table
    assert row["status"] == "ok" and row["epochs_run"] == 2
    # the checkpoint came from the TorchTrainer's rank 0, through TuneReportCallback
    assert f"/{row['trial']}/train/" in row["checkpoint"]
    net = load(result.best_model)
    (features,) = FeatureSet.under(str(tmp_path / "features"))
    assert evaluate(net, features, "val").accuracy == pytest.approx(row["best"])


@pytest.mark.timeout(600)
def test_compare_preset_writes_the_three_row_table(ray_local, tmp_path):
    cfg = _config(tmp_path, preset="compare", compare={"epochs": 2, "batch_size": 16})
    result = run_sweep(TuneJobConfig.model_validate(cfg))
    rows = {r["row"]: r for r in result.compare}
    assert list(rows) == ["scratch", "frozen", "fine-tuned"]
    assert [rows[r]["unfreeze"] for r in rows] == ["all", "0", "2"]
    for row in rows.values():
        assert 0 <= row["test_accuracy"] <= 1 and row["seconds"] > 0 and row["epochs"] == 2
    page = Path(result.report).read_text()
    assert "Scratch vs frozen vs fine-tuned" in page and "fine-tuned" in page
    # (c) is a second stage that started from (b)'s best checkpoint
    assert (Path(result.path) / "fine-tuned").is_dir()


@pytest.mark.slow
@pytest.mark.shared
@needs_shared(SHARED / "data" / "flowers128", MOBILENET_WEIGHTS)
@pytest.mark.timeout(1800)
def test_flowers_compare_preset_pretrained_rows_beat_scratch(ray_local, tmp_path):
    """The compare preset through its job config: frozen and fine-tuned beat scratch by 15
    points of val accuracy, and fine-tuned beats frozen."""
    cfg = load_config(
        TuneJobConfig,
        str(REPO / "jobs/configs/tune_flowers_compare.yaml"),
        [
            f"model.weights={MOBILENET_WEIGHTS}",
            f"data.sources=[{SHARED / 'data' / 'flowers128'}]",
            f"featurize.out={tmp_path / 'features'}",
            f"sweep.storage={tmp_path / 'tune'}",
        ],
    )
    result = run_sweep(cfg)
    val = {r["row"]: r["val_accuracy"] for r in result.compare}
    assert val["frozen"] >= val["scratch"] + 0.15
    assert val["fine-tuned"] >= val["scratch"] + 0.15
    assert val["fine-tuned"] > val["frozen"]


def test_the_depth_line_names_the_winner_by_its_margin_and_a_tie_as_one():
    from pipeline.tune.results import depth_line

    rows = [
        {"unfreeze": 0, "best": 0.70},
        {"unfreeze": 2, "best": 0.80},
        {"unfreeze": 2, "best": 0.75},  # a depth's best trial speaks for it
        {"unfreeze": 1, "best": 0.60},
        {"row": "scratch", "unfreeze": 0, "best": 0.99},  # a compare preset's row: not a depth
    ]
    assert depth_line(rows, "val_accuracy", "max") == (
        "unfreeze 2 won: best val_accuracy 0.8000 vs 0.7000 for unfreeze 0 (by 0.1000); "
        "unfreeze 1: 0.6000"
    )
    assert depth_line(rows, "val_loss", "min").startswith("unfreeze 1 won: best val_loss 0.6000")
    tie = [{"unfreeze": 0, "best": 1.0}, {"unfreeze": 1, "best": 1.0}, {"unfreeze": 2, "best": 0.5}]
    assert depth_line(tie, "val_accuracy", "max") == (
        "unfreeze 0, 1 tied: best val_accuracy 1.0000; unfreeze 2: 0.5000"
    )
    assert depth_line(rows[:1], "val_accuracy", "max") == ""  # one depth: nothing to compare
