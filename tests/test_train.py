import torch

from pipeline.finetune import FineTuneConfig
from pipeline.surgery import TransferLearning
from pipeline.train import accuracy_from_features, fit_local


def test_fit_local_trains_the_head_in_the_full_network():
    net = TransferLearning("tiny:cnn").set_feature_extractor("flatten").build()
    labels = torch.arange(64) % 2
    x = torch.randn(64, 3, 32, 32)
    x[:, 0] += labels[:, None, None] * 2.0 - 1.0  # the class shifts the first channel
    features = net.featurize(x)
    frozen_before = {k: v.clone() for k, v in net.state_dict().items()
                     if k in net.frozen_parameter_names()}
    history = fit_local(net, features, labels, FineTuneConfig(lr=0.01), epochs=30, batch_size=16)
    assert history[-1] < history[0]
    assert accuracy_from_features(net, features, labels) > 0.9
    net.eval()
    assert torch.equal(net(x), net.output_from_featurized(features))  # copy-back: same weights
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in frozen_before.items())


def test_same_seed_same_weights():
    def run():
        torch.manual_seed(123)
        net = TransferLearning("tiny:cnn").set_feature_extractor("flatten").build()
        x = torch.randn(32, 3, 32, 32)
        fit_local(net, net.featurize(x), torch.arange(32) % 10, epochs=2, batch_size=8)
        return net.state_dict()
    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)
