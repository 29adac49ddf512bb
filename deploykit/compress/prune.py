"""Torch-side pruning: magnitude (unstructured) masks and physical filter pruning of conv chains.

Magnitude pruning uses torch.nn.utils.prune, so masks survive fine-tuning / distillation; call
`finalize` before export. Like its graph twin it gives no speedup on dense kernels. Filter
pruning physically shrinks the Conv2d groups torch.fx tracing finds (channel_groups.py): a
conv, its BatchNorm and the layers that read it (Conv2d, or a Linear after flatten), residual
blocks' inner convs included, and with `residual=True` the residual streams too, coupled across
the blocks that add into them. Channels that meet a Concat, a reshape or the output are left
alone and reported; the `prune-channels` recipe step prunes the exported graph more generally.
"""

from __future__ import annotations

from typing import Mapping

from ..errors import InputError
from ._modules import replace

def _weighted(model):
    from torch import nn

    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def magnitude_prune(model, ratio: float = 0.5, scope: str = "layer") -> float:
    """Mask the smallest-|w| fraction of every Conv2d/Linear weight (or globally); returns the
    resulting sparsity of those weights."""
    import torch.nn.utils.prune as tprune

    if not 0.0 < ratio < 1.0:
        raise InputError(f"pruning ratio must be in (0, 1), got {ratio}")
    params = [(m, "weight") for _, m in _weighted(model)]
    if not params:
        raise InputError("model has no Conv2d or Linear weight to prune")
    if scope == "global":
        tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=ratio)
    elif scope == "layer":
        for m, p in params:
            tprune.l1_unstructured(m, p, amount=ratio)
    else:
        raise InputError(f"scope must be 'layer' or 'global', got {scope!r}")
    zeros = sum(int((m.weight == 0).sum()) for m, _ in params)
    return zeros / sum(m.weight.numel() for m, _ in params)


def magnitude_prune_layers(model, sparsity: Mapping[str, float]) -> dict[str, float]:
    """Mask each named Conv2d/Linear weight down to its own sparsity (share of zeros), smallest
    |w| first, on top of the masks it already has: Deep Compression's iterative pruning calls
    this with rising sparsities between fine-tuning rounds, and the masks (torch.nn.utils.prune)
    keep the pruned weights at zero while training. Returns each layer's sparsity."""
    import torch
    import torch.nn.utils.prune as tprune

    mods = dict(_weighted(model))
    unknown = sorted(set(sparsity) - set(mods))
    if unknown:
        raise InputError(f"no Conv2d/Linear named {', '.join(unknown)} (have: {', '.join(mods)})")
    out = {}
    for name, s in sparsity.items():
        if not 0.0 <= s < 1.0:
            raise InputError(f"{name}: sparsity must be in [0, 1), got {s}")
        m = mods[name]
        w = (m.weight_orig * m.weight_mask if tprune.is_pruned(m) else m.weight).detach()
        k = int(round(s * w.numel()))  # zeros wanted; the masked ones come first (|w| = 0)
        if k > 0:
            mask = torch.ones(w.numel(), dtype=w.dtype)
            mask[torch.argsort(w.abs().flatten(), stable=True)[:k]] = 0
            tprune.custom_from_mask(m, "weight", mask.view_as(w))
        out[name] = float((m.weight == 0).float().mean())
    return out


def finalize(model) -> None:
    """Make pruning masks permanent (plain weights again), e.g. before export."""
    import torch.nn.utils.prune as tprune

    for _, m in _weighted(model):
        if tprune.is_pruned(m):
            tprune.remove(m, "weight")


