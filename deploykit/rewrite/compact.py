"""Replace a standard kxk Conv by depthwise kxk + pointwise 1x1 (MobileNet-style compact filters).

Initialisation: for every input channel i, the O x k*k slice W[:, i] is approximated by its best
rank-m sum (SVD): m depthwise filters of channel i times m pointwise columns. That is the optimal
separable approximation per input channel, exact when m >= min(O, k*k), and the reported relative
Frobenius error says how much fine-tuning (e.g. `deploykit distill`) has to recover.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from ..errors import InputError
from . import StepPass
from ._factorize import ConvFactorRule, RuleLog, apply_rules
from .lowrank import blas_threads_for


@dataclass(frozen=True)
class Config:
    multiplier: int = 1  # depthwise filters per input channel (depth multiplier m)
    min_channels: int = 8  # leave convs with fewer input or output channels alone


def separable(w: np.ndarray, m: int):
    """(depthwise [I*m,1,kh,kw], pointwise [O,I*m,1,1], relative Frobenius error)."""
    o, i, kh, kw = w.shape
    m = min(m, o, kh * kw)
    dw = np.zeros((i * m, 1, kh, kw))
    pw = np.zeros((o, i * m))
    lost = 0.0
    with blas_threads_for(min(o, kh * kw)):
        svds = [np.linalg.svd(w[:, c].reshape(o, kh * kw).astype(np.float64),
                              full_matrices=False) for c in range(i)]
    for c, (u, s, vt) in enumerate(svds):
        root = np.sqrt(s[:m])
        dw[c * m:(c + 1) * m, 0] = (root[:, None] * vt[:m]).reshape(m, kh, kw)
        pw[:, c * m:(c + 1) * m] = u[:, :m] * root
        lost += float((s[m:] ** 2).sum())
    err = float(np.sqrt(lost) / max(np.linalg.norm(w.astype(np.float64)), 1e-300))
    return dw.astype(np.float32), pw[:, :, None, None].astype(np.float32), err


class ConvToSeparable(ConvFactorRule):
    def refusal(self, node, arr, x, out):
        o, i, kh, kw = arr.shape
        if kh * kw == 1:
            return "1x1 kernel is already pointwise"
        if min(o, i) < self.cfg.min_channels:
            return f"{i}->{o} channels, below min_channels {self.cfg.min_channels}"
        m = min(self.cfg.multiplier, o, kh * kw)
        before, after = o * i * kh * kw, i * m * kh * kw + i * m * o
        if after >= before:
            return f"multiplier {m} does not reduce MACs ({after} >= {before})"
        return None

    def rewrite(self, op, x, w, out):
        node = out.producer()
        arr = w.const_value.numpy()
        dw, pw, err = self.log.once(w, lambda: separable(arr, self.cfg.multiplier))
        o, i, kh, kw = arr.shape
        self.log.layers.append({"node": self.log.label(node, w), "initializer": w.name,
                                "weight": [o, i, kh, kw],
                                "multiplier": dw.shape[0] // i,
                                "rel_frobenius_error": round(err, 6),
                                "macs_per_pixel_before": o * i * kh * kw,
                                "macs_per_pixel_after": dw.shape[0] * (kh * kw + o)})
        attrs = {k: v for k, v in node.attributes.items() if k != "group"}
        depth = op.Conv(x, self.log.factor(op, w, f"{w.name}_dw", dw), group=i, **attrs)
        return self.conv(op, node, depth, self.log.factor(op, w, f"{w.name}_pw", pw))


class CompactPass(StepPass, ir.passes.InPlacePass):
    """Every eligible kxk Conv made depthwise + pointwise, in place (onnxscript rules)."""

    fidelity_kind = "lossy"

    def call(self, model):
        if self.cfg.multiplier < 1:
            raise InputError(f"compact: multiplier must be >= 1, got {self.cfg.multiplier}")
        from onnxscript.rewriter import RewriteRuleSet

        log = RuleLog()
        return apply_rules(self, model, RewriteRuleSet([ConvToSeparable.rule(self.cfg, log)]),
                           log, "no standard kxk Conv to make separable")
