"""Replace a standard kxk Conv by depthwise kxk + pointwise 1x1 (MobileNet-style compact filters).

Initialisation: for every input channel i, the O x k*k slice W[:, i] is approximated by its best
rank-m sum (SVD): m depthwise filters of channel i times m pointwise columns. That is the optimal
separable approximation per input channel, exact when m >= min(O, k*k), and the reported relative
Frobenius error says how much fine-tuning (e.g. `deploykit distill`) has to recover.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from . import StepContext, StepResult
from ._factorize import apply_rules, conv_weight
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


def _rules(cfg: Config, layers: list, refused: dict):
    from onnxscript import ir
    from onnxscript.rewriter import MatchResult, RewriteRuleClassBase, RewriteRuleSet

    created: set[str] = set()

    class ConvToSeparable(RewriteRuleClassBase):
        def pattern(self, op, x, w):
            return op.Conv(x, w, _allow_other_inputs=True, _outputs=["out"])

        def check(self, context, x, w, out, **_):
            result, node = MatchResult(), out.producer()
            if w.name in created:
                return result.fail("made by this step")
            node.name = node.name or f"Conv({w.name})"

            def refuse(reason):
                refused[node.name] = reason
                return result.fail(reason)

            arr, refusal = conv_weight(w, node, refuse)
            if refusal is not None:
                return refusal
            o, i, kh, kw = arr.shape
            if kh * kw == 1:
                return refuse("1x1 kernel is already pointwise")
            if min(o, i) < cfg.min_channels:
                return refuse(f"{i}->{o} channels, below min_channels {cfg.min_channels}")
            m = min(cfg.multiplier, o, kh * kw)
            before, after = o * i * kh * kw, i * m * kh * kw + i * m * o
            if after >= before:
                return refuse(f"multiplier {m} does not reduce MACs ({after} >= {before})")
            return result

        def rewrite(self, op, x, w, out):
            node = out.producer()
            arr = w.const_value.numpy()
            dw, pw, err = separable(arr, cfg.multiplier)
            o, i, kh, kw = arr.shape
            layers.append({"node": node.name, "initializer": w.name,
                           "weight": [o, i, kh, kw],
                           "multiplier": dw.shape[0] // i, "rel_frobenius_error": round(err, 6),
                           "macs_per_pixel_before": o * i * kh * kw,
                           "macs_per_pixel_after": dw.shape[0] * (kh * kw + o)})
            attrs = {k: v for k, v in node.attributes.items() if k != "group"}
            created.update((f"{w.name}_dw", f"{w.name}_pw"))
            depth = op.Conv(x, op.initializer(ir.tensor(dw), name=f"{w.name}_dw"),
                            group=i, **attrs)
            pw_w = op.initializer(ir.tensor(pw), name=f"{w.name}_pw")
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                return op.Conv(depth, pw_w, node.inputs[2])
            return op.Conv(depth, pw_w)

    return RewriteRuleSet([ConvToSeparable.rule()])


def step(model, cfg: Config, ctx: StepContext) -> StepResult:
    if cfg.multiplier < 1:
        raise InputError(f"compact: multiplier must be >= 1, got {cfg.multiplier}")
    import onnx_ir as ir

    layers, refused = [], {}
    irm = ir.from_proto(model)
    return apply_rules(irm, _rules(cfg, layers, refused), layers, refused,
                       "no standard kxk Conv to make separable")
