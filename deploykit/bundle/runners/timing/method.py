"""The timing methodology of measure/timing.py, in the stdlib only (this runs on the device, where
deploykit is not installed): the foreign-load monitor (/proc/stat), warm-up until the running
median settles, and timed blocks until the 95% CI of the median of block medians is narrow enough.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any, Sequence

_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class LoadMonitor:
    """Foreign CPU share (0..1 of all cores) between start() and stop(), from /proc/stat."""

    def __init__(self) -> None:
        self.ncpu = os.cpu_count() or 1
        self._t0 = self._busy0 = self._own0 = 0.0

    @staticmethod
    def _busy_s() -> float | None:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return (sum(v[:8]) - idle) / _HZ

    @staticmethod
    def _own_s() -> float:
        t = os.times()
        return t.user + t.system

    def start(self) -> None:
        self._t0, self._busy0, self._own0 = time.perf_counter(), self._busy_s() or 0.0, \
            self._own_s()

    def stop(self) -> float:
        wall = time.perf_counter() - self._t0
        busy = self._busy_s()
        if busy is None or wall < 2.0 / _HZ:
            return 0.0
        foreign = (busy - self._busy0) - (self._own_s() - self._own0)
        return float(min(max(foreign / (wall * self.ncpu), 0.0), 1.0))


def _median(x: Sequence[float]) -> float:
    s = sorted(x)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def median_ci(x: Sequence[float], conf: float = 0.95) -> tuple[float, float]:
    """Order-statistic CI of the median (stats.median_ci without scipy)."""
    s = sorted(x)
    n = len(s)
    if n < 6:
        return s[0], s[-1]
    alpha = 1 - conf
    cdf, j = 0.0, 0
    while True:  # largest j with P(Bin(n, .5) <= j - 1) <= alpha/2, as binom.ppf/cdf do
        p = math.comb(n, j) / 2 ** n
        if cdf + p > alpha / 2:
            break
        cdf += p
        j += 1
    j = max(j - 1, 0) if cdf > alpha / 2 else j
    return s[j], s[n - 1 - j]


def _time_once(fn) -> float:
    t0 = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - t0) / 1e6


def warm_up(fn, min_s: float = 0.2, max_s: float = 5.0, tol: float = 0.02) -> int:
    """Calls until the median of the last ~50 ms window is within `tol` of the one before."""
    d: list[float] = []
    t_start = time.perf_counter()
    while True:
        d.append(_time_once(fn))
        elapsed = time.perf_counter() - t_start
        if elapsed >= max_s:
            break
        w = max(5, int(0.05 / max(_median(d[-5:]) / 1e3, 1e-6)))
        if elapsed >= min_s and len(d) >= 2 * w:
            last, prev = _median(d[-w:]), _median(d[-2 * w:-w])
            if abs(last - prev) <= tol * prev:
                break
    return len(d)


def time_until(fn, out: list[float], end_ns: int) -> None:
    """Calls `fn` back to back, appending each call's ms to `out`, until perf_counter_ns passes
    `end_ns` (the last call is the one that crosses it)."""
    clock = time.perf_counter_ns
    while True:
        t0 = clock()
        fn()
        t1 = clock()
        out.append((t1 - t0) / 1e6)
        if t1 >= end_ns:
            return


def time_blocks(fn, *, block_s: float, max_time_s: float, rel_ci: float, min_samples: int = 30,
                min_blocks: int = 8, max_samples: int = 100_000, threshold: float = 0.25):
    """(samples_ms, blocks [[start, n, foreign_cpu]], stop_reason)."""
    mon = LoadMonitor()
    samples: list[float] = []
    blocks: list[list[Any]] = []
    clock, t_start = time.perf_counter_ns, time.perf_counter()
    while True:
        start = len(samples)
        end = clock() + int(block_s * 1e9)
        mon.start()
        time_until(fn, samples, end)
        blocks.append([start, len(samples) - start, mon.stop()])
        clean = [b for b in blocks if b[2] <= threshold and b[1] > 0]
        if len(samples) >= min_samples and len(clean) >= min_blocks:
            meds = [_median(samples[b[0]:b[0] + b[1]]) for b in clean]
            lo, hi = median_ci(meds)
            if (hi - lo) / 2 <= rel_ci * _median(meds):
                return samples, blocks, "ci-reached"
        if time.perf_counter() - t_start >= max_time_s:
            return samples, blocks, "time-cap"
        if len(samples) >= max_samples:
            return samples, blocks, "sample-cap"
