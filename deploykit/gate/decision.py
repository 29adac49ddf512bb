"""The statistical latency gate: is the new model slower than the old one, really and by enough?

Why not asv's rule as is (point ratio above a threshold AND a Mann-Whitney test on raw samples):
on a shared machine, raw samples are not independent -- the median drifts from one half-second
block to the next by up to 1.7x -- so a test that treats thousands of raw samples as independent
calls every drift significant, and a point threshold detects a slowdown equal to the threshold
only half the time. So the unit of evidence here is the block:

* interleaved mode (old and new measured in alternating rounds in one process, the robust mode):
  per round, d = log(median new / median old); drift hits both alike and cancels in d. The ratio
  is exp(Hodges-Lehmann estimate of d) with the Wilcoxon signed-rank confidence interval;
* stored mode (new run against the baseline's stored samples): two-sample Hodges-Lehmann shift
  of log block medians with the Mann-Whitney (Moses) interval. Weaker: drift between the two
  runs is not cancelled, which is why the environment must match.

Decision (log scale, L = log(1 + threshold), CI at `conf`, default 99%):
  regression  <=> lo > 0 (significant) AND raw-sample Mann-Whitney p < 1 - conf (asv's test)
                  AND hi >= L (a slowdown of the threshold is within the interval)
                  AND estimate >= L / 2 (and not a trivially small one);
  improvement  is the mirror image; a significant change that fails the size test is reported as
  "within threshold", anything else as "no significant change". A slowdown equal to the threshold
  is therefore caught whenever it is significant, while one measured precisely to be smaller than
  the threshold passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .. import stats
from ..core import LatencyReport, OpTime, Result
from ..errors import InputError
from ..stats import (DEFAULT_CONF, MIN_UNITS, paired_log_ratio_ci, positive_finite,
                     shift_log_ratio_ci)


# ---- estimates ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Estimate(Result):
    """Ratio new/old of median latency with its interval, and how it was obtained."""

    ratio: float
    lo: float
    hi: float
    conf: float
    mode: str  # "interleaved" | "stored"
    n_units: int  # rounds (interleaved) or blocks (stored) used
    p_units: float  # signed-rank / rank-sum p-value on the units
    p_raw: float  # asv-style Mann-Whitney p-value on all raw samples
    old_median_ms: float
    new_median_ms: float
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _finish(mode: str, est: float, lo: float, hi: float, p_units: float, n: int, conf: float,
            old: LatencyReport, new: LatencyReport, note: str) -> Estimate:
    return Estimate(ratio=math.exp(est), lo=math.exp(lo), hi=math.exp(hi), conf=conf, mode=mode,
                    n_units=n, p_units=p_units,
                    p_raw=stats.mann_whitney_p(old.samples_ms, new.samples_ms),
                    old_median_ms=old.median_ms, new_median_ms=new.median_ms, note=note)


def interleaved_estimate(old: LatencyReport, new: LatencyReport,
                         conf: float = DEFAULT_CONF) -> Estimate:
    """Old and new timed in alternating rounds (`measure.compare`): block k of each is round k."""
    xo, xn = np.asarray(old.samples_ms), np.asarray(new.samples_ms)
    pairs = list(zip(old.blocks, new.blocks))
    clean = [(a, b) for a, b in pairs if not (a.contaminated or b.contaminated)]
    note = ""
    if len(clean) >= MIN_UNITS:
        if len(clean) < len(pairs):
            note = f"{len(pairs) - len(clean)} of {len(pairs)} rounds dropped (foreign CPU load)"
        pairs = clean
    elif len(clean) < len(pairs):
        note = f"{len(pairs) - len(clean)} of {len(pairs)} rounds had foreign CPU load (kept)"
    d = [math.log(np.median(xn[b.start:b.start + b.n]) / np.median(xo[a.start:a.start + a.n]))
         for a, b in pairs if a.n and b.n]
    if len(d) < MIN_UNITS:
        raise InputError(f"only {len(d)} interleaved rounds were measured (need >= {MIN_UNITS}): "
                         "raise --max-time")
    est, lo, hi, p = paired_log_ratio_ci(d, conf)
    return _finish("interleaved", est, lo, hi, p, len(d), conf, old, new, note)


def refuse_contaminated(side: str, report: LatencyReport, rerecord: str = "") -> None:
    """Stored mode compares two runs taken at different times, so load in either is not
    cancelled: a contaminated side is refused with what to do (exit 2 from the CLI)."""
    from .baseline import BaselineError

    v = report.validity
    if v.state != "contaminated":
        return
    todo = (f"re-record it on a quiet machine ({rerecord or '`deploykit baseline --wait-quiet`'})"
            if side == "baseline" else "rerun on a quiet machine or with --wait-quiet SECONDS")
    raise BaselineError(f"stored-mode check refused: the {side} measurement is contaminated "
                        f"({v.reason}); {todo}, or pass --against OLD_MODEL for an interleaved "
                        "check, which cancels load common to both models")


def stored_estimate(old: LatencyReport, new: LatencyReport,
                    conf: float = DEFAULT_CONF) -> Estimate:
    """New run against stored samples: compare the two runs' block medians. Refused when either
    run is contaminated (refuse_contaminated)."""
    refuse_contaminated("baseline", old)
    refuse_contaminated("new", new)
    bo, bn = (stats.block_medians(r.samples_ms, r.blocks, chunk_unblocked=True) for r in (old, new))
    if min(len(bo), len(bn)) < MIN_UNITS:
        raise InputError(f"too few timed blocks to compare ({len(bo)} baseline, {len(bn)} new; "
                         f"need >= {MIN_UNITS}): raise --max-time or re-record the baseline")
    est, lo, hi, p = shift_log_ratio_ci(np.log(bo), np.log(bn), conf)
    return _finish("stored", est, lo, hi, p, min(len(bo), len(bn)), conf, old, new,
                   "no interleaved old model: compared with stored samples (drift between the two "
                   "runs is not cancelled)")


# ---- the decision ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict(Result):
    status: str  # "regression" | "improvement" | "within-threshold" | "no-change"
    estimate: Estimate
    threshold: float

    def __repr__(self) -> str:
        return f"Verdict({self.summary})"

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "failed": self.failed, "threshold": self.threshold,
                "summary": self.summary, "estimate": self.estimate.to_dict()}

    @property
    def failed(self) -> bool:
        return self.status == "regression"

    @property
    def summary(self) -> str:
        e = self.estimate
        change = f"{e.ratio - 1:+.1%} [{e.lo - 1:+.1%}, {e.hi - 1:+.1%}] ({e.conf:.0%} CI)"
        words = {"regression": f"REGRESSION: slower by {change}, threshold {self.threshold:.1%}",
                 "improvement": f"improvement: {change}",
                 "within-threshold": f"significant change within the {self.threshold:.1%} "
                                     f"threshold: {change}",
                 "no-change": f"no significant change: {change}"}
        return words[self.status]


def check_estimate(e: Estimate) -> None:
    """The gate fails closed: a verdict is never computed from an unusable number."""
    bad = [f"{k}={v!r}" for k, v in (("ratio", e.ratio), ("old median", e.old_median_ms),
                                     ("new median", e.new_median_ms)) if not positive_finite(v)]
    bad += [f"CI low={e.lo!r}"] if not positive_finite(e.lo) else []
    bad += [f"CI high={e.hi!r}"] if not (isinstance(e.hi, (int, float)) and e.hi > 0) else []
    bad += [f"{k}={v!r}" for k, v in (("p (rounds)", e.p_units), ("p (raw samples)", e.p_raw))
            if not (isinstance(v, (int, float)) and 0 <= v <= 1)]
    if e.n_units < MIN_UNITS:
        bad.append(f"{e.n_units} rounds (need >= {MIN_UNITS})")
    if not bad and not e.lo <= e.ratio <= e.hi:
        bad.append(f"ratio {e.ratio} outside its interval [{e.lo}, {e.hi}]")
    if bad:
        raise InputError(f"the gate cannot decide: unusable numbers ({', '.join(bad)}); no "
                         "verdict is given: re-run the check (and re-record the baseline if its "
                         "samples are the cause)")


def decide(e: Estimate, threshold: float) -> Verdict:
    """Size AND significance, in both directions (see the module docstring)."""
    if not (math.isfinite(threshold) and threshold > 0):
        raise InputError(f"the slowdown threshold must be positive, got {threshold}")
    check_estimate(e)
    big = math.log1p(threshold)
    est, lo, hi = math.log(e.ratio), math.log(e.lo), math.log(e.hi)
    raw_sig = e.p_raw < 1 - e.conf
    if lo > 0 and raw_sig:
        status = "regression" if hi >= big and est >= big / 2 else "within-threshold"
    elif hi < 0 and raw_sig:
        status = "improvement" if lo <= -big and est <= -big / 2 else "within-threshold"
    else:
        status = "no-change"
    return Verdict(status, e, threshold)


def parse_threshold(text: str) -> float:
    """'5%' or '0.05' -> 0.05."""
    s = str(text).strip()
    try:
        v = float(s[:-1]) / 100 if s.endswith("%") else float(s)
    except ValueError:
        raise InputError(f"bad threshold {text!r}: expected e.g. 5% or 0.05") from None
    if not 0 < v < 10:
        raise InputError(f"threshold must be a positive fraction or percentage, got {text!r}")
    return v


# ---- environment and per-op diff ---------------------------------------------------------------

def env_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two fingerprints in the parts that change latency (CPU model,
    threads, cores, machine, backend versions, target settings); empty when comparable."""
    from ..measure.env import comparable_part

    a, b = comparable_part(old), comparable_part(new)
    out = []
    for key in a:
        if key in ("backend_versions", "target_config"):
            for sub in sorted(set(a[key]) | set(b[key])):
                if a[key].get(sub) != b[key].get(sub):
                    out.append(f"{sub} {a[key].get(sub)} -> {b[key].get(sub)}")
        elif a[key] != b[key]:
            out.append(f"{key} {a[key]!r} -> {b[key]!r}")
    return out


@dataclass(frozen=True)
class OpDiff:
    name: str
    op_type: str
    old_ms: float | None  # None: the node is new
    new_ms: float | None  # None: the node is gone

    @property
    def delta_ms(self) -> float:
        return (self.new_ms or 0.0) - (self.old_ms or 0.0)


def per_op_diff(old: Sequence[OpTime], new: Sequence[OpTime], top: int = 10) -> list[OpDiff]:
    """Nodes ranked by how much time they gained (by node name; added and removed nodes count
    with their whole time)."""
    o = {x.name: x for x in old}
    n = {x.name: x for x in new}
    rows = [OpDiff(k, (n.get(k) or o[k]).op_type, o[k].total_ms if k in o else None,
                   n[k].total_ms if k in n else None) for k in {**o, **n}]
    rows.sort(key=lambda r: -r.delta_ms)
    return rows[:top]


