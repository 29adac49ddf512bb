"""Unstructured magnitude pruning: zero the smallest Conv/Gemm/MatMul weights (per layer / global).

Zeros stored in a dense tensor change neither the shapes nor the kernels, so on ORT CPU this
brings no speedup and no smaller file (measured: no gain at 50% or 90% zeros; see FACTS.md), and
the step says so in its notes; the realized report measures it anyway. It is useful as a
sparsity study or before a sparse runtime; for speed on dense CPUs use `prune-channels`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from ..errors import InputError
from . import StepPass

_WEIGHTED = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}

NO_SPEEDUP = ("unstructured sparsity: ORT's dense CPU kernels multiply the zeros too, so expect "
              "no speedup and the same file size; use prune-channels (then remove-zero-channels) "
              "for a model that is really smaller and faster")


@dataclass(frozen=True)
class Config:
    ratio: float = 0.5  # fraction of weights set to zero
    scope: str = "layer"  # "layer": each weight loses `ratio`; "global": one magnitude threshold
    min_size: int = 256  # leave weights with fewer elements alone (biases, tiny heads)


def weights(irm, min_size: int) -> list:
    """Distinct constant weight values of Conv/Gemm/MatMul nodes (2-D or more)."""
    seen, out = set(), []
    for node in irm.graph:
        if node.op_type not in _WEIGHTED or len(node.inputs) <= _WEIGHTED[node.op_type]:
            continue
        v = node.inputs[_WEIGHTED[node.op_type]]
        if v is None or v in seen or not v.is_initializer() or v.const_value is None:
            continue
        if v.is_graph_input():
            continue
        arr = v.const_value.numpy()
        if arr.ndim >= 2 and arr.size >= min_size and np.issubdtype(arr.dtype, np.floating):
            seen.add(v)
            out.append(v)
    return out


def _mask_keep(mag: np.ndarray, ratio: float) -> np.ndarray:
    """Keep the largest (1-ratio) fraction; ties at the threshold are broken by position."""
    k = int(round(ratio * mag.size))
    order = np.argsort(mag.reshape(-1), kind="stable")
    keep = np.ones(mag.size, bool)
    keep[order[:k]] = False
    return keep.reshape(mag.shape)


class PruneUnstructuredPass(StepPass, ir.passes.InPlacePass):
    """The smallest weights set to zero, in place."""

    fidelity_kind = "lossy"

    def call(self, model):
        cfg = self.cfg
        if not 0.0 < cfg.ratio < 1.0:
            raise InputError(f"prune-unstructured: ratio must be in (0, 1), got {cfg.ratio}")
        if cfg.scope not in ("layer", "global"):
            raise InputError("prune-unstructured: scope must be 'layer' or 'global', "
                             f"got {cfg.scope!r}")
        ws = weights(model, cfg.min_size)
        if not ws:
            return self.skip(model, "no constant Conv/Gemm/MatMul weight of "
                                    f">= {cfg.min_size} elements to prune")
        arrays = [w.const_value.numpy() for w in ws]
        if cfg.scope == "global":
            flat = np.concatenate([np.abs(a).reshape(-1) for a in arrays])
            keep_all = _mask_keep(flat, cfg.ratio)
            offsets = np.cumsum([0] + [a.size for a in arrays])
            masks = [keep_all[offsets[j]:offsets[j + 1]].reshape(a.shape)
                     for j, a in enumerate(arrays)]
        else:
            masks = [_mask_keep(np.abs(a), cfg.ratio) for a in arrays]
        layers, zeros, total = [], 0, 0
        for w, a, keep in zip(ws, arrays, masks):
            pruned = np.where(keep, a, 0).astype(a.dtype)
            w.const_value = ir.tensor(pruned, name=w.name)
            nz = int((pruned == 0).sum())
            layers.append({"weight": w.name, "size": int(a.size),
                           "sparsity": round(nz / a.size, 4)})
            zeros, total = zeros + nz, total + a.size
        return self.done(model, notes=(NO_SPEEDUP,), details={
            "scope": cfg.scope, "sparsity": round(zeros / total, 4), "pruned_weights": total,
            "layers": layers, "expected_speedup_on_dense_kernels": False})
