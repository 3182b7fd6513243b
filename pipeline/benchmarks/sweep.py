"""Sweeps: every cut featurized once before the trials against each trial featurizing for
itself, and one plain PyTorch featurize pass.

Example (what makes two sweeps comparable: the same sampled trials):

    >>> from pipeline.benchmarks.sweep import sampled
    >>> sampled([{"unfreeze": "2", "lr": 0.0003}, {"unfreeze": "0", "lr": 0.001}])
    [('0', 0.001), ('2', 0.0003)]
"""

from __future__ import annotations

import csv
import logging
import os
import tempfile
import time
from pathlib import Path

from torchvision.datasets import ImageFolder

from pipeline.benchmarks.common import pick_images
from pipeline.benchmarks.featurize import baseline_featurize
from pipeline.config import TuneJobConfig
from pipeline.flows import run_sweep
from pipeline.networks import cut_for
from pipeline.settings import Preprocess
from pipeline.surgery import TransferLearning

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
    the trials vs the same sweep (same sampled configs) with each trial featurizing for itself;
    plus one plain PyTorch featurize pass over the same images (DataLoader + the deepest cut's
    prefix), the floor of what each trial of a plain per-trial sweep pays."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        root = pick_images(data, images, workdir)
        folder = ImageFolder(str(root))
        samples = folder.samples[:: max(1, len(folder.samples) // images)][:images]
        manifest = workdir / "images.csv"
        with manifest.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label"])
            writer.writerows([p, folder.classes[c]] for p, c in samples)
        base = {
            "model": {"name": model, "weights": weights},
            "head": head,
            "data": {"sources": [str(manifest)], "splits": {"train": 0.8, "val": 0.2}},
            "featurize": {"out": str(workdir / "features"), "batch_size": batch_size},
            "space": {
                "unfreeze": [0, 1, 2],
                "lr": {"loguniform": [1e-4, 1e-2]},
                "epochs": epochs,
                "batch_size": 32,
            },
            "num_samples": trials,
            "asha": None,
            "storage": str(workdir / "tune"),
            "cpus_per_trial": 1,
        }
        log.info(
            f"{len(samples)} images, {model}, {trials} trials over unfreeze depths 0/1/2, "
            f"{epochs} epochs each, {os.cpu_count()} CPUs"
        )
        start = time.perf_counter()
        reuse = run_sweep(TuneJobConfig.model_validate(dict(base, name="reuse")))
        reuse_s = time.perf_counter() - start
        start = time.perf_counter()
        per_trial = run_sweep(
            TuneJobConfig.model_validate(dict(base, name="per-trial", feature_cache="per_trial"))
        )
        per_trial_s = time.perf_counter() - start
        whole = TransferLearning(model, weights=weights).build()
        net = (
            TransferLearning(model, weights=weights)
            .set_feature_extractor(*cut_for(whole, 2, head))
            .build()
        )
        rate = baseline_featurize(
            root,
            samples,
            net,
            Preprocess(**net.spec["preprocess"]),
            batch_size,
            workers,
            workdir / "plain.parquet",
        )
    if sampled(reuse.table) != sampled(per_trial.table):
        raise RuntimeError("the two sweeps sampled different trials; the comparison is void")
    figures = {
        "images": len(samples),
        "trials": trials,
        "reuse_s": reuse_s,
        "reuse_featurize_s": reuse.featurize_seconds,
        "per_trial_s": per_trial_s,
        "speedup": per_trial_s / reuse_s,
        "plain_featurize_s": len(samples) / rate,
        "best_reuse": reuse.best["best"],
        "best_per_trial": per_trial.best["best"],
    }
    log.info(
        f"sweep with every cut featurized once: {reuse_s:.0f} s "
        f"(of which featurize {reuse.featurize_seconds:.0f} s)"
    )
    log.info(f"same sweep, each trial featurizing for itself: {per_trial_s:.0f} s")
    log.info(
        f"reuse: {figures['speedup']:.1f}x faster; a plain PyTorch featurize pass over these "
        f"images takes {figures['plain_featurize_s']:.0f} s, so a plain per-trial sweep spends "
        f"at least {trials * figures['plain_featurize_s']:.0f} s featurizing"
    )
    log.info(
        f"best val accuracy: {figures['best_reuse']:.3f} (reuse) vs "
        f"{figures['best_per_trial']:.3f} (per trial)"
    )
    return figures


def sampled(table: list[dict]) -> list[tuple[str, float]]:
    """The (unfreeze, lr) of every trial of a sweep's table, sorted."""
    return sorted((str(r["unfreeze"]), round(r["lr"], 12)) for r in table)
