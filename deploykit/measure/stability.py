"""Stability of a long run (`deploykit profile --duration 10m`): does the latency hold still?

On a device, a run of minutes shows what a few seconds hide: thermal throttling, a governor
stepping the clock down, a background job. From the blocks a report already has (in time order;
a block's time is the sum of its samples, so no clock is needed):

* drift: the second half's median of block medians over the first's (validity.py computes it,
  the same number that makes a run `unstable`; not recomputed here);
* trend: Theil-Sen slope of log block median against time, as %/min with its 95% interval
  (robust to the odd slow block, unlike a least-squares fit);
* spread: CV and IQR of the samples, p99/p50 (the tail users feel);
* a flag when the second half differs from the first both significantly (Mann-Whitney on the
  block medians of the two halves, p < 0.01: blocks, not samples, are the units, since
  consecutive samples are not independent) and by at least FLAG_DRIFT (a significant 0.3% on a
  thousand blocks is no news).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .. import stats
from ..core import LatencyReport
from ..validity import MIN_DRIFT_BLOCKS

FLAG_DRIFT = 0.02
FLAG_P = 0.01
MIN_BLOCKS = MIN_DRIFT_BLOCKS  # as validity's drift; too few for p < FLAG_P: never flagged


@dataclass(frozen=True)
class Stability:
    duration_s: float  # timed seconds the blocks cover
    blocks: int
    drift: float  # validity's: 2nd half / 1st half of the block medians - 1
    trend_per_min: float  # Theil-Sen slope, relative change per minute
    trend_ci: tuple[float, float]
    halves_p: float  # Mann-Whitney p of block medians, 1st half vs 2nd
    cv: float
    iqr_ms: float
    p99_over_p50: float
    flagged: bool
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else
                    list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def stability(r: LatencyReport) -> Stability | None:
    """The stability summary of a report; None with fewer than MIN_BLOCKS timed blocks."""
    from scipy.stats import theilslopes

    x = np.asarray(r.samples_ms, dtype=float)
    blocks = [b for b in r.blocks if b.n > 0]
    if len(blocks) < MIN_BLOCKS:
        return None
    meds = np.array([np.median(x[b.start:b.start + b.n]) for b in blocks])
    dur = np.array([x[b.start:b.start + b.n].sum() / 1e3 for b in blocks])
    t_min = (np.cumsum(dur) - dur / 2) / 60.0
    slope, _, lo, hi = theilslopes(np.log(meds), t_min, 0.95)
    half = len(meds) // 2
    p = stats.mann_whitney_p(meds[:half], meds[half:])
    drift = r.validity.drift
    flagged = bool(p < FLAG_P and abs(drift) >= FLAG_DRIFT)
    p50, p99 = np.percentile(x, [50, 99])
    q1, q3 = np.percentile(x, [25, 75])
    if flagged:
        note = (f"the second half differs from the first: {drift:+.1%} (block medians, "
                f"Mann-Whitney p={p:.2g}); the device did not hold still: throttling, clock or "
                "background load")
    else:
        note = f"second half vs first {drift:+.1%} (p={p:.2g}): steady"
    return Stability(duration_s=float(dur.sum()), blocks=len(blocks), drift=float(drift),
                     trend_per_min=_expm1(slope), trend_ci=(_expm1(lo), _expm1(hi)),
                     halves_p=float(p),
                     cv=r.cv, iqr_ms=float(q3 - q1), p99_over_p50=float(p99 / p50),
                     flagged=flagged, note=note)


def _expm1(log_slope: float) -> float:
    """exp(x) - 1 of a log-scale slope; a slope beyond float range (blocks of a few microseconds
    give a time axis of nothing) is infinite, not an OverflowError."""
    return math.expm1(log_slope) if log_slope < 700 else math.inf
