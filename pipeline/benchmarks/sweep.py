"""Sweeps: every cut featurized once before the trials against each trial featurizing for
itself, and one plain PyTorch featurize pass.

Example (what makes two sweeps comparable: the same sampled trials):

    >>> from pipeline.benchmarks.sweep import sampled
    >>> sampled([{"unfreeze": "2", "lr": 0.0003}, {"unfreeze": "0", "lr": 0.001}])
    [('0', 0.001), ('2', 0.0003)]
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

from pipeline.benchmarks.common import sample_images
from pipeline.benchmarks.peers import plain_loop
from pipeline.flows.run import run_sweep
from pipeline.net.builder import TransferLearning
from pipeline.net.heads import cut_for
from pipeline.settings import TuneJobConfig

log = logging.getLogger(__name__)


def sweep_benchmark(
    data: Path | None,
    model: str,
    weights: str | None,
    head: str,
    images: int,
    trials: int,
    epochs: int,
    batch_size: int,
    workers: int,
) -> dict:
    """An ``trials``-trial sweep over 3 unfreeze depths with every cut featurized once before
    the trials, then the same sweep (same sampled configs) with each trial featurizing for
    itself; one plain PyTorch featurize pass over the same images for scale. Prints each
    trial's overhead (its wall time on the driver minus its epochs' training and evaluation)
    and ends with ``reuse: R.Rx faster``."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sample = sample_images(data, images, work)
        sweep = {
            "space": {
                "unfreeze": [0, 1, 2],
                "lr": {"loguniform": [1e-4, 1e-2]},
                "epochs": epochs,
                "batch_size": 32,
            },
            "num_samples": trials,
            "asha": None,
            "storage": str(work / "tune"),
            "cpus_per_trial": 1,
        }
        base = {
            "model": {"name": model, "weights": weights, "head": head},
            "data": {"sources": [str(sample.manifest)], "splits": {"train": 0.8, "val": 0.2}},
            "featurize": {"out": str(work / "features"), "batch_size": batch_size},
        }
        concurrent = max(1, len(os.sched_getaffinity(0)))
        log.info(
            f"{len(sample.samples)} images, {model}, {trials} trials over unfreeze depths "
            f"0/1/2, {epochs} epochs each, {concurrent} at a time"
        )
        start = time.perf_counter()
        reuse = run_sweep(TuneJobConfig.model_validate(dict(base, sweep=dict(sweep, name="reuse"))))
        reuse_s = time.perf_counter() - start
        start = time.perf_counter()
        per_trial = run_sweep(
            TuneJobConfig.model_validate(
                dict(base, sweep=dict(sweep, name="per-trial", feature_cache="per_trial"))
            )
        )
        per_trial_s = time.perf_counter() - start
        whole = TransferLearning(model, weights=weights).build()
        cut = cut_for(whole, 2, head)[0]
        start = time.perf_counter()
        done = plain_loop(
            sample.manifest, model, weights, cut, work / "plain.parquet", batch_size, workers
        )
        rate = done / (time.perf_counter() - start)
    if sampled(reuse.table) != sampled(per_trial.table):
        raise RuntimeError("the two sweeps sampled different trials; the comparison is void")
    overheads = [r["wall_s"] - r["train_s"] for r in reuse.table]
    training = sum(r["train_s"] for r in reuse.table)
    ideal = reuse.featurize_seconds + training / concurrent
    figures = {
        "images": len(sample.samples),
        "trials": trials,
        "reuse_s": reuse_s,
        "reuse_featurize_s": reuse.featurize_seconds,
        "per_trial_s": per_trial_s,
        "speedup": per_trial_s / reuse_s,
        "plain_featurize_s": len(sample.samples) / rate,
        "median_overhead_s": statistics.median(overheads),
        "training_s": training,
        "reuse_vs_ideal": reuse_s / ideal,
        "best_reuse": reuse.best["best"],
        "best_per_trial": per_trial.best["best"],
    }
    log.info(
        f"sweep with every cut featurized once: {reuse_s:.0f} s (featurize "
        f"{reuse.featurize_seconds:.0f} s, trials' own training and evaluation "
        f"{training:.0f} s over {concurrent} at a time): {figures['reuse_vs_ideal']:.2f}x "
        "featurize + training"
    )
    log.info(
        f"per-trial overhead (wall on the driver minus training and evaluation): median "
        f"{figures['median_overhead_s']:.2f} s, max {max(overheads):.2f} s"
    )
    log.info(
        f"same sweep, each trial featurizing for itself: {per_trial_s:.0f} s; a plain "
        f"PyTorch featurize pass over these images takes "
        f"{figures['plain_featurize_s']:.0f} s"
    )
    log.info(
        f"best val accuracy: {figures['best_reuse']:.3f} (reuse) vs "
        f"{figures['best_per_trial']:.3f} (per trial)"
    )
    log.info(f"reuse: {figures['speedup']:.1f}x faster")
    return figures


def sampled(table: list[dict]) -> list[tuple[str, float]]:
    """The (unfreeze, lr) of every trial of a sweep's table, sorted."""
    return sorted((str(r["unfreeze"]), round(r["lr"], 12)) for r in table)
