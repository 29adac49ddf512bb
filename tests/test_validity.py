"""The verdict on a measurement (validity.py) on synthetic samples, and the timing loop's handling
of foreign load through the load-monitor seam: a fake clock and a scripted load stand in for the
machine, so every state and --wait-quiet have known answers."""

import json

import numpy as np
import pytest

from deploykit import validity
from deploykit.measure import load as load_monitor
from deploykit.measure import timing as measure
from deploykit.core import Block, LatencyReport, TimingPlan


def _run(block_meds, loads, n=50, noise=0.01, seed=0):
    """Samples around each block's median, one block per entry, with its foreign load."""
    rng = np.random.default_rng(seed)
    samples, blocks = [], []
    for med, load in zip(block_meds, loads):
        blocks.append(Block(len(samples), n, load, load > 0.25))
        samples += list(med * rng.lognormal(0, noise, n))
    return samples, tuple(blocks)


def _report(samples, blocks, **kw):
    return LatencyReport(samples_ms=tuple(samples), target="ort-cpu", target_config={},
                         artifact_id="a", model_sha256="m", model_path="m.onnx", env={},
                         stop_reason="time-cap", blocks=blocks, **kw)


def test_clean_run():
    v = validity.assess(*_run([7.0] * 20, [0.01] * 20))
    assert v.state == "clean" and v.contaminated_share == 0 and abs(v.drift) < 0.01
    assert v.headline() == "" and v.blocks_used == 20


def test_every_block_under_two_hogs_is_contaminated_and_says_how_much():
    v = validity.assess(*_run([12.98] * 20, [0.5] * 20))
    assert v.state == "contaminated" and v.contaminated_share == 1.0
    assert v.headline().startswith("NOT A CLEAN MEASUREMENT: 100% of samples taken while other "
                                   "processes used 50% of the cores")
    assert "inflated" in v.reason


def test_a_few_dropped_blocks_stay_clean_but_a_fifth_does_not():
    loads = [0.0] * 18 + [0.6] * 2  # 10% of samples, 18 clean blocks: dropped, still clean
    assert validity.assess(*_run([7.0] * 20, loads)).state == "clean"
    loads = [0.0] * 16 + [0.6] * 4  # 20%: the machine was busy for a fifth of the run
    v = validity.assess(*_run([7.0] * 20, loads))
    assert v.state == "contaminated" and "uses the 16 clean blocks only" in v.reason


def test_contaminated_blocks_kept_for_lack_of_clean_ones():
    v = validity.assess(*_run([7.0] * 6, [0.0] * 5 + [0.6]))  # 5 clean < 8: all kept
    assert v.state == "contaminated" and "includes them" in v.reason


def test_steady_load_below_the_per_block_mark_is_still_contamination():
    v = validity.assess(*_run([7.0] * 20, [0.2] * 20))  # no block over 25%, but 20% all along
    assert v.state == "contaminated" and v.contaminated_share == 0
    assert "20% of the cores throughout" in v.reason


def test_drift_makes_a_quiet_run_unstable():
    meds = list(np.linspace(7.0, 7.0 * 1.3, 20))  # the clock sagged: +30% over the run
    v = validity.assess(*_run(meds, [0.0] * 20))
    assert v.state == "unstable" and v.drift == pytest.approx(0.15, abs=0.03)
    assert v.headline().startswith("UNSTABLE MEASUREMENT: block medians drifted +")


def test_scatter_without_drift_is_unstable():
    rng = np.random.default_rng(3)
    meds = list(7.0 * rng.lognormal(0, 0.25, 20))
    v = validity.assess(*_run(meds, [0.0] * 20))
    assert v.state == "unstable" and v.spread > validity.MAX_SPREAD


