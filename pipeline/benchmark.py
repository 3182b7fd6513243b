"""Measured performance claims: the project's pipeline against a plain PyTorch baseline, same run.

Each benchmark prints its figures and returns them as a dict. ``jobs/benchmark.py`` is the CLI.
"""

from __future__ import annotations

import csv
import os
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline import featureset as fset
from pipeline import sources
from pipeline.featurize import FeaturizeConfig, featurize
from pipeline.surgery import TransferLearning
from pipeline.zoo import Preprocess


class PeakRSS:
    """Peak resident memory of this process and all its descendants (Ray's workers included
    when this process started Ray), sampled once a second while in the ``with`` block (reading PSS is not free: sampling faster
slowed the measured loops down). Summed as
    PSS (each shared page split among the processes mapping it), since plain RSS would count
    torch's libraries and Ray's shared-memory object store once per process."""

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        me = psutil.Process()
        while not self._stop.wait(1.0):
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_full_info().pss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def gemm_peak_gflops(n: int = 1024, seconds: float = 2.0) -> float:
    """fp32 matrix-multiply rate on this machine, with all of torch's threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start, reps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def prefix_gflop_per_image(net, shape: tuple[int, ...]) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        net.prefix()(torch.zeros(1, *shape))
    return counter.get_total_flops() / 1e9


def _pick_images(data: Path | None, images: int, workdir: Path) -> Path:
    """A folder-per-class root: ``data`` or a generated set."""
    if data is not None and data.exists():
        return data
    root = workdir / "generated"
    sources.generate_shapes(root, per_class=max(1, images // len(sources.SHAPES)), size=128)
    return root


def _manifest_of(paths: list[str], labels: list[str], workdir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "images.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        writer.writerows([p, lab, "train"] for p, lab in zip(paths, labels))
    return path


def baseline_featurize(root: Path, samples, net, preprocess: Preprocess, batch_size: int,
                       workers: int, out: Path) -> float:
    """The loop a PyTorch user writes: ImageFolder + DataLoader + the prefix + pyarrow."""
    from torchvision.datasets import ImageFolder

    dataset = ImageFolder(str(root), transform=preprocess.transform())
    dataset.samples = dataset.imgs = samples
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    prefix, shapes = net.prefix(), net.frontier_shapes()
    schema = fset.feature_schema(shapes, "float32")
    start, n = time.perf_counter(), 0
    with pq.ParquetWriter(out, schema, compression=fset.COMPRESSION) as writer, torch.inference_mode():
        for images, labels in loader:
            features = {k: v.numpy() for k, v in prefix(images).items()}
            paths = [p for p, _ in samples[n:n + len(labels)]]
            meta = {fset.ID: [sources.item_id(p) for p in paths],
                    fset.SOURCE: paths, fset.LABEL: labels.numpy(),
                    fset.SPLIT: ["train"] * len(labels), fset.VIEW: [0] * len(labels)}
            writer.write_table(fset.to_table(meta, features, schema))
            n += len(labels)
    return n / (time.perf_counter() - start)


def featurize_memory_benchmark(model: str, weights: str | None, cut: str, images: int,
                               factor: int, size: int, batch_size: int) -> dict:
    """Peak RSS of the pipeline on ``images`` and on ``factor`` times as many generated images
    (small, so it runs in a minute): streaming keeps it flat."""
    net = TransferLearning(model, weights=weights).set_feature_extractor(cut).build()
    preprocess = Preprocess(**dict(net.spec["preprocess"], resize_size=size, crop_size=size))
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        sources.generate_shapes(root, per_class=images * factor // len(sources.SHAPES), size=size)
        folder = sorted(root.rglob("*.png"))
        for n in (images, images * factor):
            manifest = _manifest_of([str(p) for p in folder[:n]],
                                    [p.parent.name for p in folder[:n]], Path(tmp) / str(n))
            items = sources.list_items(sources.DataConfig(sources=[str(manifest)]))
            cfg = FeaturizeConfig(out=f"{tmp}/features{n}", batch_size=batch_size,
                                  preprocess=preprocess)
            with PeakRSS() as rss:
                result = featurize(net, items, cfg, progress=None)
            peaks[n] = rss.peak / 2**20
            print(f"{n} images at {size} px: {result.images_per_s:.1f} images/s, "
                  f"peak RSS {peaks[n]:.0f} MiB")
    ratio = peaks[images * factor] / peaks[images]
    print(f"peak RSS grows {ratio:.2f}x for {factor}x the images")
    return {"peak_rss_mb": peaks, "rss_ratio": ratio}


def featurize_benchmark(data: Path | None, model: str, weights: str | None, cut: str,
                        images: int, batch_size: int, workers: int, actors: int) -> dict:
    """Throughput of :func:`pipeline.featurize.featurize` vs the plain loop on the same images,
    model, resolution and batch size; peak RSS of each; achieved GFLOP/s vs the GEMM peak;
    float16 vs float32 bytes on disk."""
    from torchvision.datasets import ImageFolder

    net = TransferLearning(model, weights=weights).set_feature_extractor(cut).build()
    preprocess = Preprocess(**net.spec["preprocess"])
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        root = _pick_images(data, images, workdir)
        folder = ImageFolder(str(root))
        samples = folder.samples[:: max(1, len(folder.samples) // images)][:images]
        items = sources.list_items(sources.DataConfig(sources=[str(_manifest_of(
            [p for p, _ in samples], [folder.classes[c] for _, c in samples], workdir))]))
        print(f"{len(samples)} images from {root}, {model} cut at {cut!r}, "
              f"{preprocess.crop_size} px, batch {batch_size}")
        with PeakRSS() as rss_base:
            base_rate = baseline_featurize(root, samples, net, preprocess, batch_size, workers,
                                           workdir / "baseline.parquet")
        print(f"plain PyTorch (DataLoader, {workers} workers): {base_rate:.1f} images/s")
        cfg = FeaturizeConfig(out=str(workdir / "features"), batch_size=batch_size,
                              actors=actors)
        with PeakRSS() as rss_ours:
            result = featurize(net, items, cfg, progress=None)
        ours_rate = result.images_per_s
        print(f"pipeline ({actors} actor(s), {cfg.dtype}): {ours_rate:.1f} images/s")
        # The baseline stored the same rows and columns as float32, in row groups of a batch.
        half = sum(p.stat().st_size for p in Path(result.feature_sets[0].uri).glob("part-*"))
        single = (workdir / "baseline.parquet").stat().st_size
    gflop = prefix_gflop_per_image(net, tuple(net.spec["input_shape"]))
    peak = gemm_peak_gflops()
    figures = {
        "images": len(samples), "baseline_images_per_s": base_rate,
        "pipeline_images_per_s": ours_rate, "throughput_ratio": ours_rate / base_rate,
        "baseline_peak_rss_mb": rss_base.peak / 2**20,
        "pipeline_peak_rss_mb": rss_ours.peak / 2**20,
        "prefix_gflop_per_image": gflop, "pipeline_gflops": gflop * ours_rate,
        "gemm_peak_gflops": peak, "float16_over_float32_bytes": half / single}
    print(f"throughput: pipeline {ours_rate:.1f} vs plain {base_rate:.1f} images/s = "
          f"{figures['throughput_ratio']:.2f}x")
    print(f"peak RSS: pipeline {figures['pipeline_peak_rss_mb']:.0f} MiB (driver + Ray "
          f"processes), plain {figures['baseline_peak_rss_mb']:.0f} MiB")
    print(f"compute: {gflop:.2f} GFLOP/image -> {figures['pipeline_gflops']:.1f} GFLOP/s achieved "
          f"vs {peak:.1f} GFLOP/s fp32 GEMM peak ({figures['pipeline_gflops'] / peak:.0%})")
    print(f"storage: float16 parts are {figures['float16_over_float32_bytes']:.0%} of float32")
    return figures


def _epoch_seconds(head, data, batch_size: int, config, epoch: int) -> float:
    from pipeline.finetune import build_optimizer
    from pipeline.train import epoch_order, train_epoch

    order = epoch_order(len(data), len(data), batch_size, seed=0, epoch=epoch)
    opt, sched = build_optimizer(head, config, total_steps=len(order))
    start = time.perf_counter()
    train_epoch(head, data.batches(order, epoch, "cpu"), opt, sched, config)
    return time.perf_counter() - start


def baseline_end_to_end_epoch(samples, net, preprocess: Preprocess, batch_size: int,
                              workers: int, config) -> float:
    """The loop a PyTorch user writes: ImageFolder-style dataset + DataLoader, the frozen prefix
    under no_grad, the head trained; one epoch."""
    from PIL import Image

    from pipeline.finetune import build_optimizer

    transform = preprocess.transform()

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(samples)

        def __getitem__(self, i):
            path, label = samples[i]
            with Image.open(path) as image:
                return transform(image.convert("RGB")), label

    loader = torch.utils.data.DataLoader(Images(), batch_size=batch_size, shuffle=True,
                                         num_workers=workers)
    prefix, head = net.prefix(), net.trainable().train()
    opt, _ = build_optimizer(net, config, total_steps=len(loader))
    start = time.perf_counter()
    for images, labels in loader:
        with torch.no_grad():
            features = prefix(images)
        loss = torch.nn.functional.cross_entropy(head(*features.values()), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def fit_benchmark(data: Path | None, model: str, weights: str | None, cut: str, head: str,
                  images: int, batch_size: int, workers: int, epochs: int) -> dict:
    """One training epoch of the trainable part from a feature set vs end to end through the
    frozen prefix, on the same images, plus the plain PyTorch end-to-end loop for reference.
    Epochs run in this process (the per-worker loop of :mod:`pipeline.train`, without Ray
    Train's start-up and per-epoch checkpoint, which are reported by every fit)."""
    from torchvision.datasets import ImageFolder

    from pipeline.finetune import FineTuneConfig
    from pipeline.train import FeatureData, ImageData

    config = FineTuneConfig(optimizer="adamw", lr=1e-3)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        folder = ImageFolder(str(_pick_images(data, images, workdir)))
        samples = folder.samples[:: max(1, len(folder.samples) // images)][:images]
        items = sources.list_items(sources.DataConfig(sources=[str(_manifest_of(
            [p for p, _ in samples], [folder.classes[c] for _, c in samples], workdir))]))
        torch.manual_seed(0)
        net = (TransferLearning(model, weights=weights).set_feature_extractor(cut)
               .n_out_replace(head, len(items.classes)).build())
        preprocess = Preprocess(**net.spec["preprocess"])
        print(f"{len(samples)} images, {model} frozen through {cut!r}, head {head!r}, "
              f"{preprocess.crop_size} px, batch {batch_size}")
        fs = featurize(net, items, FeaturizeConfig(out=str(workdir / "features")),
                       progress=None).feature_sets[0]
        features = FeatureData(fs, "train", (0, 1), plain=False)
        from_features = sorted(_epoch_seconds(net.trainable(), features, batch_size, config, e)
                               for e in range(1, epochs + 1))[epochs // 2]
        images_data = ImageData(items.table, "train", (0, 1), net, preprocess, None,
                                89_478_485, "cpu")
        end_to_end = _epoch_seconds(net.trainable(), images_data, batch_size, config, 1)
        plain = baseline_end_to_end_epoch(samples, net, preprocess, batch_size, workers, config)
    figures = {"images": len(samples), "features_epoch_s": from_features,
               "end_to_end_epoch_s": end_to_end, "plain_end_to_end_epoch_s": plain,
               "speedup": end_to_end / from_features, "end_to_end_vs_plain": plain / end_to_end}
    print(f"epoch from the feature set: {from_features:.3f} s (median of {epochs})")
    print(f"epoch end to end through the frozen prefix: {end_to_end:.1f} s "
          f"(plain PyTorch loop with {workers} DataLoader workers: {plain:.1f} s)")
    print(f"from features: {figures['speedup']:.0f}x faster per epoch than end to end")
    return figures


def sweep_benchmark(data: Path | None, model: str, weights: str | None, head: str,
                    images: int, trials: int, epochs: int, batch_size: int, workers: int) -> dict:
    """An ``trials``-trial sweep over 3 unfreeze depths with every cut featurized once before
    the trials vs the same sweep (same sampled configs) with each trial featurizing for itself;
    plus one plain PyTorch featurize pass over the same images (DataLoader + the deepest cut's
    prefix), the floor of what each trial of a plain per-trial sweep pays."""
    from torchvision.datasets import ImageFolder

    from pipeline.config import TuneJobConfig
    from pipeline.tune import cut_for, run_sweep

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        root = _pick_images(data, images, workdir)
        folder = ImageFolder(str(root))
        samples = folder.samples[:: max(1, len(folder.samples) // images)][:images]
        manifest = workdir / "images.csv"
        with manifest.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label"])
            writer.writerows([p, folder.classes[c]] for p, c in samples)
        base = {"model": {"name": model, "weights": weights}, "head": head,
                "data": {"sources": [str(manifest)], "splits": {"train": 0.8, "val": 0.2}},
                "featurize": {"out": str(workdir / "features"), "batch_size": batch_size},
                "space": {"unfreeze": [0, 1, 2], "lr": {"loguniform": [1e-4, 1e-2]},
                          "epochs": epochs, "batch_size": 32},
                "num_samples": trials, "asha": None, "storage": str(workdir / "tune"),
                "cpus_per_trial": 1}
        print(f"{len(samples)} images, {model}, {trials} trials over unfreeze depths 0/1/2, "
              f"{epochs} epochs each, {os.cpu_count()} CPUs")
        start = time.perf_counter()
        reuse = run_sweep(TuneJobConfig.model_validate(dict(base, name="reuse")), progress=None)
        reuse_s = time.perf_counter() - start
        start = time.perf_counter()
        per_trial = run_sweep(TuneJobConfig.model_validate(
            dict(base, name="per-trial", feature_cache="per_trial")), progress=None)
        per_trial_s = time.perf_counter() - start
        whole = TransferLearning(model, weights=weights).build()
        net = (TransferLearning(model, weights=weights)
               .set_feature_extractor(*cut_for(whole, 2, head)).build())
        rate = baseline_featurize(root, samples, net, Preprocess(**net.spec["preprocess"]),
                                  batch_size, workers, workdir / "plain.parquet")
    configs = lambda s: sorted((r["unfreeze"], round(r["lr"], 12)) for r in s.table)  # noqa: E731
    if configs(reuse) != configs(per_trial):
        raise RuntimeError("the two sweeps sampled different trials; the comparison is void")
    figures = {"images": len(samples), "trials": trials, "reuse_s": reuse_s,
               "reuse_featurize_s": reuse.featurize_seconds, "per_trial_s": per_trial_s,
               "speedup": per_trial_s / reuse_s, "plain_featurize_s": len(samples) / rate,
               "best_reuse": reuse.best["best"], "best_per_trial": per_trial.best["best"]}
    print(f"sweep with every cut featurized once: {reuse_s:.0f} s "
          f"(of which featurize {reuse.featurize_seconds:.0f} s)")
    print(f"same sweep, each trial featurizing for itself: {per_trial_s:.0f} s")
    print(f"reuse: {figures['speedup']:.1f}x faster; a plain PyTorch featurize pass over these "
          f"images takes {figures['plain_featurize_s']:.0f} s, so a plain per-trial sweep spends "
          f"at least {trials * figures['plain_featurize_s']:.0f} s featurizing")
    print(f"best val accuracy: {figures['best_reuse']:.3f} (reuse) vs "
          f"{figures['best_per_trial']:.3f} (per trial)")
    return figures
