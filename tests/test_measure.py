"""The timing loop, driven by a fake clock: warm-up, stop rules and blocks have known answers."""

import numpy as np
import pytest

from deploykit.measure import load as load_monitor
from deploykit.measure import timing as measure
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
    assert len(t.blocks) >= plan.min_blocks  # one block is never enough evidence
    lo, hi = measure.stats.blocked_median_ci(t.samples_ms, t.blocks)
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
    calls: list[str] = []  # which workload ran, call by call

    def logged(name, fn):
        def run():
            calls.append(name)
            fn()
        return run

    a = logged("a", clock.workload(list(rng.lognormal(np.log(1.0), 0.02, 100_000))))
    b = logged("b", clock.workload(list(rng.lognormal(np.log(1.5), 0.02, 100_000))))
    ta, tb = measure.measure_many([a, b], TimingPlan(warmup_min_s=0.02, max_time_s=30))
    assert np.median(tb.samples_ms) / np.median(ta.samples_ms) == pytest.approx(1.5, rel=0.02)
    assert len(ta.blocks) == len(tb.blocks) >= 3  # enough rounds to see the order rotate
    # each workload's own calls: its first (untimed) call, its warm-up, then its samples; so
    # a block's first sample is a known call, whose place in `calls` says when the block ran
    starts = []
    for name, t in (("a", ta), ("b", tb)):
        own = [i for i, c in enumerate(calls) if c == name]
        skip = 1 + t.warmup_samples
        assert len(own) == skip + len(t.samples_ms)
        starts += [(own[skip + blk.start], name) for blk in t.blocks]
    order = [name for _, name in sorted(starts)]
    rounds = [order[i:i + 2] for i in range(0, len(order), 2)]
    assert rounds == [["a", "b"] if r % 2 == 0 else ["b", "a"] for r in range(len(rounds))]


def test_contaminated_blocks_do_not_count_towards_convergence(clock, monkeypatch):
    # every block sees heavy foreign load: the CI rule must not stop the run; the cap does
    monkeypatch.setattr(measure.LoadMonitor, "stop", lambda self: 0.9)
    rng = np.random.default_rng(5)
    durations = list(rng.lognormal(np.log(2.0), 0.01, 200_000))
    t = measure.measure_callable(clock.workload(durations),
                                 TimingPlan(warmup_min_s=0.02, max_time_s=8.0))
    assert t.stop_reason == "time-cap" and all(b.contaminated for b in t.blocks)


def test_load_monitor_known_ticks(monkeypatch):
    """Foreign share = (busy - own CPU) / (wall x cores), from /proc/stat and os.times()."""
    busy = iter([100.0, 101.5])  # 1.5 CPU-seconds busy on the machine during the block
    own = iter([10.0, 10.5])  # of which 0.5 s are this process's own
    wall = iter([0.0, 1.0])
    monkeypatch.setattr(measure.LoadMonitor, "_busy_s", staticmethod(lambda: next(busy)))
    monkeypatch.setattr(measure.LoadMonitor, "_own_s", staticmethod(lambda: next(own)))
    monkeypatch.setattr(load_monitor.time, "perf_counter", lambda: next(wall))
    monkeypatch.setattr(load_monitor, "_NCPU", 2)
    m = measure.LoadMonitor()
    m.start()
    assert m.stop() == pytest.approx(0.5)  # 1.0 foreign CPU-second over 2 cores x 1 s


def test_load_monitor_counts_only_the_cpus_it_may_run_on(monkeypatch, tmp_path):
    """Pinned to CPUs 0-1 of 4 (a cpuset): a hog on CPU 3 does not compete, one on CPU 1 does."""
    stat = tmp_path / "stat"
    line = "cpu{} {} 0 0 1000 0 0 0 0 0 0\n"

    def write(busy):  # busy ticks per CPU; the aggregate line first, as in /proc/stat
        stat.write_text(line.format("", sum(busy)) + "".join(line.format(i, b)
                                                             for i, b in enumerate(busy)))

    hz = load_monitor._HZ
    monkeypatch.setattr(load_monitor, "_PROC_STAT", str(stat))
    monkeypatch.setattr(load_monitor, "_NCPU", 4)
    monkeypatch.setattr(load_monitor.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(measure.LoadMonitor, "_own_s", staticmethod(lambda: 0.0))
    wall = iter([0.0, 1.0, 0.0, 1.0])
    monkeypatch.setattr(load_monitor.time, "perf_counter", lambda: next(wall))
    m = measure.LoadMonitor()
    write([0, 0, 0, 0])
    m.start()
    write([0, 0, 0, hz])  # one CPU-second on CPU 3, outside our set
    assert m.stop() == 0.0
    m.start()
    write([0, hz, 0, 2 * hz])  # one CPU-second on CPU 1: half of our two CPUs
    assert m.stop() == pytest.approx(0.5)


def _blocks(sizes):
    from deploykit.core import Block

    out, start = [], 0
    for n in sizes:
        out.append(Block(start, n, 0.0, False))
        start += n
    return tuple(out)


def _report(samples, blocks):
    from deploykit.core import LatencyReport

    return LatencyReport(samples_ms=tuple(samples), target="t", target_config={}, artifact_id="a",
                         model_sha256="m", model_path="p", env={}, stop_reason="ci-reached",
                         blocks=blocks)


def test_comparison_ratio_pairs_rounds_and_survives_drift():
    # 30 rounds; the machine's speed drifts by up to 1.7x between rounds, hitting A and B alike;
    # B is truly 1.10x slower. Raw-sample statistics would be swamped by the drift.
    rng = np.random.default_rng(7)
    drift = rng.uniform(1.0, 1.7, 30)
    a = np.concatenate([d * rng.lognormal(0, 0.05, 50) for d in drift])
    b = np.concatenate([1.1 * d * rng.lognormal(0, 0.05, 50) for d in drift])
    blocks = _blocks([50] * 30)
    c = measure.Comparison((_report(a, blocks), _report(b, blocks)), ("a", "b"))
    r, lo, hi = c.ratio(1, 0)
    assert lo < 1.1 < hi and lo > 1.05 and hi < 1.15
    s, slo, shi = c.speedup(1, 0)
    assert s == pytest.approx(1 / r, rel=1e-6)


def test_comparison_aa_interval_covers_one():
    rng = np.random.default_rng(8)
    misses = 0
    for _ in range(100):
        drift = rng.uniform(1.0, 1.7, 12)
        a = np.concatenate([d * rng.lognormal(0, 0.1, 40) for d in drift])
        b = np.concatenate([d * rng.lognormal(0, 0.1, 40) for d in drift])
        blocks = _blocks([40] * 12)
        _, lo, hi = measure.Comparison((_report(a, blocks), _report(b, blocks)), ("a", "b")).ratio(1)
        misses += not (lo <= 1.0 <= hi)
    assert misses <= 10  # nominal 5%


def test_report_ci_uses_blocks_not_raw_samples():
    # 10 blocks whose medians differ by +-10%: a raw-sample CI would be ~1% wide
    rng = np.random.default_rng(9)
    level = np.linspace(0.9, 1.1, 10)
    x = np.concatenate([lv * rng.lognormal(0, 0.01, 500) for lv in level])
    r = _report(x, _blocks([500] * 10))
    lo, hi = r.ci95_ms
    raw_lo, raw_hi = measure.stats.median_ci(x)
    assert hi - lo > 5 * (raw_hi - raw_lo)
