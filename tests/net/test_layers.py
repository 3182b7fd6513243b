import pytest
import torch
from torch import nn

from pipeline.net import layers


@pytest.mark.parametrize(
    "layer",
    [
        nn.Linear(4, 3, bias=False),
        nn.Conv2d(3, 8, 3, stride=2, padding=1, groups=1),
        nn.BatchNorm1d(5, eps=1e-3),
        nn.LSTM(4, 6, num_layers=2, batch_first=True),
        nn.GRU(4, 6),
        nn.RNN(4, 6, nonlinearity="relu"),
        nn.Dropout(0.3),
        nn.Sequential(nn.Linear(4, 4), nn.ReLU()),
        layers.Concat(dim=2),
        layers.GlobalPool("max"),
    ],
)
def test_spec_round_trip_rebuilds_the_same_layer(layer):
    rebuilt = layers.layer_from_spec(layers.layer_to_spec(layer))
    assert type(rebuilt) is type(layer) and repr(rebuilt) == repr(layer)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in layer.state_dict().items()
    }


def test_spec_types_are_an_allow_list():
    with pytest.raises(ValueError, match="not allowed"):
        layers.layer_from_spec({"type": "os.system", "args": {}})

    class Custom(nn.Module):
        def __init__(self, k: int = 2):
            super().__init__()
            self.k = k

    with pytest.raises(ValueError, match="register_layer"):
        layers.layer_to_spec(Custom())
    layers.register_layer(Custom)
    assert layers.layer_from_spec(layers.layer_to_spec(Custom(5))).k == 5


@pytest.mark.parametrize("cls", [nn.GRU, nn.RNN, nn.LSTM])
def test_preserve_widens_recurrent_layers_exactly(cls):
    layer = cls(4, 6, num_layers=2, batch_first=True)
    x = torch.randn(2, 5, 4)
    wide = layers.resized(layer, n_out=9, preserve=True)
    assert wide.hidden_size == 9
    assert torch.allclose(wide(x)[0][..., :6], layer(x)[0], atol=1e-6)


def test_preserve_widens_inputs_with_zero_columns():
    layer = nn.Linear(4, 3)
    wide = layers.resized(layer, n_in=6, preserve=True)
    x = torch.randn(2, 4)
    assert torch.allclose(wide(torch.cat([x, torch.randn(2, 2)], 1)), layer(x), atol=1e-6)


def test_grouped_convolutions_are_not_resized():
    with pytest.raises(ValueError, match="grouped"):
        layers.resized(nn.Conv2d(8, 8, 3, groups=8), n_out=16)


def test_vertices():
    a, b = torch.ones(2, 3), torch.full((2, 3), 2.0)
    assert torch.equal(layers.Add()(a, b, b), torch.full((2, 3), 5.0))
    assert layers.Concat()(a, b).shape == (2, 6)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert layers.GlobalPool("avg")(x).item() == 7.5 and layers.GlobalPool("max")(x).item() == 15
    assert layers.layer_from_spec(layers.layer_to_spec(layers.GlobalPool("max"))).mode == "max"