def test_short_run_halves_differing_within_their_noise_are_clean():
    # 6 blocks of a 3 s run, block medians scattering ~6%: the halves differ by ~14%, more
    # than MAX_DRIFT, but by less than DRIFT_Z of their standard errors
    meds = [7.0, 8.2, 7.3, 8.3, 7.6, 8.6]
    v = validity.assess(*_run(meds, [0.0] * 6))
    assert v.drift > validity.MAX_DRIFT and v.state == "clean"


def test_short_run_with_a_real_step_is_unstable():
    meds = [7.0, 7.1, 6.95, 9.8, 9.9, 9.75]  # the same 6 blocks, a +40% step after the third
    v = validity.assess(*_run(meds, [0.0] * 6))
    assert v.state == "unstable" and v.drift == pytest.approx(0.40, abs=0.02)
    assert "standard error" in v.reason


def test_a_host_level_step_as_seen_on_the_quiet_vm_is_clean():
    # quiet 10 s run 14 of tools/bench_load.py: 10 blocks at 4.72 ms, then 10 at 5.12 (+8%),
    # no foreign load: within the machine's run-to-run variation, not a broken result
    meds = [4.72] * 10 + [5.12] * 10
    v = validity.assess(*_run(meds, [0.0] * 20))
    assert v.drift == pytest.approx(0.085, abs=0.01) and v.state == "clean"


def test_small_drift_is_clean():
    meds = list(np.linspace(7.0, 7.0 * 1.02, 20))
    assert validity.assess(*_run(meds, [0.0] * 20)).state == "clean"


def test_report_json_has_state_and_reason_on_top_and_old_json_loads():
    s, b = _run([12.98] * 10, [0.5] * 10)
    d = _report(s, b, discarded_blocks=2, quiet_wait_s=4.5).to_dict()
    assert d["state"] == "contaminated" and d["reason"].startswith("100% of samples")
    assert d["validity"]["contaminated_share"] == 1.0 and d["validity"]["discarded_blocks"] == 2
    back = LatencyReport.from_dict(json.loads(json.dumps(d)))
    assert back.validity.state == "contaminated" and back.quiet_wait_s == 4.5
    old = {k: v for k, v in d.items() if k not in ("state", "reason", "validity",
                                                    "discarded_blocks", "quiet_wait_s")}
    assert LatencyReport.from_dict(old).validity.state == "contaminated"  # derived, not stored


def test_worst_and_summary():
    c, u = validity.assess(*_run([7.0] * 20, [0.0] * 20)), validity.assess(
        *_run(list(np.linspace(7, 9, 20)), [0.0] * 20))
    assert validity.worst(["clean", "unstable"]) == "unstable"
    assert validity.worst(["unstable", "contaminated", "clean"]) == "contaminated"
    s = validity.summary_dict({"a": c, "b": u})
    assert s["state"] == "unstable" and s["reason"].startswith("b: block medians drifted")


@pytest.mark.parametrize("env, expected", [({"CI": "true"}, True), ({"CI": "1"}, True),
                                           ({"CI": "false"}, False), ({}, False)])
def test_strict_is_on_by_default_in_ci(env, expected):
    assert validity.strict_default(env) is expected


# ---- the timing loop with a scripted load ------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.ns = 0

    def now(self):
        return self.ns / 1e9

    def sleep(self, s):
        self.ns += int(s * 1e9)


class HogMonitor:
    """Foreign load as a hog that runs from `since` until `until` seconds of the fake clock
    (forever: inf); a block that overlaps it sees its load."""

    def __init__(self, clock, until, load=0.6, since=0.0):
        self.clock, self.until, self.load, self.since = clock, until, load, since
        self.t0 = 0.0

    def start(self):
        self.t0 = self.clock.now()

    def stop(self):
        return self.load if self.t0 < self.until and self.clock.now() > self.since else 0.0


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(measure.time, "perf_counter_ns", lambda: c.ns)
    monkeypatch.setattr(measure.time, "perf_counter", c.now)
    monkeypatch.setattr(measure.time, "sleep", c.sleep)
    monkeypatch.setattr(load_monitor, "QUIET_PROBE_S", 0.25)
    return c


