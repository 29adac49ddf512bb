"""Structured channel pruning that physically removes channels from the ONNX graph.

Zeroing filters makes nothing faster on dense kernels; removing them shrinks every Conv that
produces or consumes the channel, so FLOPs and bytes really drop. Channels are coupled: all tensors
joined by an Add/Mul (residuals, squeeze-excite) share one channel set, BatchNorm and depthwise
convs follow their producer, Concat maps channels by offset, and a Flatten/GlobalAveragePool ->
Gemm/MatMul head drops the matching weight rows. `ChannelGraph` finds these groups once; pruning
and `remove_zero_channels` only decide which channels of each group go.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from ..errors import InputError
from . import StepPass
from ._channel_graph import ChannelGraph, load_ir, param_count, save_ir

@dataclass(frozen=True)
class Config:
    ratio: float = 0.5  # fraction of channels removed (per group, or over all groups if global)
    scope: str = "layer"  # "layer": every group loses `ratio`; "global": one ranking for all
    round_to: int = 1  # kept channel counts are multiples of this (8 suits SIMD kernels)
    min_channels: int = 1
    residual: bool = True  # also prune groups joined by Add/Mul (residual streams); False keeps
    # them whole and prunes only single-producer groups (e.g. bottleneck interiors)
    # per-group ratios "WEIGHT:RATIO" (any producer Conv's weight names its group), overriding
    # `ratio` for that group; with ratio=0 only the listed groups are pruned (NetAdapt's moves)
    layers: tuple[str, ...] = ()


def group_ratios(cg: ChannelGraph, roots: list[int], cfg: Config) -> dict[int, float]:
    """`cfg.layers` as {group root: ratio}; one-line errors for names of no prunable group."""
    from . import per_layer, unknown_layers

    wanted = per_layer(cfg.layers, "prune-channels", 0.0, 1.0)
    by_name = {name: r for r in roots for name in cg.producer_names(r)}
    unknown_layers("prune-channels", wanted, by_name)
    out: dict[int, float] = {}
    for name, ratio in wanted.items():
        if out.setdefault(by_name[name], ratio) != ratio:
            raise InputError(f"prune-channels: layers {name} and another weight of its group "
                             f"(joined by a residual Add/Mul) ask for different ratios")
    return out


def prunable_layers(model, residual: bool = True
                    ) -> list[tuple[str, int, list[str], list[str]]]:
    """(name for `layers`, channels, producer weights, weights reading the channels) of each
    prunable group of an ONNX model: the moves a per-layer search can make."""
    cg = ChannelGraph(load_ir(model))
    out = []
    for r in cg.prunable():
        if residual or len(cg.producer_names(r)) == 1:
            readers = [p.value.name for p in cg.consumers
                       if any(cg.find(s.space) == r for s in p.segs)]
            out.append((cg.producer_names(r)[0], cg.size[r], cg.producer_names(r), readers))
    return out


def choose_keep(cg: ChannelGraph, cfg: Config) -> dict[int, np.ndarray]:
    """Kept channel indices per prunable group, lowest group-summed L1 norm removed first."""
    roots = [r for r in cg.prunable() if cfg.residual or len(cg.producer_names(r)) == 1]
    scores = {r: cg.l1_importance(r) for r in roots}
    n_keep = {}
    if cfg.scope == "layer":
        ratios = group_ratios(cg, roots, cfg)
        for r in roots:
            n_keep[r] = cg.size[r] - int(round(ratios.get(r, cfg.ratio) * cg.size[r]))
    else:  # one threshold over scores normalised by each group's mean, so layers compare
        norm = np.concatenate([scores[r] / max(scores[r].mean(), 1e-12) for r in roots])
        cut = np.quantile(norm, cfg.ratio) if norm.size and cfg.ratio > 0 else -np.inf
        for r in roots:
            n_keep[r] = int((scores[r] / max(scores[r].mean(), 1e-12) > cut).sum())
    keep = {}
    for r in roots:
        k = max(cfg.min_channels, n_keep[r])
        k = min(cg.size[r], -(-k // cfg.round_to) * cfg.round_to)
        if k < cg.size[r]:
            keep[r] = tiled_top(scores[r], k, cg.tiling(r))
    return {r: k for r, k in keep.items() if len(k) < cg.size[r]}


def tiled_top(score: np.ndarray, k: int, tiles: int) -> np.ndarray:
    """The k best channels, or with tiles > 1 (grouped convs, channel shuffles) the same
    ceil(k / tiles) best positions in every tile, by the score summed over tiles."""
    if tiles == 1:
        return np.sort(np.argsort(-score, kind="stable")[:k])
    per = score.size // tiles
    best = np.sort(np.argsort(-score.reshape(tiles, per).sum(axis=0), kind="stable")[
        :-(-k // tiles)])
    return (np.arange(tiles)[:, None] * per + best[None, :]).reshape(-1)


class PruneChannelsPass(StepPass, ir.passes.FunctionalPass):
    """The least important channels of each group removed. Functional: channel groups are found
    on a copy shape-inferred by onnx's `infer_shapes` with data propagation, and the pruned model
    is re-inferred strictly and checked (`load_ir` / `save_ir`: `onnx.ModelProto` APIs, so the
    model is converted at this boundary)."""

    fidelity_kind = "lossy"

    def call(self, model):
        cfg = self.cfg
        if not 0.0 <= cfg.ratio < 1.0:
            raise InputError(f"prune-channels: ratio must be in [0, 1), got {cfg.ratio}")
        if cfg.scope not in ("layer", "global"):
            raise InputError(f"prune-channels: scope must be 'layer' or 'global', "
                             f"got {cfg.scope!r}")
        if cfg.layers and cfg.scope != "layer":
            raise InputError("prune-channels: per-layer ratios (layers=...) need scope=layer")
        if cfg.round_to < 1 or cfg.min_channels < 1:
            raise InputError("prune-channels: round_to and min_channels must be >= 1")
        proto = ir.to_proto(model)
        irm = load_ir(proto)
        cg = ChannelGraph(irm)
        if not cg.prunable():
            reasons = sorted(set(cg.blocked.values()))[:3]
            return self.skip(model, "no prunable Conv channel group"
                             + (f" ({'; '.join(reasons)})" if reasons else ""))
        keep = choose_keep(cg, cfg)
        if not keep:
            return self.skip(model, f"ratio {cfg.ratio}"
                             + (" and layers=..." if cfg.layers else "")
                             + " remove no channel from any group")
        groups = [{"producers": cg.producer_names(r), "channels": cg.size[r],
                   "kept": int(len(keep.get(r, range(cg.size[r])))),
                   "removed": sorted(set(range(cg.size[r])) - set(keep[r].tolist()))
                   if r in keep else []} for r in cg.prunable()]
        cg.apply(keep)
        out = save_ir(irm)
        before, after = param_count(proto), param_count(out)
        return self.done(ir.from_proto(out), details={
            "groups": groups, "pinned_groups": len({cg.find(s) for s, _ in cg.producers}
                                                   - set(cg.prunable())),
            "params_before": before, "params_after": after,
            "compression": round(before / max(after, 1), 3)})
