"""Torch-side low-rank factorization: nn.Linear -> two Linears (SVD), nn.Conv2d -> Tucker-2.

Same mathematics as the graph rewrites (`deploykit.rewrite.lowrank_matmul` / `lowrank_conv`),
applied to an nn.Module so that the factorized model can be fine-tuned or distilled before export.
Layers where the factorized form would not cost fewer multiply-adds are left alone and reported.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ._modules import leaves, replace


def svd_linear(model, ratio: float = 0.25, energy: float | None = None,
               min_size: int = 16) -> list[dict]:
    """Replace each nn.Linear whose rank-r form is cheaper by Linear(in, r) -> Linear(r, out)."""
    import torch
    from torch import nn

    from ..rewrite.lowrank import svd_split

    _check(ratio, energy)
    layers = []
    for name, lin in leaves(model, nn.Linear):
        w = lin.weight.detach().cpu().numpy().T  # [in, out], as x @ W
        k, n = w.shape
        if min(k, n) < min_size:
            continue
        a, b, r, err = svd_split(w, ratio, energy)
        if r * (k + n) >= k * n:
            layers.append({"layer": name, "skipped": f"rank {r} does not reduce FLOPs"})
            continue
        first, second = nn.Linear(k, r, bias=False), nn.Linear(r, n, bias=lin.bias is not None)
        with torch.no_grad():
            first.weight.copy_(torch.from_numpy(a.T.copy()))
            second.weight.copy_(torch.from_numpy(b.T.copy()))
            if lin.bias is not None:
                second.bias.copy_(lin.bias)
        replace(model, name, nn.Sequential(first, second))
        layers.append({"layer": name, "rank": r, "rel_frobenius_error": round(err, 6)})
    return layers


def tucker_conv(model, ratio: float = 0.5, energy: float | None = None, sweeps: int = 2,
                min_channels: int = 8) -> list[dict]:
    """Replace each cheaper-to-factorize nn.Conv2d (groups=1) by 1x1 -> kxk core -> 1x1."""
    import torch
    from torch import nn

    from ..rewrite.tucker import tucker2

    _check(ratio, energy)
    layers = []
    for name, conv in leaves(model, nn.Conv2d):
        o, i, kh, kw = conv.weight.shape
        if conv.groups != 1 or min(o, i) < min_channels or conv.padding_mode != "zeros":
            continue
        u_o, core, u_i, err = tucker2(conv.weight.detach().cpu().numpy(), ratio, energy, sweeps)
        r_o, r_i = core.shape[:2]
        s = int(np.prod(conv.stride))
        if i * r_i * s + r_i * r_o * kh * kw + r_o * o >= o * i * kh * kw:
            layers.append({"layer": name, "skipped": f"ranks ({r_o}, {r_i}) do not reduce MACs"})
            continue
        first = nn.Conv2d(i, r_i, 1, bias=False)
        mid = nn.Conv2d(r_i, r_o, (kh, kw), conv.stride, conv.padding, conv.dilation, bias=False)
        last = nn.Conv2d(r_o, o, 1, bias=conv.bias is not None)
        with torch.no_grad():
            first.weight.copy_(torch.from_numpy(np.ascontiguousarray(u_i.T[:, :, None, None])))
            mid.weight.copy_(torch.from_numpy(core))
            last.weight.copy_(torch.from_numpy(np.ascontiguousarray(u_o[:, :, None, None])))
            if conv.bias is not None:
                last.bias.copy_(conv.bias)
        replace(model, name, nn.Sequential(first, mid, last))
        layers.append({"layer": name, "ranks": [int(r_o), int(r_i)],
                       "rel_frobenius_error": round(err, 6)})
    return layers


def _check(ratio: float, energy: float | None) -> None:
    if not 0.0 < ratio <= 1.0:
        raise InputError(f"low-rank ratio must be in (0, 1], got {ratio}")
    if energy is not None and not 0.0 < energy <= 1.0:
        raise InputError(f"low-rank energy must be in (0, 1], got {energy}")
