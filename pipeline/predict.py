"""Use an assembled network: batch inference over images at scale, and outputs from features.

``predict`` runs the same Ray Data stages as featurizing (decode tasks -> model actors -> write
tasks) with the whole network in the actors, and writes Parquet rows of id, source, label,
split, the predicted class (index and name) and every class's probability. Unreadable images go
to ``_errors.parquet``; ``_manifest.json`` is written last; an interrupted run is completed
without redoing finished rows. ``output_from_featurized`` is DL4J's helper of that name.

Example::

    >>> import ray
    >>> from pipeline import sources, surgery
    >>> from pipeline.predict import PredictConfig, predict
    >>> net = surgery.load("runs/train/my-run/model")                          # doctest: +SKIP
    >>> items = sources.list_items(sources.DataConfig(sources=["photos/"]))     # doctest: +SKIP
    >>> out = predict(net, items, PredictConfig(out="runs/predictions"))        # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from pydantic import Field

from pipeline import featureset as fset
from pipeline.featureset import ID, FeatureSet
from pipeline.featurize import (ERROR, IMAGE, AugmentConfig, PrefixModel, StageConfig,
                                actor_threads, counts, run_stages, write_errors)
from pipeline.sources import Items
from pipeline.surgery import TransferNet
from pipeline.zoo import Preprocess

if TYPE_CHECKING:
    from pipeline.config import PredictJobConfig


class PredictConfig(StageConfig):
    """Where predictions go and how the stages run."""

    out: str = Field("runs/predictions", description="the predictions directory")


class Predictor(PrefixModel):
    """The whole network in an actor: uint8 images -> class probabilities."""

    def __init__(self, files: dict[str, bytes], classes: list[str], **kwargs):
        self.classes = np.array(classes, dtype=object)
        super().__init__(files, shapes={}, dtype="float32", **kwargs)

    def build(self, net: TransferNet) -> torch.nn.Module:
        return net.eval()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = batch.pop(IMAGE)
        ok = batch[ERROR] == ""
        probabilities = np.zeros((len(ok), len(self.classes)), np.float32)
        if ok.any():
            logits = self.forward(torch.from_numpy(images[ok]))
            probabilities[ok] = torch.softmax(logits.float(), 1).cpu().numpy()
        predicted = np.where(ok, probabilities.argmax(1), -1).astype(np.int32)
        batch[fset.PROBABILITIES], batch[fset.PREDICTED] = probabilities, predicted
        batch[fset.CLASS] = np.where(ok, self.classes[np.maximum(predicted, 0)], "")
        return batch


def write_predictions(batch: dict[str, np.ndarray], *, uri: str,
                      n_classes: int) -> dict[str, np.ndarray]:
    """One part per batch (named by its rows, written atomically) plus its rejected items."""
    ok = batch[ERROR] == ""
    if ok.any():
        fs, root = fsspec.core.url_to_fs(uri)
        schema = fset.prediction_schema(n_classes)
        columns = [pa.array(np.asarray(batch[f.name][ok]), type=f.type) for f in schema
                   if f.name != fset.PROBABILITIES]
        columns.append(pa.FixedShapeTensorArray.from_numpy_ndarray(
            np.ascontiguousarray(batch[fset.PROBABILITIES][ok])))
        table = pa.Table.from_arrays(columns, schema=schema)
        fset.write_atomic(fs, f"{root}/{fset.part_name(fset.row_keys(table))}", table)
    write_errors(uri, batch)
    return counts(batch)


def _identity(net: TransferNet, items: Items) -> dict:
    spec = net.to_files()["spec.json"]
    return {"kind": "predictions", "network_sha256": hashlib.sha256(spec).hexdigest(),
            "data": items.fingerprint}


def predict(net: TransferNet, items: Items, cfg: PredictConfig | None = None,
            classes: list[str] | None = None, progress=print) -> str:
    """Classify every item with ``net`` (the assembled network) on Ray Data; returns the output
    directory. ``classes`` defaults to those the network was trained on, else the items'."""
    cfg = cfg or PredictConfig()
    classes = classes or net.spec.get("classes") or items.classes
    preprocess = Preprocess(**net.spec["preprocess"])
    identity = dict(_identity(net, items), classes=classes)
    fs, root = fsspec.core.url_to_fs(cfg.out)
    if fs.exists(f"{root}/{fset.MANIFEST}"):
        done = FeatureSet.open(cfg.out).manifest
        if {k: done.get(k) for k in identity} == identity:
            if progress:
                progress(f"predictions in {cfg.out} are complete for this network and data")
            return cfg.out
        raise FileExistsError(f"{cfg.out} holds predictions of another network or data; choose "
                              "another predict.out or remove it")
    fs.makedirs(root, exist_ok=True)
    expected = {i: 1 for i in items.table.column(ID).to_pylist()}
    finished = fset.scan(cfg.out).done_items(expected)
    mask = [i not in finished for i in items.table.column(ID).to_pylist()]
    remaining = items.table.filter(pa.array(mask, pa.bool_()))
    if remaining.num_rows:
        run_stages(remaining, cfg, preprocess, views=0, augment=AugmentConfig(),
                   model=Predictor, model_kwargs=dict(
                       files=net.to_files(), classes=classes, preprocess=preprocess,
                       device="cuda" if cfg.actor_gpus else "cpu",
                       threads=actor_threads(cfg),
                       channels_last=cfg.channels_last),
                   write=write_predictions, write_kwargs=dict(uri=cfg.out, n_classes=len(classes)),
                   progress=progress, label="predict")
    fset.finalize(cfg.out, identity, expected)
    return cfg.out


def read_predictions(uri: str) -> pa.Table:
    """The predictions of a finished :func:`predict` run, sorted by id."""
    fs = FeatureSet.open(uri)
    table = fs.table()
    return table.take(pc.sort_indices(table, [(ID, "ascending")]))


@torch.no_grad()
def output_from_featurized(net: TransferNet, features: FeatureSet | str | dict[str, torch.Tensor],
                           split: str | None = None, batch_size: int = 1024) -> torch.Tensor:
    """The network's outputs from frontier features (DL4J's ``outputFromFeaturized``): a dict of
    tensors, or a feature set (checked against the net; rows sorted by id, view 0 only)."""
    if not isinstance(features, dict):
        from pipeline.train import check_feature_set

        fs = FeatureSet.open(features) if isinstance(features, str) else features
        check_feature_set(net, fs)
        features, _ = fs.tensors(split, torch.float32, plain=True)
    model = net.trainable().eval()
    names = net.frontier()
    n = len(features[names[0]])
    outs = [model(*[features[k][i:i + batch_size].float() for k in names])
            for i in range(0, n, batch_size)]
    return torch.cat(outs) if outs else torch.zeros(0)



def run_job(cfg: PredictJobConfig, progress=print) -> str:
    """``jobs.predict``: load the exported network, classify the images, print a summary (with
    accuracy when the images carry labels of the network's classes)."""
    from pipeline.sources import list_items
    from pipeline.surgery import load

    net = load(cfg.model)
    items = list_items(cfg.data)
    out = predict(net, items, cfg.predict, progress=progress)
    table = read_predictions(out)
    line = f"{table.num_rows} predictions in {out}"
    if net.spec.get("classes") == items.classes and table.num_rows:
        correct = pc.sum(pc.equal(table.column(fset.PREDICTED), table.column(fset.LABEL))).as_py()
        line += f"; accuracy against the folder labels {correct / table.num_rows:.3f}"
    if progress is not None:
        progress(line)
    return out
