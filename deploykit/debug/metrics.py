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
        r = np.asarray(ref, dtype=np.float64).ravel()
        g = np.asarray(got, dtype=np.float64).ravel()
        if r.shape != g.shape:
            raise ValueError(f"shapes differ: {np.shape(ref)} vs {np.shape(got)}")
        self.count += 1
        if not np.all(np.isfinite(g)):
            self.finite = False
            return
        r = np.where(np.isfinite(r), r, 0.0)
        e = g - r
        self.dot += float(r @ g)
        self.rr += float(r @ r)
        self.gg += float(g @ g)
        self.ee += float(e @ e)
        if r.size:
            self.max_abs = max(self.max_abs, float(np.max(np.abs(e))))
            self.ref_max = max(self.ref_max, float(np.max(np.abs(r))))

    def metric(self) -> Metric:
        if not self.finite:
            return Metric(0.0, -math.inf, math.inf, math.inf, False)
        if self.rr == 0 and self.gg == 0:
            cos = 1.0
        elif self.rr == 0 or self.gg == 0:
            cos = 0.0
        else:
            cos = max(-1.0, min(1.0, self.dot / math.sqrt(self.rr * self.gg)))
        if self.ee == 0:
            sqnr = math.inf
        elif self.rr == 0:
            sqnr = -math.inf
        else:
            sqnr = 10.0 * math.log10(self.rr / self.ee)
        rel = self.max_abs / self.ref_max if self.ref_max > 0 else (
            0.0 if self.max_abs == 0 else math.inf)
        return Metric(cos, sqnr, self.max_abs, rel, True)
