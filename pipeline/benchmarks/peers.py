"""The peers ``jobs.benchmark featurize`` measures the pipeline against: what a user would write
instead, each run as a process of its own (``python -m jobs.peer NAME``) and timed from its
start to its exit, as the pipeline's job is.

- ``plain``: the loop a PyTorch user writes: ``ImageFolder`` + ``DataLoader`` + the eager prefix
  + a pyarrow ``ParquetWriter``;
- ``plain-onnx``: the same loop with the prefix on ONNX Runtime, the engine the pipeline uses,
  so the pipeline's own share of a ratio shows;
- ``ray-data``: Ray's batch-inference recipe: ``read_images`` -> ``map_batches(preprocess)`` ->
  ``map_batches(model class)`` on one actor, eager torch -> ``write_parquet``, with Ray's
  defaults.

Example (the plain loop on a small folder):

    >>> from pipeline.benchmarks.common import sample_images
    >>> from pipeline.benchmarks.peers import plain_loop
    >>> images = sample_images(Path(shapes), 20, tmp)
    >>> plain_loop(images.manifest, "tiny:cnn", None, "pool", tmp / "plain.parquet", 8, 0)
    20
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from pipeline.benchmarks.common import torchvision_transform
from pipeline.data.plan import item_id
from pipeline.data.schema import (
    COMPRESSION,
    ID,
    LABEL,
    SOURCE,
    SPLIT,
    VIEW,
    feature_schema,
    to_table,
)
from pipeline.engine.export import build_engine
from pipeline.net.builder import TransferLearning
from pipeline.settings import Preprocess

PEERS = {
    "plain": "plain PyTorch loop (DataLoader, eager prefix)",
    "plain-onnx": "plain PyTorch loop on ONNX Runtime (the pipeline's engine)",
    "ray-data": "Ray Data batch-inference recipe (read_images, one eager torch actor)",
}


def read_manifest(manifest: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """``(path, class index)`` per image of a benchmark's manifest, and the class names."""
    with manifest.open() as f:
        rows = list(csv.DictReader(f))
    classes = sorted({r["label"] for r in rows})
    return [(r["path"], classes.index(r["label"])) for r in rows], classes


class _Files(torch.utils.data.Dataset):
    """The manifest's images through a transform, as ``ImageFolder`` reads them."""

    def __init__(self, samples: list[tuple[str, int]], transform):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        with Image.open(path) as image:
            return self.transform(image.convert("RGB")), label


def plain_loop(
    manifest: Path,
    model: str,
    weights: str | None,
    cut: str,
    out: Path,
    batch_size: int,
    workers: int,
    engine: str = "torch",
    device: str = "cpu",
) -> int:
    """The loop a PyTorch user writes, the prefix eager (``engine="torch"``, fp16 autocast on a
    GPU) or on ONNX Runtime (``"onnxruntime"``: the crops stay uint8, the engine normalizes);
    returns the images written."""
    net = TransferLearning(model, weights=weights).set_feature_extractor(cut).build()
    preprocess = Preprocess(**net.spec["preprocess"])
    samples, _ = read_manifest(manifest)
    onnx = engine == "onnxruntime"
    transform = torchvision_transform(preprocess, normalize=not onnx)
    loader = torch.utils.data.DataLoader(
        _Files(samples, transform), batch_size=batch_size, num_workers=workers
    )
    shapes = net.frontier_shapes()
    run = _onnx_prefix(net, preprocess) if onnx else _torch_prefix(net, device)
    schema, n = feature_schema(shapes, "float32"), 0
    with pq.ParquetWriter(out, schema, compression=COMPRESSION) as writer:
        for batch, labels in loader:
            features = run(batch)
            paths = [p for p, _ in samples[n : n + len(labels)]]
            meta = {
                ID: [item_id(p) for p in paths],
                SOURCE: paths,
                LABEL: labels.numpy(),
                SPLIT: ["train"] * len(labels),
                VIEW: [0] * len(labels),
            }
            writer.write_table(to_table(meta, features, schema))
            n += len(labels)
    return n


def _torch_prefix(net, device: str):
    prefix = net.prefix().to(device)

    @torch.inference_mode()
    def run(batch: torch.Tensor) -> dict[str, np.ndarray]:
        with torch.autocast("cuda", torch.float16, enabled=device == "cuda"):
            outputs = prefix(batch.to(device))
        return {k: v.float().cpu().numpy() for k, v in outputs.items()}

    return run


def _onnx_prefix(net, preprocess: Preprocess):
    runner = build_engine(
        net.prefix(), net.frontier(), preprocess, "onnxruntime", threads=torch.get_num_threads()
    )
    return lambda batch: runner(batch.numpy())


def ray_data_recipe(
    manifest: Path, model: str, weights: str | None, cut: str, out: Path, batch_size: int
) -> int:
    """Ray's batch-inference recipe as its docs write it, on the manifest's images: needs a
    running Ray (``jobs.peer`` starts a local one). Returns the rows written."""
    import ray.data  # the recipe's own dependency; this module's other peers never load Ray

    samples, _ = read_manifest(manifest)
    net = TransferLearning(model, weights=weights).build()  # for the preprocessing only
    transform = torchvision_transform(Preprocess(**net.spec["preprocess"]))

    def preprocess(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = [transform(Image.fromarray(image)).numpy() for image in batch["image"]]
        return {"path": batch["path"], "image": np.stack(images)}

    class FrozenPrefix:
        def __init__(self):
            self.net = TransferLearning(model, weights=weights).set_feature_extractor(cut).build()
            self.prefix = self.net.prefix().eval()

        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            with torch.inference_mode():
                outputs = self.prefix(torch.from_numpy(batch["image"]))
            return {"path": batch["path"], **{k: v.numpy() for k, v in outputs.items()}}

    paths = [p for p, _ in samples]
    ds = (
        ray.data.read_images(paths, mode="RGB", include_paths=True)
        .map_batches(preprocess)
        .map_batches(
            FrozenPrefix, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=1)
        )
    )
    ds.write_parquet(str(out))
    return sum(pq.ParquetFile(p).metadata.num_rows for p in Path(out).glob("*.parquet"))
