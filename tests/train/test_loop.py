"""The epoch loop without Ray: fit_local, and one epoch from features equal to one end to end."""

from dataclasses import replace

import torch

from conftest import TINY, frozen_tensors, same_tensors
from pipeline.net.builder import TransferLearning
from pipeline.net.finetune import build_optimizer
from pipeline.settings import FineTuneConfig
from pipeline.train.data import FeatureData, epoch_order
from pipeline.train.images import ImageData
from pipeline.train.loop import accuracy_from_features, fit_local, train_epoch


def test_fit_local_trains_the_head_in_the_full_network():
    net = TransferLearning("tiny:cnn").set_feature_extractor("flatten").build()
    labels = torch.arange(64) % 2
    x = torch.randn(64, 3, 32, 32)
    x[:, 0] += labels[:, None, None] * 2.0 - 1.0  # the class shifts the first channel
    features = net.featurize(x)
    frozen_before = frozen_tensors(net)
    history = fit_local(net, features, labels, FineTuneConfig(lr=0.01), epochs=30, batch_size=16)
    assert history[-1] < history[0]
    assert accuracy_from_features(net, features, labels) > 0.9
    net.eval()
    assert torch.equal(net(x), net.output_from_featurized(features))  # copy-back: same weights
    assert same_tensors(frozen_before, frozen_tensors(net))


def test_one_epoch_from_features_equals_one_epoch_end_to_end(tiny_features, tiny_net):
    """No augmentation, float32 features, the same data order: the same trainable weights."""
    fine_tune = FineTuneConfig(optimizer="sgd", lr=0.05)
    plan = tiny_features["items"]
    units = [
        replace(u, files=tuple(f for f in u.files if not f[1].endswith("broken.png")))
        for u in plan.units
    ]
    readable = replace(plan, units=units)  # what the feature set holds: broken.png recorded
    results, sizes = [], []
    for kind in ("features", "images"):
        net = tiny_net(cut="features.0")
        if kind == "features":
            data = FeatureData.read(tiny_features["features.0"], "train")
        else:
            data = ImageData(readable, "train", (0, 1), net, None, "cpu", preprocess=TINY)
        order = epoch_order(len(data), len(data), 8, seed=0, epoch=1)
        opt, sched = build_optimizer(net, fine_tune, total_steps=len(order))
        torch.manual_seed(7)  # the same dropout masks
        train_epoch(net.trainable(), data.batches(order, 1, "cpu"), opt, sched, fine_tune)
        results.append(
            {k: v for k, v in net.state_dict().items() if k not in net.frozen_parameter_names()}
        )
        sizes.append(len(data))
    assert sizes[0] == sizes[1] > 30  # the same rows: the feature set recorded broken.png
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], atol=1e-4, rtol=0)
