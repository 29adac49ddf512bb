"""A Linear-heavy MLP: 4 x Linear(4096, 4096) with ReLU, batch 1 (weight-streaming bound)."""

import torch
from torch import nn


def build(width: int = 4096, depth: int = 4) -> nn.Module:
    torch.manual_seed(0)
    layers = []
    for i in range(depth):
        layers.append(nn.Linear(width, width))
        if i < depth - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


def example_inputs():
    torch.manual_seed(1)
    return (torch.randn(1, 4096),)
