"""Truncated SVD of constant MatMul/Gemm weights: x @ W  ->  (x @ U_r) @ V_r.

Batch-1 Linear layers are weight-bandwidth bound, so a rank-r split of a K x N weight streams
r*(K+N) instead of K*N numbers; the rule refuses any layer where that is not fewer FLOPs (the
"low-rank model is slower" complaint). The singular values are split evenly (U*sqrt(s), sqrt(s)*V)
so both factors have similar ranges, which keeps a later int8 step accurate.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase

from ..errors import InputError
from . import StepPass
from ._factorize import RuleLog, apply_rules


@dataclass(frozen=True)
class Config:
    ratio: float = 0.25  # rank = ratio * min(K, N), used when `energy` is None
    energy: float | None = None  # else: smallest rank keeping this fraction of sum(s^2)
    min_size: int = 16  # leave weights with min(K, N) below this alone
    # per-weight rank ratios "WEIGHT:RATIO" overriding ratio/energy for that weight; with
    # ratio=0 (and no energy) only the listed weights are factorized (NetAdapt's moves)
    layers: tuple[str, ...] = ()


def blas_threads_for(n: int):
    """One BLAS thread for a decomposition of size `n` below 512: such small SVD/eigh calls are
    latency-bound and OpenBLAS's spinning threads made them ~20x slower on a busy 2-core box;
    large ones keep every thread."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas") if n < 512 else contextlib.nullcontext()


def choose_rank(s: np.ndarray, ratio: float, energy: float | None) -> int:
    if energy is None:
        return max(1, int(round(ratio * len(s))))
    cum = np.cumsum(s.astype(np.float64) ** 2)
    return int(min(len(s), np.searchsorted(cum / cum[-1], energy - 1e-12) + 1))


def _randomized_svd(w: np.ndarray, r: int, seed: int = 0):
    """Top-r SVD by randomized range finding (Halko et al. 2011; 2 power iterations): O(K*N*r)
    instead of a full SVD's O(K*N*min(K,N)), i.e. seconds instead of minutes for 4096 x 4096."""
    k = min(r + 16, min(w.shape))
    q, _ = np.linalg.qr(w @ np.random.default_rng(seed).standard_normal((w.shape[1], k)))
    for _ in range(2):
        q, _ = np.linalg.qr(w.T @ q)
        q, _ = np.linalg.qr(w @ q)
    ub, s, vt = np.linalg.svd(q.T @ w, full_matrices=False)
    return (q @ ub)[:, :r], s[:r], vt[:r]


def _gram_svd(w64: np.ndarray, r: int):
    """Exact top-r SVD from the eigendecomposition of the smaller Gram matrix (float64): one
    GEMM, one eigh of min(K, N)^2 and one more GEMM. When r is a sizeable share of min(K, N)
    (ratio 0.25-0.5, the usual asks) this is ~10x faster than the randomized range finder,
    whose QRs then dominate (1024 x 4096 at r = 512, loaded machine: 12-21 s vs 144-188 s), and
    it is the optimal rank-r approximation (random weights: 0.540 vs 0.565 relative error).
    Squaring the spectrum costs precision only for singular values below ~1e-8 of the largest,
    far below any that a truncation keeps."""
    if w64.shape[0] > w64.shape[1]:
        v, s, ut = _gram_svd(w64.T, r)
        return ut.T, s, v.T
    vals, vecs = np.linalg.eigh(w64 @ w64.T)
    top = np.argsort(vals)[::-1][:r]
    s = np.sqrt(np.maximum(vals[top], 0.0))
    u = vecs[:, top]
    vt = (u.T @ w64) / np.where(s > 0, s, 1.0)[:, None]  # a zero singular value: a zero row
    return u, s, vt


def svd_split(w: np.ndarray, ratio: float, energy: float | None):
    """(U_r*sqrt(s), sqrt(s)*V_r, rank, relative Frobenius error) of a 2-D weight.

    By ratio on large weights the top-r SVD is randomized (a small rank) or taken from the Gram
    matrix (a sizeable one); the error is still exact, because the factors are an orthogonal
    projection of W: ||W - W_r||^2 = ||W||^2 - sum(s_r^2).
    """
    w64 = w.astype(np.float64)
    norm2 = float((w64 ** 2).sum())
    with blas_threads_for(min(w.shape)):
        r = choose_rank(np.ones(min(w.shape)), ratio, None)
        if energy is None and min(w.shape) >= 512 and 8 * r >= min(w.shape):
            u, s, vt = _gram_svd(w64, r)
        elif energy is None and min(w.shape) >= 512:  # fp32 range finding: 2x faster, ample
            u, s, vt = _randomized_svd(w.astype(np.float32), r)
            s = s.astype(np.float64)
        else:
            u, s, vt = np.linalg.svd(w64, full_matrices=False)
            r = choose_rank(s, ratio, energy)
    root = np.sqrt(s[:r])
    err = float(np.sqrt(max(norm2 - float((s[:r] ** 2).sum()), 0.0) / max(norm2, 1e-300)))
    return ((u[:, :r] * root).astype(np.float32), (root[:, None] * vt[:r]).astype(np.float32),
            r, err)


