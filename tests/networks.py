"""Networks only the tests use (the tiny CNN and ResNet are the zoo's ``tiny:*`` examples)."""

import torch
from torch import nn


class SequenceClassifier(nn.Module):
    """Input layer, LSTM, per-step output layer: the network of the "add untrained neurons to a
    trained LSTM" question. Input (batch, steps, features) -> (batch, steps, classes)."""

    def __init__(self, n_features: int = 4, n_hidden: int = 16, n_classes: int = 3):
        super().__init__()
        self.input = nn.Linear(n_features, n_hidden)
        self.lstm = nn.LSTM(n_hidden, n_hidden, batch_first=True)
        self.output = nn.Linear(n_hidden, n_classes)

    def forward(self, x):
        out, _ = self.lstm(torch.tanh(self.input(x)))
        return self.output(out)
