"""The demo flow: surgery on a pretrained network, featurize once, fit the head, save, reload.

Example::

    >>> from pipeline.config import DemoConfig
    >>> from pipeline.demo import run_demo
    >>> summary = run_demo(DemoConfig(images_per_class=4, epochs=1, out="/tmp/demo"))
"""

from __future__ import annotations

import hashlib
import time

import torch
from PIL import Image

from pipeline import sources, zoo
from pipeline.config import DemoConfig
from pipeline.surgery import TransferLearning, load
from pipeline.train import accuracy_from_features, fit_local


def _is_val(path, fraction: float) -> bool:
    # Deterministic split by a hash of the file name: stable across machines and re-runs.
    digest = hashlib.sha256(path.name.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _load_images(paths, transform) -> tuple[torch.Tensor, list[int]]:
    images, kept = [], []
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                images.append(transform(image.convert("RGB")))
            kept.append(i)
        except (OSError, ValueError) as e:
            print(f"skipped {path}: {e}")
    return torch.stack(images), kept


def run_demo(cfg: DemoConfig) -> dict:
    """Run the demo end to end and print what it did; returns the summary."""
    start = time.perf_counter()
    data = cfg.data or cfg.out / "data"
    if cfg.data is None:
        sources.generate_shapes(data, cfg.images_per_class, cfg.image_size, cfg.seed)
    paths, labels, classes = sources.folder_items(data)
    zm = zoo.load_model(cfg.model, cfg.weights)
    net = (TransferLearning(zm).set_feature_extractor(cfg.cut)
           .n_out_replace(cfg.head, len(classes))
           .fine_tune_configuration(cfg.fine_tune).build())
    print(f"{zm.name}: frozen {len(net.frozen)} of {len(net.nodes())} nodes, "
          f"frontier {net.frontier_shapes()}")

    images, kept = _load_images(paths, zm.preprocess.transform())
    labels = torch.tensor([labels[i] for i in kept])
    is_val = torch.tensor([_is_val(paths[i], cfg.val_fraction) for i in kept])
    t0 = time.perf_counter()
    features = net.featurize(images, batch_size=cfg.batch_size)
    rate = len(images) / (time.perf_counter() - t0)
    train = {k: v[~is_val] for k, v in features.items()}
    val = {k: v[is_val] for k, v in features.items()}
    history = fit_local(net, train, labels[~is_val], epochs=cfg.epochs, batch_size=cfg.batch_size)

    summary = {"classes": classes, "images": len(images), "skipped": len(paths) - len(kept),
               "featurize_images_per_s": round(rate, 1), "final_loss": round(history[-1], 4),
               "train_accuracy": accuracy_from_features(net, train, labels[~is_val]),
               "val_accuracy": accuracy_from_features(net, val, labels[is_val])}
    net.save(str(cfg.out / "model"))
    reloaded = accuracy_from_features(load(str(cfg.out / "model")), val, labels[is_val])
    if reloaded != summary["val_accuracy"]:
        raise RuntimeError(f"the reloaded network scores {reloaded} on val, the trained one "
                           f"{summary['val_accuracy']}: save/load lost something")
    summary["seconds"] = round(time.perf_counter() - start, 1)
    print(f"{len(images)} images ({summary['skipped']} skipped), {len(classes)} classes, "
          f"featurized at {rate:.1f} img/s; val accuracy {summary['val_accuracy']:.3f} "
          f"(train {summary['train_accuracy']:.3f}); saved to {cfg.out / 'model'} "
          f"in {summary['seconds']} s")
    return summary
