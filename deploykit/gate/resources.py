"""The gate's two other verdicts: peak steady memory and cold start, each with a statistic
that fits how it varies.

* Memory is nearly deterministic (fresh processes, gate/memory_probe.py): a few repeated runs
  per model and a tolerance. The statistic is the peak steady RSS *delta* over the fresh process
  before loading (what the model costs; the interpreter and runtime are the same on both sides
  and would only dilute a relative threshold). Regression <=> median(new) - median(old) exceeds
  both `threshold` x median(old) and the noise floor: the larger of the spread seen across
  repeated runs on either side and 1 MiB (page and allocator granularity). Improvement is the
  mirror image.
* Cold start (session creation + first inference) is noisy: one sample per fresh session, i.e.
  per round of the gate (gate/rounds.py creates new sessions every round, in rotating order).
  Interleaved mode pairs the rounds and uses the latency gate's statistic (Hodges-Lehmann of the
  per-round log ratios with the signed-rank interval, decision.decide with the threshold);
  stored mode compares the two runs' samples (Mann-Whitney shift interval).
* A baseline without the data (recorded before deploykit measured memory or cold starts) gives
  the status "no-data": it is never a pass; the check says so and JUnit marks the case skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import median
from typing import Any, Sequence

import numpy as np

from ..core import LatencyReport

NOISE_FLOOR_BYTES = 1 << 20
MEMORY_KEY = "steady_delta_bytes"


@dataclass(frozen=True)
class ResourceVerdict:
    """A verdict on one resource: memory or cold start."""

    kind: str  # "memory" | "cold-start"
    status: str  # "regression" | "improvement" | "within-threshold" | "no-change" | "no-data"
    threshold: float
    old: float | None
    new: float | None
    ratio: float | None
    detail: str

    @property
    def failed(self) -> bool:
        return self.status == "regression"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "status": self.status, "failed": self.failed,
                "threshold": self.threshold, "old": self.old, "new": self.new,
                "ratio": self.ratio, "detail": self.detail, "summary": self.summary}

    @property
    def summary(self) -> str:
        what = {"memory": "peak steady memory", "cold-start": "cold start"}[self.kind]
        if self.status == "no-data":
            return f"{what}: not checked: {self.detail}"
        word = {"regression": "REGRESSION", "improvement": "improvement",
                "within-threshold": "significant change within threshold",
                "no-change": "no significant change"}[self.status]
        change = "" if self.ratio is None else f" {self.ratio - 1:+.1%}"
        return f"{what}: {word}{change} (threshold {self.threshold:.0%}; {self.detail})"


def memory_runs(report: LatencyReport) -> list[int]:
    """The fresh-process steady-delta measurements a report carries (empty: none)."""
    runs = (report.memory or {}).get("runs") or []
    return [int(r[MEMORY_KEY]) for r in runs if isinstance(r, dict) and MEMORY_KEY in r]


def with_memory_runs(runs: Sequence[dict]) -> dict[str, Any]:
    """A report's `memory` from fresh-process runs: the median run's phases, and every run."""
    if not runs:
        return {}
    order = sorted(runs, key=lambda r: r[MEMORY_KEY])
    return {**order[len(order) // 2], "runs": list(runs)}


def memory_verdict(old: Sequence[int], new: Sequence[int], threshold: float) -> ResourceVerdict:
    from ..errors import InputError
    from ..measure.memory import fmt_bytes

    if not old or not new:
        side = "the baseline" if not old else "this run"
        return ResourceVerdict("memory", "no-data", threshold, None, None, None,
                               f"{side} has no fresh-process memory measurement (re-record the "
                               "baseline with this deploykit, or pass --against OLD_MODEL)")
    bad = [v for v in (*old, *new) if isinstance(v, bool) or not isinstance(v, (int, float))
           or not math.isfinite(v)]
    if bad:
        raise InputError(f"the memory gate cannot decide: unusable measurements {bad!r}")
    mo, mn = float(median(old)), float(median(new))
    spread = max(max(old) - min(old), max(new) - min(new))
    floor = max(spread, NOISE_FLOOR_BYTES)
    tol = max(threshold * abs(mo), floor)
    diff = mn - mo
    status = ("regression" if diff > tol else "improvement" if -diff > tol else
              "within-threshold" if abs(diff) > floor else "no-change")
    ratio = mn / mo if mo > 0 else None
    detail = (f"steady peak over the fresh process {fmt_bytes(mo)} -> {fmt_bytes(mn)} "
              f"({fmt_bytes(diff)}), {len(old)}+{len(new)} fresh-process runs, noise floor "
              f"{fmt_bytes(floor)}")
    return ResourceVerdict("memory", status, threshold, mo, mn, ratio, detail)


def cold_start_verdict(old: LatencyReport, new: LatencyReport, threshold: float,
                       paired: bool) -> ResourceVerdict:
    """Cold starts per round: paired (interleaved rounds) or two runs' samples (stored)."""
    from ..stats import MIN_UNITS, mann_whitney_p, paired_log_ratio_ci, shift_log_ratio_ci
    from .decision import Estimate, decide

    from ..errors import InputError
    from ..stats import positive_finite

    xo, xn = list(old.cold_start_samples_ms), list(new.cold_start_samples_ms)
    bad = [v for v in (*xo, *xn) if not positive_finite(v)]
    if bad:  # fails closed: a verdict never rests on an unusable number
        raise InputError(f"the cold-start gate cannot decide: unusable samples {bad[:5]!r} (re-"
                         "record the baseline if they come from it)")
    if len(xo) < MIN_UNITS or len(xn) < MIN_UNITS:
        side = "the baseline" if len(xo) < MIN_UNITS else "this run"
        return ResourceVerdict("cold-start", "no-data", threshold, None, None, None,
                               f"{side} has {min(len(xo), len(xn))} cold-start samples (need "
                               f">= {MIN_UNITS} rounds of fresh sessions; re-record the baseline "
                               "with this deploykit)")
    if paired:
        n = min(len(xo), len(xn))
        d = [math.log(b / a) for a, b in zip(xo[:n], xn[:n])]
        est, lo, hi, p = paired_log_ratio_ci(d)
        p_raw, mode = p, "interleaved"
    else:
        est, lo, hi, _ = shift_log_ratio_ci(np.log(xo), np.log(xn))
        p_raw = p = mann_whitney_p(xo, xn)
        n, mode = min(len(xo), len(xn)), "stored"
    e = Estimate(ratio=math.exp(est), lo=math.exp(lo), hi=math.exp(hi), conf=0.99, mode=mode,
                 n_units=n, p_units=p, p_raw=p_raw, old_median_ms=float(np.median(xo)),
                 new_median_ms=float(np.median(xn)))
    v = decide(e, threshold)
    detail = (f"session creation + first inference, median {e.old_median_ms:.1f} -> "
              f"{e.new_median_ms:.1f} ms, 99% CI of the ratio {e.lo:.3f} – {e.hi:.3f}, "
              f"{n} {'paired rounds' if paired else 'rounds each'}")
    return ResourceVerdict("cold-start", v.status, threshold, e.old_median_ms, e.new_median_ms,
                           e.ratio, detail)
