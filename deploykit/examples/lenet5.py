"""LeNet-5 as Deep Compression (Han et al., 2016) compressed it: Caffe's `lenet` (28x28x1 -> 10).

conv1 20@5x5 -> max-pool 2 -> conv2 50@5x5 -> max-pool 2 -> fc1 800->500 -> ReLU -> fc2 500->10,
431,080 parameters (1.72 MB in fp32), the network of the paper's "LeNet-5: 39x at no loss" row
(tools/deep_compression.py reproduces it on real digits). Caffe's definition has no activation
after the convolutions; neither has this one. Seeded weights, untrained.
"""

from collections import OrderedDict

import torch
from torch import nn


def build() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 20, 5)), ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(20, 50, 5)), ("pool2", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(50 * 4 * 4, 500)), ("relu", nn.ReLU()),
        ("fc2", nn.Linear(500, 10))])).eval()


def example_inputs() -> tuple:
    return (torch.zeros(1, 1, 28, 28),)
