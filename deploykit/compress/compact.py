"""Torch-side compact filters: nn.Conv2d kxk -> depthwise kxk + pointwise 1x1, SVD-initialised.

The per-input-channel SVD initialisation of `deploykit.rewrite.compact_conv` gives the best
separable start; distillation (`deploykit.compress.distill`) then recovers the accuracy lost.
"""

from __future__ import annotations

from ..errors import InputError
from ._modules import leaves, replace


def separable_conv(model, multiplier: int = 1, min_channels: int = 8) -> list[dict]:
    """Replace every standard kxk nn.Conv2d where it saves MACs; returns per-layer errors."""
    import torch
    from torch import nn

    from ..rewrite.compact import separable

    if multiplier < 1:
        raise InputError(f"depth multiplier must be >= 1, got {multiplier}")
    layers = []
    for name, conv in leaves(model, nn.Conv2d):
        o, i, kh, kw = conv.weight.shape
        if conv.groups != 1 or kh * kw == 1 or min(o, i) < min_channels:
            continue
        m = min(multiplier, o, kh * kw)
        if i * m * (kh * kw + o) >= o * i * kh * kw:
            layers.append({"layer": name, "skipped": f"multiplier {m} does not reduce MACs"})
            continue
        dw, pw, err = separable(conv.weight.detach().cpu().numpy(), m)
        depth = nn.Conv2d(i, i * m, (kh, kw), conv.stride, conv.padding, conv.dilation, groups=i,
                          bias=False, padding_mode=conv.padding_mode)
        point = nn.Conv2d(i * m, o, 1, bias=conv.bias is not None)
        with torch.no_grad():
            depth.weight.copy_(torch.from_numpy(dw))
            point.weight.copy_(torch.from_numpy(pw))
            if conv.bias is not None:
                point.bias.copy_(conv.bias)
        replace(model, name, nn.Sequential(depth, point))
        layers.append({"layer": name, "multiplier": m, "rel_frobenius_error": round(err, 6)})
    return layers
