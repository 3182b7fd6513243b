"""Two tiny example networks, registered in the zoo as ``tiny:cnn`` and ``tiny:resnet``: random
weights, 32 px inputs, thousands of parameters. They are for what must not wait on a real
network: the docs' examples, the ``*_tiny.yaml`` smoke configs, the benchmarks that measure
decoding and planning, and the tests. A real model is ``default``, ``torchvision:ARCH`` or
``timm:ARCH``.

Example:

    >>> import torch
    >>> from pipeline.net.tiny import TinyResNet
    >>> TinyResNet(num_classes=3)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 3])
"""

from __future__ import annotations

import torch
from torch import nn

TINY_INPUT = (3, 32, 32)
TINY_PREPROCESS = {"resize_size": 36, "crop_size": 32, "mean": (0.5,) * 3, "std": (0.5,) * 3}


class TinyCNN(nn.Module):
    """Two conv blocks and a linear classifier: a fast stand-in for a pretrained CNN."""

    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()),
            nn.Sequential(
                nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
                nn.BatchNorm2d(2 * width),
                nn.ReLU(),
            ),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(2 * width, 32)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(0.2)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.flatten(self.pool(self.features(x)))
        return self.fc2(self.dropout(self.relu(self.fc1(x))))


class TinyResNet(nn.Module):
    """A stem, two residual blocks whose skip connections cross any cut inside them, a head."""

    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.block1 = _Residual(width)
        self.block2 = _Residual(width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class _Residual(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(x + y)
