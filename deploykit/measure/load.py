"""Foreign CPU load on the cores a measurement runs on: `LoadMonitor` reads /proc/stat around a
timed block (the machine's busy time minus this process's own), `QuietWaiter` pauses between
rounds until the load falls below the contamination mark. measure/timing.py marks blocks with it;
`deploykit doctor` and the gate's rounds sample it too (through timing.make_load_monitor, the
seam tests script)."""

from __future__ import annotations

import os
import time

from ..core import TimingPlan

_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_NCPU = os.cpu_count() or 1
_PROC_STAT = "/proc/stat"


def _allowed_cpus() -> frozenset[int] | None:
    """The CPUs this process may run on when they are fewer than the machine's (a cpuset or
    taskset): load on the other CPUs does not compete with the measurement."""
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return None
    return frozenset(cpus) if len(cpus) < _NCPU else None


class LoadMonitor:
    """Foreign CPU share (0..1 of the cores this process may run on: all of them, or its
    affinity set when that is smaller) between `start()` and `stop()`."""

    def __init__(self) -> None:
        self._t0 = self._busy0 = self._own0 = 0.0
        self._cpus = _allowed_cpus()

    def _busy_s(self) -> float | None:
        try:
            with open(_PROC_STAT) as f:
                lines = f.readlines() if self._cpus else [f.readline()]
        except OSError:
            return None
        busy = 0
        for line in lines:
            name, *fields = line.split() or [""]
            if not name.startswith("cpu") or (
                    self._cpus and not (name[3:].isdigit() and int(name[3:]) in self._cpus)):
                continue
            v = [int(x) for x in fields]
            idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
            busy += sum(v[:8]) - idle  # user..steal; guest is already inside user
        return busy / _HZ

    @staticmethod
    def _own_s() -> float:
        t = os.times()
        return t.user + t.system

    def start(self) -> None:
        self._t0, self._busy0, self._own0 = time.perf_counter(), self._busy_s() or 0.0, self._own_s()

    def stop(self) -> float:
        wall = time.perf_counter() - self._t0
        busy = self._busy_s()
        if busy is None or wall <= 0:
            return 0.0
        foreign = (busy - self._busy0) - (self._own_s() - self._own0)
        # /proc/stat ticks at 1/_HZ: below two ticks per core the estimate is pure rounding.
        if wall < 2.0 / _HZ:
            return 0.0
        ncpu = len(self._cpus) if self._cpus else _NCPU
        return float(min(max(foreign / (wall * ncpu), 0.0), 1.0))



QUIET_PROBE_S = 0.5  # how long one look at the machine's load lasts while waiting for quiet


def sample_load(monitor: LoadMonitor, seconds: float) -> float:
    """Foreign CPU share over `seconds` of doing nothing ourselves."""
    monitor.start()
    time.sleep(seconds)
    return monitor.stop()


class QuietWaiter:
    """Waits, between timed rounds, until foreign load is below the contamination mark.
    Its budget (`plan.wait_quiet_s`) covers both the waiting and the discarded rounds; once it is
    spent it gives up (says so through `warn`) and the run continues under load, which the
    report's validity then shows."""

    def __init__(self, monitor: LoadMonitor, plan: TimingPlan, status=None, warn=None):
        self.monitor, self.plan = monitor, plan
        self.status = status or (lambda text: None)
        self.warn = warn or (lambda text: None)
        self.spent_s = 0.0
        self.discarded = 0
        self.gave_up = False

    @property
    def active(self) -> bool:
        return not self.gave_up

    def charge(self, seconds: float) -> None:
        """Count a discarded round against the budget."""
        self.discarded += 1
        self.spent_s += seconds

    def wait(self, reason: str) -> None:
        """Probe the load until it is below the mark or the budget is spent."""
        mark = self.plan.contamination_threshold
        while not self.gave_up:
            if self.spent_s >= self.plan.wait_quiet_s:
                self.gave_up = True
                self.warn(f"gave up waiting for quiet after {self.plan.wait_quiet_s:g} s "
                          f"({reason}): measuring under load; the result will not be clean")
                return
            load = sample_load(self.monitor, QUIET_PROBE_S)
            self.spent_s += QUIET_PROBE_S
            if load <= mark:
                return
            reason = f"foreign load {load:.0%} of the cores > {mark:.0%}"
            self.status(f"waiting for quiet: {reason} ({self.spent_s:.0f} of "
                        f"{self.plan.wait_quiet_s:g} s)")
