"""A small ResNet-style CNN (~5 ms on 2 Zen 4 cores with ORT): the embedded demo model.

Plain torch with seeded weights, so it needs no download. `build()` returns the module;
`example_inputs()` the tensors the exporter traces with.
"""

import torch
from torch import nn

# absolute: this file is also loaded by path, as a factory file (export tinyresnet.py:build)
from deploykit.examples.resnet import Basic


class Block(Basic):
    """resnet.Basic under this model's own names: its projection is `down` (layers.1.down/Conv)."""

    shortcut = "down"


class TinyResNet(nn.Module):
    def __init__(self, widths=(32, 64, 128, 256), num_classes: int = 100):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            layers.append(Block(cin, w, 1 if i == 0 else 2))
            cin = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def trained_like_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine weights (from torch's current seed), as a
    trained model has, so BN folding is really tested; returns the model in eval mode."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


def build() -> nn.Module:
    torch.manual_seed(0)
    return trained_like_bn(TinyResNet())


def example_inputs() -> tuple[torch.Tensor, ...]:
    torch.manual_seed(1)
    return (torch.randn(1, 3, 176, 176),)