def _hogged_workload(clock, until, seed=0, since=0.0):
    """~2 ms per call; 1.8x slower while the hog runs."""
    rng = np.random.default_rng(seed)

    def fn():
        ms = 2.0 * rng.lognormal(0, 0.02) * (1.8 if since <= clock.now() < until else 1.0)
        clock.ns += int(ms * 1e6)
    return fn


def _profile(clock, until, plan):
    t = measure.measure_callable(_hogged_workload(clock, until), plan)
    return _report(t.samples_ms, t.blocks, discarded_blocks=t.discarded_blocks,
                   quiet_wait_s=t.quiet_wait_s)


def test_a_hog_all_along_is_never_clean(clock, monkeypatch):
    monkeypatch.setattr(measure, "make_load_monitor", lambda: HogMonitor(clock, float("inf")))
    rep = _profile(clock, float("inf"), TimingPlan(warmup_min_s=0.02, max_time_s=6.0))
    assert rep.validity.state == "contaminated" and rep.contaminated_fraction == 1.0
    assert rep.median_ms == pytest.approx(3.6, rel=0.02)  # the loaded latency, labelled as such


def test_wait_quiet_discards_the_hogged_half_and_gets_the_quiet_median(clock, monkeypatch):
    monkeypatch.setattr(measure, "make_load_monitor", lambda: HogMonitor(clock, 5.0))
    rep = _profile(clock, 5.0, TimingPlan(warmup_min_s=0.02, max_time_s=6.0, wait_quiet_s=60))
    assert rep.validity.state == "clean" and rep.contaminated_fraction == 0
    assert rep.median_ms == pytest.approx(2.0, rel=0.01)
    assert rep.quiet_wait_s >= 4.0 and rep.validity.quiet_wait_s == rep.quiet_wait_s


def test_without_wait_quiet_the_same_run_is_contaminated(clock, monkeypatch):
    monkeypatch.setattr(measure, "make_load_monitor", lambda: HogMonitor(clock, 5.0))
    rep = _profile(clock, 5.0, TimingPlan(warmup_min_s=0.02, max_time_s=6.0))
    assert rep.validity.state == "contaminated" and rep.contaminated_fraction > 0.3


def test_wait_quiet_gives_up_with_a_message(clock, monkeypatch, capsys):
    monkeypatch.setattr(measure, "make_load_monitor", lambda: HogMonitor(clock, float("inf")))
    rep = _profile(clock, float("inf"), TimingPlan(warmup_min_s=0.02, max_time_s=3.0,
                                                   wait_quiet_s=2.0))
    err = capsys.readouterr().err
    assert "gave up waiting for quiet after 2 s" in err and "foreign load 60%" in err
    assert rep.validity.state == "contaminated" and rep.quiet_wait_s >= 2.0
    assert len(rep.blocks) >= 4  # it went on measuring (under load) after giving up


def test_interleaved_rounds_are_discarded_together(clock, monkeypatch):
    # the hog arrives after warm-up (at 1 s) and leaves at 3 s
    monkeypatch.setattr(measure, "make_load_monitor", lambda: HogMonitor(clock, 3.0, since=1.0))
    fns = [_hogged_workload(clock, 3.0, seed, since=1.0) for seed in (1, 2)]
    ta, tb = measure.measure_many(fns, TimingPlan(warmup_min_s=0.02, max_time_s=4.0,
                                                  wait_quiet_s=30))
    assert len(ta.blocks) == len(tb.blocks) and ta.discarded_blocks == tb.discarded_blocks > 0
    assert not any(b.contaminated for b in ta.blocks + tb.blocks)
    for t in (ta, tb):
        assert sum(b.n for b in t.blocks) == len(t.samples_ms)
        assert np.median(t.samples_ms) == pytest.approx(2.0, rel=0.01)
