"""Is a measurement a result? The verdict on the timing run itself, from data already measured.

A median taken while other processes used the cores is the latency of *those* conditions: on a
2-core machine with two CPU hogs a ~7 ms CNN measured 12.98 ms with a +/-0.4% interval, and the
interval's tightness made it look precise. So every LatencyReport carries a state:

* ``contaminated``: the estimate rests on samples taken under foreign CPU load -- more than
  MAX_CONTAMINATED_SHARE of the samples were in contaminated blocks, or contaminated blocks had to
  be kept (too few clean ones to drop them), or the clean blocks themselves carried a steady
  foreign load of at least half the contamination threshold;
* ``unstable``: no foreign load, but the machine did not hold still -- the block medians drifted
  by more than MAX_DRIFT from the first half of the run to the second *and* by more than
  DRIFT_Z standard errors of that difference (estimated from the scatter of the block medians
  within each half: on a short run of six blocks, a 6% difference between two halves of three
  noisy blocks is noise, not drift), or they scattered by more than MAX_SPREAD (robust CV);
* ``clean``: neither.

Everything here is a pure function of samples and blocks (tested on synthetic samples); the
thresholds are module constants so that the states mean the same thing everywhere.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

CLEAN, CONTAMINATED, UNSTABLE = "clean", "contaminated", "unstable"
STATES = (CLEAN, CONTAMINATED, UNSTABLE)
EXIT_NOT_CLEAN = 3  # `--strict`: the measurement ran, but it is not a clean result
MAX_CONTAMINATED_SHARE = 0.10
# Calibrated on the quiet 2-core VM this project runs on (tools/bench_load.py, 20 quiet 10 s runs
# of a ~5 ms CNN, no foreign load): the host shifts the speed by 6-9% between the halves of a run
# in about one run of five, and medians vary by +/-5% from run to run anyway. A 5% mark called a
# fifth of quiet runs unstable -- crying wolf, so users would turn --strict off. 10% keeps the
# verdict for what changes a result (throttling, a step of the clock); `profile --duration`'s
# stability flag (measure/stability.py) still reports smaller significant drifts.
MAX_DRIFT = 0.10
MAX_SPREAD = 0.10
MIN_CLEAN_BLOCKS = 8  # as stats.block_medians: fewer clean blocks and contaminated ones are kept
MIN_DRIFT_BLOCKS = 4
DRIFT_Z = 3.0  # drift must exceed this many standard errors of the halves' difference


@dataclass(frozen=True)
class Validity:
    """The verdict on one timing run; `reason` is one sentence a user can act on."""

    state: str
    reason: str
    contaminated_share: float  # samples in contaminated blocks / all samples
    foreign_load: float  # other processes' mean CPU share (0..1 of all cores), sample-weighted
    drift: float  # median of the 2nd half's block medians / the 1st half's - 1 (nan: too few)
    spread: float  # robust CV of the block medians the estimate uses (nan: too few)
    blocks_used: int
    discarded_blocks: int = 0  # dropped by --wait-quiet (overlapped foreign load)
    quiet_wait_s: float = 0.0

    @property
    def clean(self) -> bool:
        return self.state == CLEAN

    def headline(self) -> str:
        """What a terminal shows above the numbers when the state is not clean ('' if clean)."""
        if self.state == CONTAMINATED:
            return f"NOT A CLEAN MEASUREMENT: {self.reason}"
        if self.state == UNSTABLE:
            return f"UNSTABLE MEASUREMENT: {self.reason}"
        return ""

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in asdict(self).items()}


def _mean_load(blocks: Sequence) -> float:
    n = sum(b.n for b in blocks)
    return sum(b.foreign_cpu * b.n for b in blocks) / n if n else 0.0


def _drift_and_spread(meds: np.ndarray) -> tuple[float, float, float]:
    """(drift, spread, drift's standard error), all relative; nans with too few blocks.
    The standard error comes from the scatter *within* each half (robust: MAD around each
    half's own median), so a real step between the halves does not hide itself by inflating
    it; 1.2533 * sigma / sqrt(n) is the large-sample standard error of a median."""
    if len(meds) < MIN_DRIFT_BLOCKS:
        return float("nan"), float("nan"), float("nan")
    half = len(meds) // 2
    a, b = meds[:half], meds[half:]
    first, second = float(np.median(a)), float(np.median(b))
    mid = float(np.median(meds))
    mad = float(np.median(np.abs(meds - mid)))
    within = 1.4826 * float(np.median(np.abs(np.concatenate([a - first, b - second])))) / mid
    se = 1.2533 * within * math.sqrt(1.0 / len(a) + 1.0 / len(b))
    return second / first - 1.0, 1.4826 * mad / mid, se


def drift_is_real(drift: float, drift_se: float) -> bool:
    """Drift beyond MAX_DRIFT and beyond DRIFT_Z standard errors (nan: not judged)."""
    if math.isnan(drift):
        return False
    return abs(drift) > MAX_DRIFT and abs(drift) > DRIFT_Z * drift_se


def assess(samples_ms: Sequence[float], blocks: Sequence, *, threshold: float = 0.25,
           discarded_blocks: int = 0, quiet_wait_s: float = 0.0) -> Validity:
    """The state of a run of `samples_ms` cut into `blocks` (core.Block, in time order).
    `threshold` is the foreign CPU share that marks a block contaminated (TimingPlan's)."""
    x = np.asarray(samples_ms, dtype=float)
    used = [b for b in blocks if b.n > 0]
    total = sum(b.n for b in used)
    dirty = [b for b in used if b.contaminated]
    clean = [b for b in used if not b.contaminated]
    share = sum(b.n for b in dirty) / total if total else 0.0
    kept_dirty = bool(dirty) and len(clean) < MIN_CLEAN_BLOCKS
    basis = used if kept_dirty else clean
    meds = np.array([np.median(x[b.start:b.start + b.n]) for b in basis]) if basis else \
        np.array([])
    drift, spread, drift_se = _drift_and_spread(meds)
    load, clean_load = _mean_load(used), _mean_load(clean)
    common = dict(contaminated_share=share, foreign_load=load, drift=drift, spread=spread,
                  blocks_used=len(basis), discarded_blocks=discarded_blocks,
                  quiet_wait_s=quiet_wait_s)
    waited = (f"; {discarded_blocks} block(s) that overlapped foreign load were discarded"
              if discarded_blocks else "")
    if share > MAX_CONTAMINATED_SHARE or kept_dirty:
        dirty_load = _mean_load(dirty)
        why = (f"{share:.0%} of samples taken while other processes used {dirty_load:.0%} of the "
               f"cores")
        if kept_dirty:
            why += "; the median below includes them and is inflated by the load"
        else:
            why += (f"; the median below uses the {len(clean)} clean blocks only, but the machine "
                    f"was busy for most of the run")
        return Validity(CONTAMINATED, why + waited, **common)
    if clean_load >= threshold / 2:
        return Validity(CONTAMINATED, f"other processes used {clean_load:.0%} of the cores "
                                      f"throughout the run (below the {threshold:.0%} per-block "
                                      f"mark, but steady); the median below is inflated by the "
                                      f"load" + waited, **common)
    if drift_is_real(drift, drift_se):
        return Validity(UNSTABLE, f"block medians drifted {drift:+.1%} from the first half of "
                                  f"the run to the second (limit ±{MAX_DRIFT:.0%}, standard "
                                  f"error {drift_se:.1%} from the scatter within each half): "
                                  f"the machine "
                                  f"did not hold still (frequency, thermal or host contention; "
                                  f"see `deploykit doctor`)" + waited, **common)
    if not math.isnan(spread) and spread > MAX_SPREAD:
        return Validity(UNSTABLE, f"block medians scatter by {spread:.1%} (robust CV, limit "
                                  f"{MAX_SPREAD:.0%}): the machine did not hold still (see "
                                  f"`deploykit doctor`)" + waited, **common)
    note = (f"{share:.0%} of samples in contaminated blocks, dropped" if dirty else
            "no foreign load above the mark")
    return Validity(CLEAN, note + waited, **common)


def worst(states: Sequence[str]) -> str:
    """The state of several measurements taken together (contaminated > unstable > clean)."""
    for s in (CONTAMINATED, UNSTABLE):
        if s in states:
            return s
    return CLEAN


def summary_dict(validities: Mapping[str, Validity]) -> dict[str, Any]:
    """Top-level `state` / `reason` for a JSON payload holding several measurements."""
    bad = {k: v for k, v in validities.items() if not v.clean}
    state = worst([v.state for v in validities.values()])
    reason = "; ".join(f"{k}: {v.reason}" for k, v in bad.items()) if bad else \
        "every measurement is clean"
    return {"state": state, "reason": reason}


def strict_default(environ: Mapping[str, str] | None = None) -> bool:
    """`--strict` is on by default in CI (CI=true, as GitHub/GitLab and most runners set it)."""
    import os

    env = os.environ if environ is None else environ
    return env.get("CI", "").strip().lower() in ("true", "1", "yes")
