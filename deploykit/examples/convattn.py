"""A small mixed conv/attention net (~0.5 ms fp32 on 2 cores with ORT): issue 19's second kind of
benchmark model, the kind a user brings to `deploykit search` as MobileViT-style mobile vision:
a BatchNorm conv stem, MobileNetV2 inverted-residual blocks (1x1 expand, 3x3 depthwise, 1x1
project), then two pre-norm transformer blocks (multi-head self-attention written as the
transformers package writes it: Q/K/V Linear, head split, softmax, output projection; GELU MLP)
over the 8x8 feature map as 64 tokens, and a classifier.

Plain torch with seeded weights (BatchNorm statistics included), so it needs no download.
`build()` returns the module; `example_inputs()` the tensors the exporter traces with.
"""

import math

import torch
from torch import nn

# absolute: this file is also loaded by path, as a factory file (export convattn.py:build)
from deploykit.examples.tinyresnet import trained_like_bn


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4):
        super().__init__()
        mid = cin * expand
        self.body = nn.Sequential(_conv_bn(cin, mid, 1), _conv_bn(mid, mid, 3, stride, groups=mid),
                                  _conv_bn(mid, cout, 1, act=False))
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.skip else y


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape

        def split(t):  # (b, n, d) -> (b, heads, n, head_dim)
            return t.view(b, n, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim), dim=-1)
        return self.out((att @ v).transpose(1, 2).reshape(b, n, d))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int = 2):
        super().__init__()
        self.norm1, self.att = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp), nn.GELU(), nn.Linear(dim * mlp, dim))

    def forward(self, x):
        x = x + self.att(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ConvAttn(nn.Module):
    def __init__(self, dim: int = 96, heads: int = 4, depth: int = 2, num_classes: int = 100):
        super().__init__()
        self.stem = _conv_bn(3, 16, 3, 2)                            # 64 -> 32
        self.convs = nn.Sequential(InvertedResidual(16, 24, 2),      # 32 -> 16
                                   InvertedResidual(24, 24, 1),
                                   InvertedResidual(24, 48, 2),      # 16 -> 8
                                   InvertedResidual(48, 48, 1),
                                   _conv_bn(48, dim, 1))
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x):
        f = self.convs(self.stem(x))                   # (b, dim, 8, 8)
        tokens = f.flatten(2).transpose(1, 2)          # (b, 64, dim)
        return self.fc(self.norm(self.blocks(tokens)).mean(dim=1))


def build() -> nn.Module:
    torch.manual_seed(0)
    return trained_like_bn(ConvAttn())


def example_inputs() -> tuple[torch.Tensor, ...]:
    torch.manual_seed(1)
    return (torch.randn(1, 3, 64, 64),)
