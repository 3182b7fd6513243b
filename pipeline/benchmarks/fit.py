"""Training epochs: from a feature set against end to end through the frozen prefix, and the
plain PyTorch end-to-end loop.

Example (the plain loop's epoch on a small folder):

    >>> from torchvision.datasets import ImageFolder
    >>> from pipeline.benchmarks.fit import baseline_end_to_end_epoch
    >>> from pipeline.settings import FineTuneConfig, Preprocess
    >>> from pipeline.net.builder import TransferLearning
    >>> net = TransferLearning("tiny:cnn").set_feature_extractor("pool").build()
    >>> seconds = baseline_end_to_end_epoch(ImageFolder(shapes).samples, net,
    ...                                     Preprocess(**net.spec["preprocess"]), batch_size=8,
    ...                                     workers=0, config=FineTuneConfig())
    >>> seconds > 0
    True
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from pipeline.benchmarks.common import sample_images, torchvision_transform
from pipeline.data.listing import plan_data
from pipeline.features.run import featurize
from pipeline.net.builder import TransferLearning
from pipeline.net.finetune import build_optimizer
from pipeline.settings import DataConfig, FeaturizeConfig, FineTuneConfig, Preprocess
from pipeline.train.data import FeatureData, epoch_order
from pipeline.train.images import ImageData
from pipeline.train.loop import train_epoch

log = logging.getLogger(__name__)


def _epoch_seconds(head, data, batch_size: int, config, epoch: int) -> float:
    order = epoch_order(len(data), len(data), batch_size, seed=0, epoch=epoch)
    opt, sched = build_optimizer(head, config, total_steps=len(order))
    start = time.perf_counter()
    train_epoch(head, data.batches(order, epoch, "cpu"), opt, sched, config)
    return time.perf_counter() - start


def baseline_end_to_end_epoch(
    samples, net, preprocess: Preprocess, batch_size: int, workers: int, config
) -> float:
    """The loop a PyTorch user writes: ImageFolder-style dataset + DataLoader, the frozen prefix
    under no_grad, the head trained; one epoch."""
    plain = torchvision_transform(preprocess)

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(samples)

        def __getitem__(self, i):
            path, label = samples[i]
            with Image.open(path) as image:
                return plain(image.convert("RGB")), label

    loader = torch.utils.data.DataLoader(
        Images(), batch_size=batch_size, shuffle=True, num_workers=workers
    )
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


def fit_benchmark(
    data: Path | None,
    model: str,
    weights: str | None,
    cut: str,
    head: str,
    images: int,
    batch_size: int,
    workers: int,
    epochs: int,
) -> dict:
    """One training epoch of the trainable part from a feature set vs end to end through the
    frozen prefix, on the same images, plus the plain PyTorch end-to-end loop for reference.
    Epochs run in this process (the per-worker loop of :mod:`pipeline.train.loop`, without Ray
    Train's start-up and per-epoch checkpoint, which are reported by every fit)."""
    config = FineTuneConfig(optimizer="adamw", lr=1e-3)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        sample = sample_images(data, images, workdir)
        samples = sample.samples
        items = plan_data(DataConfig(sources=[str(sample.manifest)]))
        torch.manual_seed(0)
        net = (
            TransferLearning(model, weights=weights)
            .set_feature_extractor(cut)
            .n_out_replace(head, len(items.classes))
            .build()
        )
        preprocess = Preprocess(**net.spec["preprocess"])
        log.info(
            f"{len(samples)} images, {model} frozen through {cut!r}, head {head!r}, "
            f"{preprocess.crop_size} px, batch {batch_size}"
        )
        fs = featurize(net, items, FeaturizeConfig(out=str(workdir / "features"))).feature_sets[0]
        features = FeatureData.read(fs, "train", (0, 1), plain=False)
        from_features = sorted(
            _epoch_seconds(net.trainable(), features, batch_size, config, e)
            for e in range(1, epochs + 1)
        )[epochs // 2]
        images_data = ImageData(items, "train", (0, 1), net, None, "cpu")
        end_to_end = _epoch_seconds(net.trainable(), images_data, batch_size, config, 1)
        plain = baseline_end_to_end_epoch(samples, net, preprocess, batch_size, workers, config)
    figures = {
        "images": len(samples),
        "features_epoch_s": from_features,
        "end_to_end_epoch_s": end_to_end,
        "plain_end_to_end_epoch_s": plain,
        "speedup": end_to_end / from_features,
        "end_to_end_vs_plain": plain / end_to_end,
    }
    log.info(f"epoch from the feature set: {from_features:.3f} s (median of {epochs})")
    log.info(
        f"epoch end to end through the frozen prefix: {end_to_end:.1f} s "
        f"(plain PyTorch loop with {workers} DataLoader workers: {plain:.1f} s)"
    )
    log.info(f"from features: {figures['speedup']:.0f}x faster per epoch than end to end")
    return figures
