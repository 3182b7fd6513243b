"""Evaluating a network on one split of a feature set or of images: accuracy, top-k, per-class
accuracy and the confusion matrix (DL4J's ``evaluate``), in this process.

Example (needs a running Ray for the feature set):

    >>> from pipeline.train.evaluate import evaluate
    >>> evaluation = evaluate(net, feature_set, split="val")
    >>> 0 <= evaluation.accuracy <= 1, len(evaluation.confusion) == len(feature_set.classes)
    (True, True)
"""

from __future__ import annotations

from pipeline.data.featureset import FeatureSet
from pipeline.data.plan import DataPlan
from pipeline.features.plan import check_feature_set
from pipeline.net.graph import TransferNet
from pipeline.train.data import FeatureData, in_order
from pipeline.train.images import image_data
from pipeline.train.metrics import Evaluation, evaluate_batches


def evaluate(
    net: TransferNet,
    data: FeatureSet | str | DataPlan,
    split: str = "val",
    k: int = 5,
    batch_size: int = 256,
    engine: str = "auto",
) -> Evaluation:
    """Metrics, per-class accuracy and confusion matrix of ``net`` on one split of a feature set
    (through the trainable part; the set must match the net) or of planned images (the frozen
    prefix on ``engine``, then the trainable part; read in this process)."""
    if isinstance(data, DataPlan):
        if data.unlabeled(split):
            raise ValueError(f"split {split!r} has unlabeled images: nothing to score them against")
        source = image_data(data, split, (0, 1), net, augment=None, device="cpu", engine=engine)
        classes = data.classes
    else:
        fs = FeatureSet.open(data) if isinstance(data, str) else data
        check_feature_set(net, fs)
        source, classes = FeatureData.read(fs, split, (0, 1), plain=True), fs.classes
    if not len(source):
        raise ValueError(f"nothing to evaluate: split {split!r} has no rows")
    counts = evaluate_batches(
        net.trainable(), source.batches(in_order(len(source), batch_size), 0, "cpu"), k
    )
    return Evaluation.from_counts(counts, classes)