def prune_filters(model, ratio: float = 0.5, round_to: int = 1,
                  residual: bool = False, kept: dict | None = None) -> list[dict]:
    """Physically remove the least important `ratio` of filters of every prunable Conv2d group
    (compress/channel_groups.py), in place: the convs writing the channels, the BatchNorms on
    them, and the Conv2d / Linear (after a flatten) reading them all shrink.

    A conv feeding only its own chain (also a residual block's inner convs: conv1 -> bn1 ->
    relu -> conv2) is a group of its own; with `residual`, a residual stream is pruned too, the
    same channel indices kept for every conv that adds into it (each block's last conv, the
    downsample conv, the conv before the stage) and every layer that reads it. Importance is
    each channel's L1 norm of its filters with the BatchNorm that follows folded in (the filter
    the exported, BN-folded graph has), summed over the group's convs: the ONNX-side
    `prune-channels` step ranks the same channels the same way. Returns one record per Conv2d
    (channels / kept, or skipped with the reason), in graph order. `kept`, when given, is
    filled with the channel map: every pruned conv's name -> the indices (ascending) of the
    original channels it still writes (feature distillation compares the pruned model's
    feature maps with the original's at those channels; a conv not in it keeps them all).
    """
    from .channel_groups import channel_groups

    if not 0.0 < ratio < 1.0:
        raise InputError(f"pruning ratio must be in (0, 1), got {ratio}")
    if round_to < 1:
        raise InputError(f"round_to must be >= 1, got {round_to}")
    groups, of_conv = channel_groups(model)
    keep: dict[int, object] = {}  # id(group) -> kept indices
    for g in groups:
        if not g.producers or g.blocked or (g.joined and not residual):
            continue
        spatial = {name: _spatial(model, name, g.size) for name in g.linears_reading}
        if any(v is None for v in spatial.values()):
            g.blocked = "a Linear reads them in a layout other than channel-major"
            continue
        n = g.size
        k = min(n, max(1, -(-(n - int(round(ratio * n))) // round_to) * round_to))
        if k < n:
            score = _importance(model, g)
            keep[id(g)] = _sorted_top(score, k)
    records = []
    for name, g in of_conv.items():
        if id(g) in keep:
            records.append({"layer": name, "channels": g.size, "kept": len(keep[id(g)])})
        elif g.blocked:
            records.append({"layer": name, "skipped": f"its channels stay whole ({g.blocked}); "
                            "the prune-channels recipe step prunes the exported graph"})
        elif g.joined:
            records.append({"layer": name, "skipped": "a residual stream (joined by an Add): "
                            "residual=True prunes it coupled, or use the prune-channels "
                            "recipe step"})
        else:
            records.append({"layer": name, "skipped": "nothing to remove at this ratio"})
    _shrink_all(model, groups, keep)
    if kept is not None:
        kept.update({name: keep[id(g)] for g in groups if id(g) in keep for name in g.producers})
    return records


def _sorted_top(score, k: int):
    import torch

    return torch.sort(torch.argsort(score, descending=True, stable=True)[:k]).values


def _spatial(model, linear: str, channels: int) -> int | None:
    """Features per channel of a Linear reading a flattened (N, C, ...) tensor."""
    f = model.get_submodule(linear).in_features
    return f // channels if f % channels == 0 else None


def _importance(model, g):
    """Per-channel L1 norm of the group's filters, each scaled by its BatchNorm's
    |gamma| / sqrt(var + eps) when one follows it (the folded filter), summed."""
    import torch

    scale = {conv: bn for bn, conv in g.bns.items() if conv}
    total = torch.zeros(g.size, dtype=torch.float64)
    with torch.no_grad():
        for name in g.producers:
            w = model.get_submodule(name).weight.detach().double()
            l1 = w.abs().reshape(w.shape[0], -1).sum(1)
            if name in scale:
                bn = model.get_submodule(scale[name])
                s = torch.ones(g.size, dtype=torch.float64)
                if bn.track_running_stats and bn.running_var is not None:
                    s = s / torch.sqrt(bn.running_var.double() + bn.eps)
                if bn.affine:
                    s = s * bn.weight.detach().double().abs()
                l1 = l1 * s
            total += l1
    return total


def _shrink_all(model, groups, keep) -> None:
    """Replace every conv / BN / Linear touching a pruned group by its sliced copy."""
    import torch

    out_keep, in_keep, bn_keep, lin_keep = {}, {}, {}, {}
    for g in groups:
        k = keep.get(id(g))
        if k is None:
            continue
        for name in g.producers:
            out_keep[name] = k
        for name in g.convs_reading:
            in_keep[name] = k
        for name in g.bns:
            bn_keep[name] = k
        for name in g.linears_reading:
            sp = _spatial(model, name, g.size)
            lin_keep[name] = (k[:, None] * sp + torch.arange(sp)[None, :]).reshape(-1)
    for name in sorted(set(out_keep) | set(in_keep)):
        _slice_conv(model, name, out_keep.get(name), in_keep.get(name))
    for name, k in bn_keep.items():
        _slice_bn(model, name, k)
    for name, cols in lin_keep.items():
        _slice_linear(model, name, cols)


def _slice_conv(model, name, rows, cols) -> None:
    import torch
    from torch import nn

    conv = model.get_submodule(name)
    w = conv.weight.detach()
    w = w if rows is None else w[rows]
    w = w if cols is None else w[:, cols]
    new = nn.Conv2d(w.shape[1], w.shape[0], conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, 1, conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        new.weight.copy_(w)
        if conv.bias is not None:
            new.bias.copy_(conv.bias if rows is None else conv.bias[rows])
    replace(model, name, new)


def _slice_bn(model, name, keep) -> None:
    import torch
    from torch import nn

    bn = model.get_submodule(name)
    nb = nn.BatchNorm2d(len(keep), bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    with torch.no_grad():
        for attr in ("weight", "bias", "running_mean", "running_var"):
            if getattr(bn, attr) is not None:
                getattr(nb, attr).copy_(getattr(bn, attr)[keep])
        if bn.track_running_stats:
            nb.num_batches_tracked.copy_(bn.num_batches_tracked)
    replace(model, name, nb)


def _slice_linear(model, name, cols) -> None:
    import torch
    from torch import nn

    lin = model.get_submodule(name)
    new = nn.Linear(len(cols), lin.out_features, lin.bias is not None)
    with torch.no_grad():
        new.weight.copy_(lin.weight[:, cols])
        if lin.bias is not None:
            new.bias.copy_(lin.bias)
    replace(model, name, new)
