"""deploykit's timing methodology, for one callable or several interleaved.

1. First call timed alone (first-inference cost: lazy allocation, kernel selection).
2. Warm-up until the median of the last window agrees with the window before it
   (within `warmup_tolerance`), at least `warmup_min_s`, at most `warmup_max_s`.
3. Timed blocks of ~`block_s`; after each, stop when the 95% CI of the median (order statistics,
   distribution-free) is within +/- `target_rel_ci` of the median, or a time/sample cap is hit.
4. During every block the other processes' CPU time is read from /proc/stat minus this process's
   own CPU time: blocks where foreign load exceeds `contamination_threshold` are marked; the
   report's `validity` (validity.py) turns them into a verdict on the run.
5. With `wait_quiet_s`, a round that overlapped foreign load is discarded and the run pauses
   until the load falls below the mark (QuietWaiter, measure/load.py), giving up after
   `wait_quiet_s` seconds.
`compare` runs several callables in interleaved rounds (rotating order) in one process, so slow
drift of a shared machine hits all of them alike and their ratio stays honest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np

from .. import stats
from ..core import Block, LatencyReport, TimingPlan
from .comparison import Comparison
from .load import LoadMonitor, QuietWaiter, sample_load

if TYPE_CHECKING:  # measuring sits below the backends: it times any object with Artifact's shape
    from ..backends.base import Artifact

# The seam for the foreign-load sampler: measure_many, QuietWaiter and `deploykit doctor` build
# their monitor with this, so tests can inject a scripted load (the machine's own is not ours).
make_load_monitor: Callable[[], LoadMonitor] = LoadMonitor


@dataclass(frozen=True)
class Timing:
    """Raw result of timing one callable."""

    samples_ms: tuple[float, ...]
    blocks: tuple[Block, ...]
    stop_reason: str
    warmup_samples: int
    first_ms: float
    discarded_blocks: int = 0
    quiet_wait_s: float = 0.0
    warmup_ms: float = float("nan")


def _time_once(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - t0) / 1e6


def warm_up(fn: Callable[[], object], plan: TimingPlan) -> tuple[int, float]:
    """Run `fn` until its running median settles; returns (calls made, median of last window ms)."""
    durations: list[float] = []
    t_start = time.perf_counter()
    while True:
        durations.append(_time_once(fn))
        elapsed = time.perf_counter() - t_start
        if elapsed >= plan.warmup_max_s:
            break
        # window: ~50 ms worth of calls, at least 5
        w = max(5, int(0.05 / max(np.median(durations[-5:]) / 1e3, 1e-6)))
        if elapsed >= plan.warmup_min_s and len(durations) >= 2 * w:
            last = float(np.median(durations[-w:]))
            prev = float(np.median(durations[-2 * w:-w]))
            if abs(last - prev) <= plan.warmup_tolerance * prev:
                break
    w = max(1, min(len(durations), 5))
    return len(durations), float(np.median(durations[-w:]))


def converged(samples: Sequence[float], blocks: Sequence[Block], plan: TimingPlan) -> bool:
    """Stop when the 95% CI of the median over clean blocks is within +/- target_rel_ci.

    Blocks, not samples, are the units: consecutive samples share the machine's momentary state,
    so a CI over raw samples would be far too narrow. Contaminated blocks do not count."""
    if len(samples) < plan.min_samples:
        return False
    clean = [b for b in blocks if not b.contaminated and b.n > 0]
    if len(clean) < plan.min_blocks:
        return False
    meds = stats.block_medians(samples, clean, drop_contaminated=False)
    lo, hi = stats.median_ci(meds)
    return (hi - lo) / 2 <= plan.target_rel_ci * float(np.median(meds))


class _Series:
    """Samples and blocks of one callable while it is being timed."""

    def __init__(self, fn: Callable[[], object], plan: TimingPlan):
        self.fn = fn
        self.plan = plan
        self.samples: list[float] = []
        self.blocks: list[Block] = []
        self.first_ms = 0.0
        self.warmup_n = 0
        self.warmup_ms = float("nan")

    def prepare(self) -> None:
        self.first_ms = _time_once(self.fn)
        t0 = time.perf_counter()
        self.warmup_n, _ = warm_up(self.fn, self.plan)
        self.warmup_ms = (time.perf_counter() - t0) * 1e3

    def block(self, seconds: float, monitor: LoadMonitor) -> None:
        """Run for `seconds` of wall time (at least once), recording every call."""
        start = len(self.samples)
        fn, out, clock = self.fn, self.samples, time.perf_counter_ns
        end = clock() + int(seconds * 1e9)
        monitor.start()
        while True:
            t0 = clock()
            fn()
            t1 = clock()
            out.append((t1 - t0) / 1e6)
            if t1 >= end:
                break
        foreign = monitor.stop()
        n = len(out) - start
        self.blocks.append(Block(start, n, foreign, foreign > self.plan.contamination_threshold))

    def drop_last(self) -> None:
        """Forget the last block (it overlapped foreign load and we are waiting for quiet)."""
        b = self.blocks.pop()
        del self.samples[b.start:]

    def timing(self, stop_reason: str, waiter: "QuietWaiter | None" = None) -> Timing:
        return Timing(tuple(self.samples), tuple(self.blocks), stop_reason, self.warmup_n,
                      self.first_ms, waiter.discarded if waiter else 0,
                      waiter.spent_s if waiter else 0.0, self.warmup_ms)


def _progress(enabled: bool, description: str):
    from ..progress import progress_bar

    return progress_bar(enabled)


def measure_many(fns: Sequence[Callable[[], object]], plan: TimingPlan = TimingPlan(),
                 progress: bool = False, description: str = "timing") -> list[Timing]:
    """Time callables in interleaved rounds (rotating order) until every one's median CI is
    within target, or a cap is hit. With one callable this is plain adaptive timing."""
    from scipy.stats import binom  # noqa: F401  (imported now, not inside the first timed round)

    series = [_Series(fn, plan) for fn in fns]
    monitor = make_load_monitor()
    reason = "time-cap"
    per_block = plan.block_s / len(series)
    with _progress(progress, description) as bar:
        task = bar.add_task(description, total=plan.max_time_s, info="") if bar else None
        waiter = None
        if plan.wait_quiet_s > 0:
            def status(text: str) -> None:
                if bar:
                    bar.update(task, info=text)

            waiter = QuietWaiter(monitor, plan, status, warn_user)
            waiter.wait("before warm-up")
        for s in series:
            s.prepare()
        elapsed = 0.0  # timed seconds kept (waiting and discarded rounds do not count)
        rnd = 0
        while True:
            order = series[rnd % len(series):] + series[:rnd % len(series)]
            t_round = time.perf_counter()
            for s in order:
                s.block(per_block, monitor)
            rnd += 1
            took = time.perf_counter() - t_round
            if waiter and waiter.active and any(s.blocks[-1].contaminated for s in series):
                for s in series:
                    s.drop_last()
                waiter.charge(took)
                waiter.wait("the last round overlapped foreign load")
                continue
            elapsed += took
            if all(converged(s.samples, s.blocks, plan) for s in series):
                reason = "ci-reached"
                break
            if elapsed >= plan.max_time_s:
                reason = "time-cap"
                break
            if max(len(s.samples) for s in series) >= plan.max_samples:
                reason = "sample-cap"
                break
            if bar:
                widths = []
                for s in series:
                    lo, hi = stats.blocked_median_ci(s.samples, s.blocks)
                    meds = stats.block_medians(s.samples, s.blocks)  # as LatencyReport.median_ms
                    med = float(np.median(meds if len(meds) >= 2 else s.samples))
                    widths.append(f"{med:.3f} ms ±{(hi - lo) / 2 / med:.1%}")
                bar.update(task, completed=min(elapsed, plan.max_time_s), info=" | ".join(widths))
    return [s.timing(reason, waiter) for s in series]


def warn_user(text: str) -> None:
    import sys

    print(f"deploykit: warning: {text}", file=sys.stderr)


def measure_callable(fn: Callable[[], object], plan: TimingPlan = TimingPlan(),
                     progress: bool = False) -> Timing:
    return measure_many([fn], plan, progress)[0]


def _report(artifact: Artifact, timing: Timing, per_op, flops, roofline_ms,
            batch: int, memory: Mapping | None = None) -> LatencyReport:
    from .env import fingerprint

    t = artifact.target
    return LatencyReport(
        samples_ms=timing.samples_ms, target=t.name, target_config=dict(t.config),
        artifact_id=artifact.id, model_sha256=artifact.model.sha256,
        model_path=str(artifact.model.path),
        env={**fingerprint(t.name, t.config, t.threads), **artifact.env},
        stop_reason=timing.stop_reason, session_create_ms=artifact.session_create_ms,
        first_inference_ms=timing.first_ms, warmup_samples=timing.warmup_samples, batch=batch,
        blocks=timing.blocks, per_op=tuple(per_op), flops=flops, roofline_ms=roofline_ms,
        labels=tuple(artifact.labels), discarded_blocks=timing.discarded_blocks,
        quiet_wait_s=timing.quiet_wait_s, warmup_ms=timing.warmup_ms, memory=memory or {},
        cold_start_samples_ms=(artifact.session_create_ms + timing.first_ms,))


def _batch(feeds: Mapping[str, np.ndarray]) -> int:
    first = next(iter(feeds.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


def profile_artifact(artifact: Artifact, feeds: Mapping[str, np.ndarray],
                     plan: TimingPlan = TimingPlan(), *, per_op: bool = True,
                     progress: bool = False, trace_path: str | None = None,
                     flops: float | None = None, roofline_ms: float | None = None) -> LatencyReport:
    """Time one artifact; the per-op breakdown runs after timing, in its own profiling pass.

    Memory (measure.memory): the first inference runs here under the RSS sampler (and is the
    report's first-inference time); the timed blocks run without it; the steady phase is an
    untimed pass after them, no longer than the plan's time cap."""
    from dataclasses import replace as _replace

    from . import memory as mem

    fn = artifact.timed_runner(feeds)
    with mem.RssSampler() as first:
        first_ms = _time_once(fn)
    timing = _replace(measure_callable(fn, plan, progress), first_ms=first_ms)
    # the untimed steady pass lasts no longer than the plan lets the timing last (still at
    # least STEADY_MIN_RUNS calls): a search's layer-unit plans time for 0.1 s, and a fixed
    # 0.2 s steady pass after each had made memory two thirds of the layer table's cost
    steady = mem.steady_pass(fn, min_s=min(mem.STEADY_MIN_S, plan.max_time_s))
    load = artifact.load_memory
    memory = mem.memory_dict(load.start_bytes if load else first.start_bytes, load, first.phase,
                             steady, str(artifact.model.path))
    ops = artifact.per_op(feeds, trace_path=trace_path) if per_op else []
    if artifact.runtime_memory:  # what the runtime itself counts (read by per_op, e.g. ORT's)
        memory = {**memory, "runtime": dict(artifact.runtime_memory)}
    rep = _report(artifact, timing, ops, flops, roofline_ms, _batch(feeds), memory)
    from .stability import stability

    st = stability(rep)
    return _replace(rep, stability=st.to_dict()) if st else rep


def compare(artifacts: Sequence[Artifact], feeds_per_artifact: Sequence[Mapping[str, np.ndarray]],
            plan: TimingPlan = TimingPlan(), progress: bool = False, *, per_op: bool = False,
            names: Sequence[str] | None = None) -> Comparison:
    """Interleaved A/B/A/B rounds in one process; ratios of medians carry a CI."""
    if len(artifacts) != len(feeds_per_artifact):
        raise ValueError("one feeds mapping per artifact")
    timings = measure_many([a.timed_runner(f) for a, f in zip(artifacts, feeds_per_artifact)],
                           plan, progress, "interleaved")
    reports = []
    for a, f, t in zip(artifacts, feeds_per_artifact, timings):
        ops = a.per_op(f) if per_op else []
        reports.append(_report(a, t, ops, None, None, _batch(f)))
    names = tuple(names or (f"{a.model.path.name}@{a.target.name}" for a in artifacts))
    return Comparison(tuple(reports), names)


def required_samples_note(report: LatencyReport) -> str:
    """Why the run stopped, in words for the table."""
    if report.stop_reason == "ci-reached":
        return f"CI target reached after {len(report.samples_ms)} samples"
    return (f"stopped by {report.stop_reason} at ±{report.rel_ci_halfwidth:.1%} "
            f"after {len(report.samples_ms)} samples")


__all__ = ["LoadMonitor", "QuietWaiter", "make_load_monitor", "sample_load", "Timing",
           "measure_callable", "measure_many", "profile_artifact", "compare", "Comparison",
           "warm_up", "required_samples_note"]
