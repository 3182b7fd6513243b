"""Use an assembled network: batch inference over images at scale, and outputs from features.

``predict`` runs the shared Ray Data pass (decode tasks -> model actors -> writers, see
:mod:`pipeline.engine.dataflow`) with the whole network in the actors, and writes Parquet rows of
id, source, label, split, the predicted class (index and name) and every class's probability.
Unreadable images go to ``_errors.parquet``; ``_manifest.json`` is written last; an interrupted
run is completed unit by unit without redoing finished units. ``output_from_featurized`` is
DL4J's helper of that name.

Example (needs a running Ray):

    >>> from pipeline.data.listing import plan_data
    >>> from pipeline.net.builder import TransferLearning
    >>> from pipeline.inference.batch import predict, read_predictions
    >>> from pipeline.settings import DataConfig, PredictConfig
    >>> net = TransferLearning("tiny:cnn").n_out_replace("fc2", 5).build()
    >>> items = plan_data(DataConfig(sources=[shapes]))
    >>> net.spec["classes"] = items.classes
    >>> out = predict(net, items, PredictConfig(out=str(tmp / "predictions")))
    >>> read_predictions(out).num_rows == items.count("train") + items.count("val")
    True
"""

from __future__ import annotations

import hashlib
import logging

import pyarrow as pa
import pyarrow.compute as pc
import torch

from pipeline.data.featureset import FeatureSet
from pipeline.data.parts import clear_unfinished, finalize, finished_units
from pipeline.data.plan import DataPlan
from pipeline.data.schema import ID, LABEL, MANIFEST, PREDICTED
from pipeline.engine.actors import Predictor
from pipeline.engine.dataflow import Pass, prepare_engine, run_until_done
from pipeline.features.plan import check_feature_set
from pipeline.net.graph import TransferNet
from pipeline.net.saved import SavedNet
from pipeline.runs.storage import absolute_uri, current_fs
from pipeline.settings import PredictConfig, Preprocess

log = logging.getLogger(__name__)


def _identity(saved: SavedNet, items: DataPlan) -> dict:
    return {
        "kind": "predictions",
        "network_sha256": hashlib.sha256(saved.files["spec.json"]).hexdigest(),
        "data": items.fingerprint,
    }


def predict(
    net: TransferNet,
    items: DataPlan,
    cfg: PredictConfig | None = None,
    classes: list[str] | None = None,
) -> str:
    """Classify every planned image with ``net`` (the assembled network) on Ray Data; returns
    the output directory. ``classes`` defaults to those the network was trained on, else the
    data's; an image's ``label`` is its class's index among them (null when it has none)."""
    cfg = cfg or PredictConfig()
    # the writers run in their node's directory, not this process's
    cfg = cfg.model_copy(update={"out": absolute_uri(cfg.out)})
    classes = classes or net.spec.get("classes") or items.classes
    if not classes:
        raise ValueError("the network names no classes: pass classes=[...] to predict")
    preprocess = Preprocess(**net.spec["preprocess"])
    saved = net.saved()  # once: the output's identity and the actors' copy
    identity = dict(_identity(saved, items), classes=classes)
    fs, root = current_fs(cfg.out)
    if fs.exists(f"{root}/{MANIFEST}"):
        done = FeatureSet.open(cfg.out).manifest
        if {k: done.get(k) for k in identity} == identity:
            log.info("predict: %s is complete for this network and data; nothing computed", cfg.out)
            return cfg.out
        raise FileExistsError(
            f"{cfg.out} holds predictions of another network or data; choose "
            "another predict.out or remove it"
        )
    fs.makedirs(root, exist_ok=True)
    finished = finished_units(cfg.out) & {u.digest for u in items.units}
    clear_unfinished(cfg.out, keep=finished)
    todo = [u for u in items.units if u.digest not in finished]
    if todo:
        engine = prepare_engine(net, [], preprocess, cfg, what="the network", saved=saved)
        writer = dict(
            targets=[(cfg.out, None)],
            n_classes=len(classes),
            part_rows=cfg.part_rows,
            part_mib=cfg.part_mib,
        )
        model = dict(engine=engine, classes=classes)
        spec = Pass("predict", preprocess, Predictor, model, writer, classes=classes)
        run_until_done(todo, items, cfg, spec, [cfg.out])
    finalize(cfg.out, identity, [u.digest for u in items.units], classes)
    return cfg.out


def read_predictions(uri: str) -> pa.Table:
    """The predictions of a finished :func:`predict` run, sorted by id."""
    table = FeatureSet.open(uri).table()
    return table.take(pc.sort_indices(table, [(ID, "ascending")]))


def accuracy(predictions: pa.Table) -> float:
    """Share of the labelled predictions equal to their images' labels (NaN: none labelled)."""
    labelled = predictions.filter(pc.is_valid(predictions.column(LABEL)))
    correct = pc.sum(pc.equal(labelled.column(PREDICTED), labelled.column(LABEL))).as_py()
    return (correct or 0) / labelled.num_rows if labelled.num_rows else float("nan")


@torch.no_grad()
def output_from_featurized(
    net: TransferNet,
    features: FeatureSet | str | dict[str, torch.Tensor],
    split: str | None = None,
    batch_size: int = 1024,
) -> torch.Tensor:
    """The network's outputs from frontier features (DL4J's ``outputFromFeaturized``): a dict of
    tensors, or a feature set (checked against the net; rows sorted by id, view 0 only)."""
    if not isinstance(features, dict):
        fs = FeatureSet.open(features) if isinstance(features, str) else features
        check_feature_set(net, fs)
        features, _ = fs.tensors(split, torch.float32, plain=True)
    model = net.trainable().eval()
    names = net.frontier()
    n = len(features[names[0]])
    outs = [
        model(*[features[k][i : i + batch_size].float() for k in names])
        for i in range(0, n, batch_size)
    ]
    return torch.cat(outs) if outs else torch.zeros(0)
