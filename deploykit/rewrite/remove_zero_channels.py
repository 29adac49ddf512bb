"""Remove channels that are provably dead in an already-pruned model (an exact rewrite).

Pruning tools (torch.nn.utils.prune, NNCF, sparsity training) zero whole filters but keep the
dense shapes, so the model is exactly as slow as before. A channel can go without changing any
output when either
  * it is identically zero: every producing filter and bias is zero and every op of its group keeps
    zero at zero (BatchNorm only when its shift is zero there, Relu, pooling, Add, Mul, ...), or
  * nothing reads it: every consuming weight (next Conv's input slice, Gemm rows) is zero.
The coupled groups come from `_channel_graph.ChannelGraph`, so residual Adds, depthwise convs,
Concat and Flatten -> Gemm heads are handled the same way as in structured pruning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from . import StepPass
from ._channel_graph import ChannelGraph, load_ir, param_count, save_ir

_KEEPS_ZERO = {"Relu", "LeakyRelu", "PRelu", "Identity", "Dropout", "MaxPool", "AveragePool",
               "GlobalAveragePool", "GlobalMaxPool", "HardSwish", "Tanh", "Neg", "Abs", "Gelu",
               "Mish", "ReduceMean", "ReduceMax", "Concat"}


@dataclass(frozen=True)
class Config:
    tolerance: float = 0.0  # |w| <= tolerance counts as zero (0: exactly zero, the exact rewrite)


def _zero(arr: np.ndarray, axis: int, tol: float) -> np.ndarray:
    """Per-index 'all zero' along `axis`."""
    moved = np.moveaxis(np.abs(arr), axis, 0).reshape(arr.shape[axis], -1)
    return (moved <= tol).all(axis=1)


def zero_masks(cg: ChannelGraph, tol: float) -> dict[object, np.ndarray]:
    """For each channel-carrying value, which of its channels are identically zero."""
    masks: dict[object, np.ndarray] = {}
    const = {p.value for p in cg.params}

    def arr(v):
        return v.const_value.numpy()

    for node in cg.model.graph:
        out = node.outputs[0]
        if out not in cg.segs:
            continue
        ins = list(node.inputs)
        op = node.op_type
        m = None
        if op == "Conv":
            w = arr(ins[1])
            b = arr(ins[2]) if len(ins) > 2 and ins[2] is not None else np.zeros(w.shape[0])
            m = _zero(w, 0, tol) & (np.abs(b) <= tol)
            if node.attributes.get_int("group", 1) > 1 and ins[0] in masks:  # depthwise
                m = m | (masks[ins[0]] & (np.abs(b) <= tol))
        elif op == "BatchNormalization" and ins[0] in masks:
            scale, bias, mean, var = (arr(v) for v in ins[1:5])
            eps = node.attributes.get_float("epsilon", 1e-5)
            shift = bias - mean * scale / np.sqrt(var + eps)
            m = masks[ins[0]] & (np.abs(shift) <= tol)
        elif op == "Clip" and ins[0] in masks:
            lo, hi = (node.attributes.get_float(k, d) if v is None else cg._scalar(v)
                      for k, d, v in (("min", -np.inf, (ins + [None])[1]),
                                      ("max", np.inf, (ins + [None, None])[2])))
            if lo is not None and hi is not None and lo <= 0 <= hi:
                m = masks[ins[0]]
        elif op in _KEEPS_ZERO and op != "Concat" and ins[0] in masks:
            m = masks[ins[0]]
        elif op == "Concat" and all(v in masks for v in ins):
            m = np.concatenate([masks[v] for v in ins])
        elif op in ("Add", "Sub", "Max", "Min"):
            parts = [masks.get(v) for v in ins if v in cg.segs]
            if all(p is not None for p in parts) and len(parts) == len(ins):
                m = np.logical_and.reduce(parts)
        elif op in ("Mul", "Div"):
            parts = [masks[v] for v in ins[:1] if v in masks]
            if op == "Mul":
                parts += [masks[v] for v in ins[1:] if v in masks]
                for v in ins:
                    if v in const:  # Mul by a per-channel constant that is zero there
                        c = arr(v).reshape(-1)
                        if c.size == len(cg.indices(cg.segs[out], {})):
                            parts.append(np.abs(c) <= tol)
            if parts:
                m = np.logical_or.reduce(parts)
        if m is not None:
            masks[out] = m
    return masks


def removable(cg: ChannelGraph, tol: float) -> dict[int, np.ndarray]:
    """Kept channels per group: drop those that are zero everywhere or read by nothing."""
    masks = zero_masks(cg, tol)
    values_of: dict[int, list[tuple[object, int]]] = {}
    for v, segs in cg.segs.items():
        offset = 0
        for s in segs:
            values_of.setdefault(cg.find(s.space), []).append((v, offset, s.size))
            offset += s.size
    read_of: dict[int, list[np.ndarray]] = {}
    for p in cg.consumers:
        dead = _zero(p.value.const_value.numpy(), p.axis, tol)
        offset = 0
        for s in p.segs:
            part = dead[offset:offset + s.size * p.spatial].reshape(s.size, p.spatial).all(axis=1)
            read_of.setdefault(cg.find(s.space), []).append(part)
            offset += s.size * p.spatial
    keep = {}
    for root in cg.prunable():
        if cg.tiling(root) > 1:  # grouped convs / channel shuffles: dead channels need not
            continue  # form the equal per-group sets they require
        n = cg.size[root]
        zero = np.ones(n, bool)
        for v, off, size in values_of.get(root, []):
            zero &= masks[v][off:off + size] if v in masks else False
        unread = np.logical_and.reduce(read_of.get(root, [np.ones(n, bool)]))
        dead = zero | unread
        if dead.all():  # a tensor needs one channel; keep the first
            dead[0] = False
        if dead.any():
            keep[root] = np.flatnonzero(~dead)
    return keep


class RemoveZeroChannelsPass(StepPass, ir.passes.FunctionalPass):
    """Dead channels removed (exact). Functional, like prune-channels: channel groups are found on
    a copy shape-inferred by onnx (`load_ir` / `save_ir`, at this boundary)."""

    def call(self, model):
        cfg = self.cfg
        proto = ir.to_proto(model)
        irm = load_ir(proto)
        cg = ChannelGraph(irm)
        keep = removable(cg, cfg.tolerance)
        if not keep:
            return self.skip(model, "no channel is entirely zero or unread")
        groups = [{"producers": cg.producer_names(r), "channels": cg.size[r], "kept": len(k)}
                  for r, k in keep.items()]
        cg.apply(keep)
        out = save_ir(irm)
        before, after = param_count(proto), param_count(out)
        notes = () if cfg.tolerance == 0 else (
            f"tolerance {cfg.tolerance}: near-zero channels removed, outputs may change slightly",)
        return self.done(ir.from_proto(out), notes=notes, details={
            "groups": groups,
            "channels_removed": int(sum(cg.size[r] - len(k) for r, k in keep.items())),
            "params_before": before, "params_after": after,
            "compression": round(before / max(after, 1), 3)})
