"""Counts, evaluations and early stopping; evaluate() on feature sets and on images agree."""

import pytest
import torch

from pipeline.inference.batch import output_from_featurized
from pipeline.train.evaluate import evaluate
from pipeline.train.metrics import Counts, Evaluation, should_stop


def test_evaluation_counts_per_class_and_confusion():
    logits = torch.tensor([[3.0, 0, 0], [0, 1, 2], [0, 0, 5], [1, 0, 2]])
    evaluation = Evaluation.from_logits(logits, torch.tensor([0, 1, 2, 2]), ["a", "b", "c"], k=2)
    assert evaluation.confusion == [[1, 0, 0], [0, 0, 1], [0, 0, 2]]
    assert evaluation.accuracy == 0.75 and evaluation.top_k == {2: 1.0}
    assert evaluation.per_class == {"a": 1.0, "b": 0.0, "c": 1.0}
    assert Evaluation.from_json(evaluation.to_json(), ["a", "b", "c"]) == evaluation


def test_counts_add_up_across_batches():
    logits, labels = torch.randn(10, 4), torch.randint(0, 4, (10,))
    whole = Counts.of(logits, labels, k=2)
    parts = Counts.of(logits[:6], labels[:6], k=2) + Counts.of(logits[6:], labels[6:], k=2)
    assert parts.n == whole.n and parts.correct == whole.correct and parts.topk == whole.topk
    assert parts.loss == pytest.approx(whole.loss) and torch.equal(parts.confusion, whole.confusion)
    assert Counts(k=2) + whole == whole  # what an empty shard contributes


def test_should_stop_after_patience_epochs_without_improvement():
    history = [{"val_accuracy": a} for a in (0.5, 0.7, 0.6, 0.7, 0.65)]
    assert not should_stop(history[:3], "val_accuracy", "max", patience=2)
    assert should_stop(history[:4], "val_accuracy", "max", patience=2)  # a tie is no improvement
    assert not should_stop(history, "val_accuracy", "max", patience=4)
    assert should_stop(history, "val_accuracy", "min", patience=4)  # 0.5, the lowest, was first
    assert not should_stop(history, "val_accuracy", "max", patience=None)


def test_evaluate_on_features_and_on_images_agree(tiny_features, tiny_net):
    net = tiny_net()
    on_features = evaluate(net, tiny_features["pool"], split="val")
    on_images = evaluate(net, tiny_features["items"], split="val")
    assert on_features.confusion == on_images.confusion
    assert on_features.per_class.keys() == set(tiny_features["items"].classes)
    logits = output_from_featurized(net, tiny_features["pool"], split="val")
    assert logits.shape == (on_features.n, len(tiny_features["items"].classes))
    with pytest.raises(ValueError, match="no rows"):
        evaluate(net, tiny_features["pool"], split="nowhere")
