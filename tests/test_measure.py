"""The timing loop, driven by a fake clock: warm-up, stop rules and blocks have known answers."""

import numpy as np
import pytest

from deploykit import measure
from deploykit.core import TimingPlan


class FakeClock:
    """perf_counter(_ns) that only advances when the fake workload 'runs'."""

    def __init__(self):
        self.ns = 0

    def perf_counter_ns(self):
        return self.ns

    def perf_counter(self):
        return self.ns / 1e9

    def workload(self, durations_ms):
        it = iter(durations_ms)

        def fn():
            self.ns += int(next(it) * 1e6)
        return fn


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(measure.time, "perf_counter_ns", c.perf_counter_ns)
    monkeypatch.setattr(measure.time, "perf_counter", c.perf_counter)
    return c


def test_warmup_waits_for_the_running_median_to_settle(clock):
    # caches warming: 5 ms decaying to a steady 1 ms; warm-up must last until within 2%
    durations = [1.0 + 4.0 * np.exp(-i / 30) for i in range(20_000)]
    n, est = measure.warm_up(clock.workload(durations), TimingPlan(warmup_min_s=0.01))
    assert durations[n - 1] < 1.02 * 1.0 + 0.02 and est == pytest.approx(1.0, rel=0.03)


def test_stops_when_ci_reached_and_keeps_raw_samples(clock):
    rng = np.random.default_rng(0)
    durations = list(rng.lognormal(np.log(2.0), 0.05, 200_000))
    plan = TimingPlan(warmup_min_s=0.05, target_rel_ci=0.01, max_time_s=60)
    t = measure.measure_callable(clock.workload(durations), plan)
    assert t.stop_reason == "ci-reached"
    lo, hi = measure.stats.median_ci(t.samples_ms)
    med = np.median(t.samples_ms)
    assert (hi - lo) / 2 <= 0.01 * med
    assert med == pytest.approx(2.0, rel=0.02)
    assert sum(b.n for b in t.blocks) == len(t.samples_ms)
    assert [b.start for b in t.blocks] == list(np.cumsum([0] + [b.n for b in t.blocks[:-1]]))


def test_time_cap_when_noise_too_large(clock):
    rng = np.random.default_rng(1)
    durations = list(rng.lognormal(0, 1.5, 200_000))  # very noisy: ±1% needs far more time
    plan = TimingPlan(warmup_max_s=0.2, target_rel_ci=0.001, max_time_s=2.0)
    t = measure.measure_callable(clock.workload(durations), plan)
    assert t.stop_reason == "time-cap"


def test_interleaved_rounds_rotate_and_report_each(clock):
    rng = np.random.default_rng(2)
    a = clock.workload(list(rng.lognormal(np.log(1.0), 0.02, 100_000)))
    b = clock.workload(list(rng.lognormal(np.log(1.5), 0.02, 100_000)))
    ta, tb = measure.measure_many([a, b], TimingPlan(warmup_min_s=0.02, max_time_s=30))
    assert np.median(tb.samples_ms) / np.median(ta.samples_ms) == pytest.approx(1.5, rel=0.02)
    assert len(ta.blocks) == len(tb.blocks) >= 1


def test_load_monitor_reports_a_share(monkeypatch):
    m = measure.LoadMonitor()
    m.start()
    sum(i * i for i in range(200_000))
    share = m.stop()
    assert 0.0 <= share <= 1.0
