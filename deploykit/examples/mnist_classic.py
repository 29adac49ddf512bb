"""The canonical MNIST CNN of the pytorch/examples repository (mnist/main.py `Net`), 28x28x1 -> 10.

conv 1->32 3x3 -> ReLU -> conv 32->64 3x3 -> ReLU -> max-pool 2 -> Dropout(0.25) -> Flatten ->
Linear 9216->128 -> ReLU -> Dropout(0.5) -> Linear 128->10: 1,199,882 parameters, ~12 M
multiply-adds (the second conv ~10.6 M of them), so pruning has real work to remove, where the
bundled mnist_cnn.py (~15 microseconds on ORT) is bound by the per-call overhead. The original
ends in log_softmax (its loss is NLL); this one returns the logits, as the other examples do
(the argmax is the same, and distillation works on logits). Layers as nn.Sequential (not the
original's functional forward) so torch-side filter pruning can trace it. Seeded weights,
untrained.
"""

from collections import OrderedDict

import torch
from torch import nn


def build() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 32, 3, 1)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(32, 64, 3, 1)), ("relu2", nn.ReLU()),
        ("pool", nn.MaxPool2d(2)), ("dropout1", nn.Dropout(0.25)),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(9216, 128)), ("relu3", nn.ReLU()), ("dropout2", nn.Dropout(0.5)),
        ("fc2", nn.Linear(128, 10))])).eval()


def example_inputs() -> tuple:
    return (torch.zeros(1, 1, 28, 28),)
