"""The result of interleaved runs (measure/timing.py's `compare`): their reports, and ratios of
medians with paired confidence intervals from per-round log ratios of block medians, so drift
that hits both sides of a round alike cancels."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core import LatencyReport, Result


@dataclass(frozen=True)
class Comparison(Result):
    """Reports of interleaved runs; ratios are median(i) / median(j) with a bootstrap CI."""

    reports: tuple[LatencyReport, ...]
    names: tuple[str, ...]

    def ratio(self, i: int, j: int = 0, conf: float = 0.95) -> tuple[float, float, float]:
        """median(i) / median(j) from per-round log ratios of block medians (drift within a
        round hits both alike): Hodges-Lehmann estimate with the Wilcoxon signed-rank interval.
        Rounds where either block had foreign load are dropped when >= 8 clean ones remain."""
        from ..stats import paired_log_ratio_ci

        d = [] if i == j else round_log_ratios(self.reports[i], self.reports[j])
        if i == j or not d:
            return 1.0, (1.0 if i == j else float("nan")), (1.0 if i == j else float("nan"))
        est, lo, hi, _ = paired_log_ratio_ci(d, conf)
        return math.exp(est), math.exp(lo), math.exp(hi)

    def __repr__(self) -> str:
        rows = []
        for i, (name, rep) in enumerate(zip(self.names, self.reports)):
            r, lo, hi = self.ratio(i, 0)
            rows.append(f"{name}: {rep.median_ms:.4g} ms, x{r:.3f} [{lo:.3f}, {hi:.3f}]")
        return f"Comparison(ratios to the first, interleaved: {'; '.join(rows)})"

    def speedup(self, i: int, j: int = 0) -> tuple[float, float, float]:
        """How many times faster i is than j: median(j) / median(i), with CI."""
        r, lo, hi = self.ratio(j, i)
        return r, lo, hi

    def to_dict(self) -> dict:
        rows = []
        for i, (name, rep) in enumerate(zip(self.names, self.reports)):
            r, lo, hi = self.ratio(i, 0)
            rows.append({"name": name, "ratio_to_first": r, "ratio_ci95": [lo, hi],
                         "report": rep.to_dict()})
        from ..validity import summary_dict

        return {**summary_dict({n: r.validity for n, r in zip(self.names, self.reports)}),
                "mode": "interleaved", "items": rows}


def round_log_ratios(a: LatencyReport, b: LatencyReport) -> list[float]:
    """log(median of a's block / median of b's block) for each round both have samples in;
    rounds where either block had foreign load are dropped when >= MIN_UNITS clean ones remain."""
    from ..stats import MIN_UNITS

    xa, xb = np.asarray(a.samples_ms), np.asarray(b.samples_ms)
    pairs = [(p, q) for p, q in zip(a.blocks, b.blocks) if p.n and q.n]
    clean = [(p, q) for p, q in pairs if not (p.contaminated or q.contaminated)]
    if len(clean) >= MIN_UNITS:
        pairs = clean
    return [math.log(np.median(xa[p.start:p.start + p.n]) / np.median(xb[q.start:q.start + q.n]))
            for p, q in pairs]
