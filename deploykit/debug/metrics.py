"""Error statistics of a candidate tensor against its reference, accumulated over input batches
without keeping the tensors: cosine, SQNR (dB), max abs error, max rel error (to the reference's
largest magnitude, the definition deploykit.verify uses)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Metric:
    cosine: float
    sqnr_db: float  # +inf when the tensors are identical
    max_abs: float
    max_rel: float
    finite: bool  # the candidate had no NaN/inf

    @property
    def badness(self) -> float:
        """Sort key, larger is worse: -SQNR, with non-finite output worst of all."""
        if not self.finite:
            return math.inf
        return -self.sqnr_db

    def to_dict(self) -> dict:
        """Strict-JSON form: non-finite floats become null (identical tensors: sqnr_db null and
        exact true)."""
        fin = lambda x: x if math.isfinite(x) else None  # noqa: E731
        return {"cosine": fin(self.cosine), "sqnr_db": fin(self.sqnr_db),
                "max_abs": fin(self.max_abs), "max_rel": fin(self.max_rel),
                "finite": self.finite, "exact": self.finite and self.max_abs == 0.0}


class Stats:
    """Sums over batches; `metric()` once everything is in."""

    def __init__(self) -> None:
        self.dot = self.rr = self.gg = self.ee = 0.0
        self.max_abs = self.ref_max = 0.0
        self.finite = True
        self.count = 0

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        """One batch. Float32 tensors stay float32 (a few passes over memory, the cost that
        dominates on big activations); sums go through BLAS dots over 64k-element slices added
        in float64, so the relative error of each sum stays near 1e-6 however large the tensor."""
        r, g = np.asarray(ref), np.asarray(got)
        if r.shape != g.shape:
            raise ValueError(f"shapes differ: {r.shape} vs {g.shape}")
        dt = np.float64 if np.float64 in (r.dtype, g.dtype) else np.float32
        r = np.ascontiguousarray(r, dtype=dt).ravel()
        g = np.ascontiguousarray(g, dtype=dt).ravel()
        self.count += 1
        with np.errstate(over="ignore", invalid="ignore"):
            e = g - r
            rr, gg, ee = _sumsq(r), _sumsq(g), _sumsq(e)
        if not (math.isfinite(rr) and math.isfinite(gg) and math.isfinite(ee)):
            if not (np.isfinite(g).all() and np.isfinite(r).all()):
                self.finite = False  # NaN/inf in the tensors themselves
                return
            # finite but huge (an additive attention mask near float32's limit): float64 sums
            r, g = r.astype(np.float64), g.astype(np.float64)
            e = g - r
            rr, gg, ee = _sumsq(r), _sumsq(g), _sumsq(e)
        self.rr += rr
        self.gg += gg
        self.ee += ee
        self.dot += (rr + gg - ee) / 2.0
        if r.size:
            self.max_abs = max(self.max_abs, float(e.max()), -float(e.min()))
            self.ref_max = max(self.ref_max, float(r.max()), -float(r.min()))

    def metric(self) -> Metric:
        if not self.finite:
            return Metric(0.0, -math.inf, math.inf, math.inf, False)
        if self.rr == 0 and self.gg == 0:
            cos = 1.0
        elif self.rr == 0 or self.gg == 0:
            cos = 0.0
        else:  # 1 - cos from the error energy: exact to ~1e-6 relative even when cos ~ 1
            nr, ng = math.sqrt(self.rr), math.sqrt(self.gg)
            cos = max(-1.0, min(1.0, 1.0 - (self.ee - (nr - ng) ** 2) / (2.0 * nr * ng)))
        if self.ee == 0:
            sqnr = math.inf
        elif self.rr == 0:
            sqnr = -math.inf
        else:
            sqnr = 10.0 * math.log10(self.rr / self.ee)
        rel = self.max_abs / self.ref_max if self.ref_max > 0 else (
            0.0 if self.max_abs == 0 else math.inf)
        return Metric(cos, sqnr, self.max_abs, rel, True)


_SLICE = 1 << 16


def _sumsq(a: np.ndarray) -> float:
    return float(sum(float(np.dot(a[i:i + _SLICE], a[i:i + _SLICE]))
                     for i in range(0, a.size, _SLICE)))
