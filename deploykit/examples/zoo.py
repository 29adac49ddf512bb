"""Seeded torch nets shaped like ResNet-50 and MobileNetV2 (torchvision is not a dependency).

Structured pruning must survive the couplings these architectures have (bottleneck residuals with
projection shortcuts; inverted residuals with depthwise convs and linear bottlenecks), so tests and
benchmarks use these at reduced width/resolution, or at full width for timing.
"""

from __future__ import annotations


def _bn_init(model, seed: int) -> None:
    """Non-trivial BatchNorm statistics, so BN folding and channel coupling are really exercised."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)


def resnet50_like(width: int = 64, num_classes: int = 1000, seed: int = 0):
    """The ResNet-50 of deploykit/examples/resnet.py (bottlenecks 3-4-6-3, expansion 4,
    projection shortcuts) at stem width `width` (64: the real network, 25.6 M parameters), with
    non-trivial BatchNorm statistics."""
    import torch

    from .resnet import Bottleneck, ResNet

    torch.manual_seed(seed)
    model = ResNet(Bottleneck, [3, 4, 6, 3], num_classes, base=width)
    _bn_init(model, seed)
    return model.eval()


def mobilenetv2_like(width_mult: float = 1.0, num_classes: int = 1000, seed: int = 0):
    """MobileNetV2 layout (inverted residuals, depthwise 3x3, ReLU6, linear bottlenecks)."""
    import torch
    from torch import nn

    def ch(c):
        return max(8, int(c * width_mult + 4) // 8 * 8)

    class Inverted(nn.Module):
        def __init__(self, cin, cout, stride, t):
            super().__init__()
            hid = cin * t
            mods = []
            if t != 1:
                mods += [nn.Conv2d(cin, hid, 1, bias=False), nn.BatchNorm2d(hid), nn.ReLU6(True)]
            mods += [nn.Conv2d(hid, hid, 3, stride, 1, groups=hid, bias=False),
                     nn.BatchNorm2d(hid), nn.ReLU6(True),
                     nn.Conv2d(hid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
            self.body = nn.Sequential(*mods)
            self.res = stride == 1 and cin == cout

        def forward(self, x):
            return x + self.body(x) if self.res else self.body(x)

    torch.manual_seed(seed)
    cin = ch(32)
    layers = [nn.Conv2d(3, cin, 3, 2, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(True)]
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                       (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for i in range(n):
            layers.append(Inverted(cin, ch(c), s if i == 0 else 1, t))
            cin = ch(c)
    last = ch(1280) if width_mult > 1 else 1280
    layers += [nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(True),
               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(last, num_classes)]
    model = nn.Sequential(*layers)
    _bn_init(model, seed)
    return model.eval()
