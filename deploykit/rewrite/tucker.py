"""Tucker-2 factorization of Conv: kxk Conv(I->O)  ->  1x1 (I->Ri), kxk core (Ri->Ro), 1x1 (Ro->O).

Only the two channel modes are compressed (the kernel is small), so the result is three ordinary
dense Convs that every backend runs fast. Factors come from HOSVD refined by a few HOOI sweeps
(alternating SVDs; numpy is enough at these sizes). The rule refuses convs where the three convs
would not cost fewer multiply-adds, counted at their real input/output resolutions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from ..errors import InputError
from . import StepPass
from ._factorize import ConvFactorRule, RuleLog, apply_rules
from .lowrank import blas_threads_for, choose_rank


@dataclass(frozen=True)
class Config:
    ratio: float = 0.5  # Ro = ratio * O and Ri = ratio * I, used when `energy` is None
    energy: float | None = None  # else: per mode, smallest rank keeping this fraction of energy
    sweeps: int = 2  # HOOI refinement sweeps after HOSVD
    min_channels: int = 8  # leave convs with fewer input or output channels alone


def _gram_svd(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors and values of a wide matrix via its small Gram matrix."""
    with blas_threads_for(mat.shape[0]):
        evals, evecs = np.linalg.eigh(mat @ mat.T)
    return evecs[:, ::-1], np.sqrt(np.clip(evals[::-1], 0, None))


def tucker2(w: np.ndarray, ratio: float, energy: float | None, sweeps: int):
    """(U_out [O,Ro], core [Ro,Ri,kh,kw], U_in [I,Ri], relative Frobenius error)."""
    w64 = w.astype(np.float64)
    o, i = w.shape[:2]
    u_o, s_o = _gram_svd(w64.reshape(o, -1))
    u_i, s_i = _gram_svd(w64.transpose(1, 0, 2, 3).reshape(i, -1))
    r_o, r_i = choose_rank(s_o, ratio, energy), choose_rank(s_i, ratio, energy)
    u_o, u_i = u_o[:, :r_o], u_i[:, :r_i]
    for _ in range(sweeps):  # HOOI: each factor from the weight projected on the other
        u_o = _gram_svd(np.tensordot(w64, u_i, ([1], [0])).reshape(o, -1))[0][:, :r_o]
        proj = np.tensordot(u_o, w64, ([0], [0]))  # [Ro, I, kh, kw]
        u_i = _gram_svd(proj.transpose(1, 0, 2, 3).reshape(i, -1))[0][:, :r_i]
    core = np.tensordot(np.tensordot(u_o, w64, ([0], [0])), u_i, ([1], [0])).transpose(0, 3, 1, 2)
    # orthonormal factors: ||W - W_hat||^2 = ||W||^2 - ||core||^2
    norm2 = float((w64 ** 2).sum())
    err = float(np.sqrt(max(norm2 - float((core ** 2).sum()), 0.0) / max(norm2, 1e-300)))
    return u_o.astype(np.float32), core.astype(np.float32), u_i.astype(np.float32), err


def _pixels(v, fallback: int) -> int:
    if v is not None and v.shape is not None and v.shape.is_static() and len(v.shape) == 4:
        return int(v.shape[2]) * int(v.shape[3])
    return fallback


class ConvTucker2(ConvFactorRule):
    def refusal(self, node, arr, x, out):
        cfg = self.cfg
        o, i, kh, kw = arr.shape
        if min(o, i) < cfg.min_channels:
            return f"{i}->{o} channels, below min_channels {cfg.min_channels}"
        u_o, core, u_i, err = self.log.once(
            list(node.inputs)[1], lambda: tucker2(arr, cfg.ratio, cfg.energy, cfg.sweeps))
        r_o, r_i = core.shape[:2]
        strides = node.attributes.get_ints("strides", [1, 1])
        p_out = _pixels(out, 1)
        p_in = _pixels(x, p_out * int(np.prod(strides)))
        before = o * i * kh * kw * p_out
        after = i * r_i * p_in + r_i * r_o * kh * kw * p_out + r_o * o * p_out
        if after >= before:
            return (f"ranks ({r_o}, {r_i}) of a {o}x{i}x{kh}x{kw} conv do not "
                    f"reduce MACs ({after} >= {before})")
        self.pending = (u_o, core, u_i, err, before, after)
        return None

    def rewrite(self, op, x, w, out):
        node = out.producer()
        u_o, core, u_i, err, before, after = self.pending
        self.log.layers.append({"node": self.log.label(node, w), "initializer": w.name,
                                "weight": list(w.const_value.numpy().shape),
                                "ranks": [int(core.shape[0]), int(core.shape[1])],
                                "rel_frobenius_error": round(err, 6),
                                "macs_before": before, "macs_after": after})
        names = [f"{w.name}_tucker_{p}" for p in ("in", "core", "out")]
        attrs = {k: v for k, v in node.attributes.items() if k != "group"}
        first = op.Conv(x, self.log.factor(op, w, names[0],
                                           np.ascontiguousarray(u_i.T[:, :, None, None])))
        mid = op.Conv(first, self.log.factor(op, w, names[1], core), **attrs)
        return self.conv(op, node, mid, self.log.factor(
            op, w, names[2], np.ascontiguousarray(u_o[:, :, None, None])))


class TuckerPass(StepPass, ir.passes.FunctionalPass):
    """Every eligible Conv Tucker-2 factorized (onnxscript rules). Functional: the rules judge
    MACs at each conv's real resolution, so it works on a copy shape-inferred by onnx's
    `infer_shapes` (an `onnx.ModelProto` API: the model is converted at this boundary)."""

    fidelity_kind = "lossy"

    def call(self, model):
        cfg = self.cfg
        if not 0.0 < cfg.ratio <= 1.0:
            raise InputError(f"tucker: ratio must be in (0, 1], got {cfg.ratio}")
        if cfg.energy is not None and not 0.0 < cfg.energy <= 1.0:
            raise InputError(f"tucker: energy must be in (0, 1], got {cfg.energy}")
        if cfg.sweeps < 0:
            raise InputError(f"tucker: sweeps must be >= 0, got {cfg.sweeps}")
        import onnx
        from onnxscript.rewriter import RewriteRuleSet

        work = ir.from_proto(onnx.shape_inference.infer_shapes(ir.to_proto(model)))
        log = RuleLog()
        return apply_rules(self, work, RewriteRuleSet([ConvTucker2.rule(cfg, log)]), log,
                           "no Conv to factorize", source=model)