def linear_layers(model) -> list[tuple[str, int, int]]:
    """(weight name, K, N) of every MatMul/Gemm with a constant 2-D weight (an onnx-ir model or
    an onnx.ModelProto): the names `layers` accepts."""
    if not isinstance(model, ir.Model):
        model = ir.from_proto(model)
    out = []
    for n in model.graph:
        v = n.inputs[1] if n.op_type in ("MatMul", "Gemm") and len(n.inputs) > 1 else None
        if v is not None and v.is_initializer() and v.const_value is not None \
                and len(v.const_value.shape) == 2:
            k, m = (int(d) for d in v.const_value.shape)
            if n.op_type == "Gemm" and n.attributes.get_int("transB", 0):
                k, m = m, k
            out.append((v.name, k, m))
    return out


class _Split(RewriteRuleClassBase):
    """Shared check: constant 2-D weight, and the rank-r form has fewer FLOPs."""

    def __init__(self, cfg: Config, log: RuleLog):
        from . import per_layer

        super().__init__()
        self.cfg, self.log = cfg, log
        self.ratios = per_layer(cfg.layers, "lowrank", 0.0, 1.0, hi_open=False)

    def weight(self, node) -> np.ndarray:
        w = node.inputs[1].const_value.numpy()
        if node.op_type == "Gemm":
            if node.attributes.get_int("transB", 0):
                w = w.T
            w = w * node.attributes.get_float("alpha", 1.0)
        return w

    def check(self, context, x, w, out, **_):
        cfg, node = self.cfg, out.producer()
        if w.name in self.log.created:  # a factor this step just made
            return MatchResult().fail("made by this step")
        name = self.log.label(node, w)
        if w.const_value is None or w.is_graph_input():
            return self.log.refuse(name, "weight is not a constant")
        if w.const_value.numpy().ndim != 2:
            return self.log.refuse(name, "weight is not 2-D")
        if node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
            return self.log.refuse(name, "Gemm with transA")
        k, n = w.const_value.numpy().shape
        ratio = self.ratios.get(w.name, cfg.ratio)
        energy = None if w.name in self.ratios else cfg.energy
        if ratio == 0 and energy is None:
            return MatchResult().fail("not selected")
        if min(k, n) < cfg.min_size:
            return self.log.refuse(name, f"{k}x{n} weight is below min_size {cfg.min_size}")
        def no_gain(r):
            return self.log.refuse(name, f"rank {r} of a {k}x{n} weight does not reduce FLOPs "
                                         f"({r * (k + n)} >= {k * n} MACs per row)")

        if energy is None:  # the rank is known before the SVD: no decomposition to throw away
            r = choose_rank(np.ones(min(k, n)), ratio, None)
            if r * (k + n) >= k * n:
                return no_gain(r)
        key = (w, node.op_type, node.attributes.get_int("transB", 0),
               node.attributes.get_float("alpha", 1.0))
        a, b, r, err = self.log.once(key, lambda: svd_split(self.weight(node), ratio, energy))
        if r * (k + n) >= k * n:
            return no_gain(r)
        self.pending = (key, a, b, r, err)
        return MatchResult()

    def emit(self, op, x, w, out, tail):
        node = out.producer()
        key, a, b, r, err = self.pending
        k, n = a.shape[0], b.shape[1]
        self.log.layers.append({"node": self.log.label(node, w), "initializer": w.name,
                                "weight": [k, n], "rank": r,
                                "rel_frobenius_error": round(err, 6),
                                "macs_per_row_before": k * n, "macs_per_row_after": r * (k + n)})
        u = self.log.factor(op, key, f"{w.name}_svd_u", a)  # a shared weight: factors once
        return tail(op.MatMul(x, u), self.log.factor(op, key, f"{w.name}_svd_v", b))


class MatMulSvd(_Split):
    def pattern(self, op, x, w):
        return op.MatMul(x, w, _outputs=["out"])

    def rewrite(self, op, x, w, out):
        return self.emit(op, x, w, out, op.MatMul)


class GemmSvd(_Split):
    def pattern(self, op, x, w):
        return op.Gemm(x, w, _allow_other_inputs=True, _allow_other_attributes=True,
                       _outputs=["out"])

    def rewrite(self, op, x, w, out):
        node = out.producer()
        if len(node.inputs) < 3 or node.inputs[2] is None:
            return self.emit(op, x, w, out, op.MatMul)
        beta = node.attributes.get_float("beta", 1.0)
        return self.emit(op, x, w, out, lambda h, v: op.Gemm(h, v, node.inputs[2], beta=beta))


class LowrankPass(StepPass, ir.passes.InPlacePass):
    """Every eligible MatMul/Gemm weight split into two factors, in place (onnxscript rules)."""

    fidelity_kind = "lossy"

    def call(self, model):
        cfg = self.cfg
        if not 0.0 <= cfg.ratio <= 1.0 or (cfg.ratio == 0 and not cfg.layers
                                           and cfg.energy is None):
            raise InputError(f"lowrank: ratio must be in (0, 1] (0 only with layers=...), "
                             f"got {cfg.ratio}")
        if cfg.energy is not None and not 0.0 < cfg.energy <= 1.0:
            raise InputError(f"lowrank: energy must be in (0, 1], got {cfg.energy}")
        from onnxscript.rewriter import RewriteRuleSet

        from . import per_layer, unknown_layers

        unknown_layers("lowrank", per_layer(cfg.layers, "lowrank", 0.0, 1.0, hi_open=False),
                       [name for name, _, _ in linear_layers(model)])
        log = RuleLog()
        rules = RewriteRuleSet([MatMulSvd.rule(cfg, log), GemmSvd.rule(cfg, log)])
        return apply_rules(self, model, rules, log,
                           "no MatMul/Gemm with a constant weight to factorize")
