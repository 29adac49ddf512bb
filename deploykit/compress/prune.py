"""Torch-side pruning: magnitude (unstructured) masks and physical filter pruning of conv chains.

Magnitude pruning uses torch.nn.utils.prune, so masks survive fine-tuning / distillation; call
`finalize` before export. Like its graph twin it gives no speedup on dense kernels. Filter
pruning physically shrinks a Conv2d, its BatchNorm and the layer that reads it (next Conv2d, or a
Linear after flatten), found by torch.fx tracing. Only plain chains are handled here: a conv whose
output feeds a residual Add or a Concat is left alone and reported; prune those coupled groups on
the exported graph with the `prune-channels` recipe step, which groups them correctly.
"""

from __future__ import annotations

from typing import Mapping

from ..errors import InputError
from ._modules import replace

_PASS_MODULES = ("ReLU", "ReLU6", "LeakyReLU", "SiLU", "GELU", "Hardswish", "Sigmoid", "Tanh",
                 "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "Dropout",
                 "Dropout2d", "Identity")
_PASS_FUNCS = ("relu", "relu6", "leaky_relu", "silu", "gelu", "hardswish", "sigmoid", "tanh",
               "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d",
               "dropout")


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


def _next_reader(node, mods):
    """Follow a conv's output through single-use BN / activations / pooling to its reader:
    ("conv", name) or ("linear", name); None when the chain branches or meets anything else."""
    bn, flat, cur = None, False, node
    while True:
        users = list(cur.users)
        if len(users) != 1:
            return None
        cur = users[0]
        if cur.op == "call_module":
            kind = type(mods[cur.target]).__name__
            if kind == "BatchNorm2d" and bn is None and not flat:
                bn = cur.target
            elif kind in _PASS_MODULES:
                pass
            elif kind == "Flatten":
                flat = True
            elif kind == "Conv2d" and not flat and mods[cur.target].groups == 1:
                return "conv", cur.target, bn
            elif kind == "Linear" and flat:
                return "linear", cur.target, bn
            else:
                return None
        elif cur.op in ("call_function", "call_method"):
            fname = getattr(cur.target, "__name__", str(cur.target))
            if fname == "flatten" and (cur.args[1:2] == (1,) or cur.kwargs.get("start_dim") == 1):
                flat = True
            elif fname not in _PASS_FUNCS:
                return None
        else:
            return None


def prune_filters(model, ratio: float = 0.5, round_to: int = 1) -> list[dict]:
    """Physically remove the lowest-L1 `ratio` of filters of every Conv2d in a plain chain.

    Returns per-conv records (channels / kept, or skipped with the reason).
    """
    import torch
    import torch.fx
    from torch import nn

    if not 0.0 < ratio < 1.0:
        raise InputError(f"pruning ratio must be in (0, 1), got {ratio}")
    if round_to < 1:
        raise InputError(f"round_to must be >= 1, got {round_to}")
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - fx refuses data-dependent control flow
        raise InputError(f"cannot trace the model for filter pruning: {str(e).splitlines()[0]}")
    mods = dict(gm.named_modules())
    records = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods[node.target], nn.Conv2d):
            continue
        conv = mods[node.target]
        reader = _next_reader(node, mods)
        if conv.groups != 1 or reader is None:
            records.append({"layer": node.target, "skipped": "not in a plain conv chain "
                            "(residual, concat, grouped): use the prune-channels recipe step"})
            continue
        kind, reader_name, bn_name = reader
        n = conv.out_channels
        # a Linear after flatten reads each channel at in_features / n spatial positions
        spatial = mods[reader_name].in_features // n if kind == "linear" else 1
        k = min(n, max(1, -(-(n - int(round(ratio * n))) // round_to) * round_to))
        l1 = conv.weight.detach().abs().reshape(n, -1).sum(1)
        keep = torch.sort(torch.argsort(l1, descending=True, stable=True)[:k]).values
        _shrink(model, node.target, bn_name, kind, reader_name, keep, spatial)
        mods = dict(model.named_modules())
        records.append({"layer": node.target, "channels": n, "kept": k})
    return records


def _shrink(model, conv_name, bn_name, kind, reader_name, keep, spatial) -> None:
    import torch
    from torch import nn

    conv = model.get_submodule(conv_name)
    new = nn.Conv2d(conv.in_channels, len(keep), conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, 1, conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        new.weight.copy_(conv.weight[keep])
        if conv.bias is not None:
            new.bias.copy_(conv.bias[keep])
    replace(model, conv_name, new)
    if bn_name is not None:
        bn = model.get_submodule(bn_name)
        nb = nn.BatchNorm2d(len(keep), bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        with torch.no_grad():
            for attr in ("weight", "bias", "running_mean", "running_var"):
                if getattr(bn, attr) is not None:
                    getattr(nb, attr).copy_(getattr(bn, attr)[keep])
        replace(model, bn_name, nb)
    reader = model.get_submodule(reader_name)
    if kind == "conv":
        nr = nn.Conv2d(len(keep), reader.out_channels, reader.kernel_size, reader.stride,
                       reader.padding, reader.dilation, 1, reader.bias is not None,
                       reader.padding_mode)
        cols = keep
    else:
        cols = (keep[:, None] * spatial + torch.arange(spatial)[None, :]).reshape(-1)
        nr = nn.Linear(len(cols), reader.out_features, reader.bias is not None)
    with torch.no_grad():
        nr.weight.copy_(reader.weight[:, cols])
        if reader.bias is not None:
            nr.bias.copy_(reader.bias)
    replace(model, reader_name, nr)
