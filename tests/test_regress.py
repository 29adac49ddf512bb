"""The latency gate's statistics on synthetic samples with known distributions (no live timing).

The noise model imitates the shared machine (FACTS.md): lognormal samples with ~10% CV inside a
block, and a per-round drift of the median (sd 15% in log scale, i.e. blocks 1.3-1.7x apart) that
hits old and new alike within one interleaved round.
"""

import json
import math

import numpy as np
import pytest

from deploykit.core import Block, LatencyReport, OpTime, TensorSpec
from deploykit.errors import InputError
from deploykit.gate.baseline import BASELINE_SCHEMA, BaselineError, load_baseline, make_baseline
from deploykit.stats import (MIN_UNITS, _signed_rank_cdf, block_medians, paired_log_ratio_ci,
                             shift_log_ratio_ci)
from deploykit.gate.decision import (Estimate, decide, env_differences, interleaved_estimate,
                                     parse_threshold, per_op_diff, stored_estimate)
from deploykit.gate.changepoints import change_points


def _report(samples, blocks, sha="a" * 64, path="/m/a.onnx", per_op=()):
    return LatencyReport(samples_ms=tuple(samples), target="ort-cpu", target_config={"threads": 2},
                         artifact_id="art", model_sha256=sha, model_path=path,
                         env={"cpu_model": "EPYC", "threads": 2}, stop_reason="time-cap",
                         blocks=tuple(blocks), per_op=tuple(per_op))


def interleaved_pair(rng, slowdown=1.0, rounds=30, per_block=50, cv=0.10, drift=0.15,
                     base_ms=5.0):
    """(old, new) reports as measure.compare makes them: block k of each is round k."""
    old, new, bo, bn = [], [], [], []
    for _ in range(rounds):
        level = base_ms * math.exp(rng.normal(0, drift))
        for out, blocks, factor in ((old, bo, 1.0), (new, bn, slowdown)):
            blocks.append(Block(len(out), per_block, 0.0, False))
            out.extend(level * factor * rng.lognormal(0, cv, per_block))
    return _report(old, bo), _report(new, bn, sha="b" * 64)


def gate(rng, slowdown, threshold=0.05, **kw):
    old, new = interleaved_pair(rng, slowdown, **kw)
    return decide(interleaved_estimate(old, new), threshold)


# ---- rank intervals --------------------------------------------------------------------------

def test_signed_rank_distribution_matches_the_table():
    cdf = _signed_rank_cdf(10)
    assert cdf[-1] == pytest.approx(1.0)
    assert cdf[3] == pytest.approx(5 / 1024)  # sums 0,1,2,3,3 (={1,2}) of subsets of 1..10
    # two-sided 1% critical value for n=10 is 3 (tables): the interval drops 3 Walsh averages
    d = np.arange(1, 11, dtype=float)
    _, lo, hi, _ = paired_log_ratio_ci(d, 0.99)
    i, j = np.triu_indices(10)
    walsh = np.sort((d[i] + d[j]) / 2)
    assert (lo, hi) == (walsh[3], walsh[-4])


def test_paired_interval_needs_enough_rounds():
    _, lo, hi, _ = paired_log_ratio_ci([0.1, 0.2, 0.3, 0.1, 0.2, 0.3, 0.1], 0.99)  # 7 < 8
    assert (lo, hi) == (-math.inf, math.inf)


def test_paired_interval_coverage_is_at_least_nominal():
    rng = np.random.default_rng(1)
    miss = 0
    for _ in range(400):
        d = 0.03 + rng.standard_t(3, 20) * 0.02  # heavy tails, centre 0.03
        _, lo, hi, _ = paired_log_ratio_ci(d, 0.95)
        miss += not lo <= 0.03 <= hi
    assert miss / 400 <= 0.05 + 0.02


def test_shift_interval_coverage_and_estimate():
    rng = np.random.default_rng(2)
    miss, ests = 0, []
    for _ in range(400):
        x = rng.lognormal(0, 0.1, 30)
        y = rng.lognormal(0, 0.1, 25) + 0.05
        est, lo, hi, p = shift_log_ratio_ci(x, y, 0.95)
        miss += not lo <= 0.05 <= hi
        ests.append(est)
    assert miss / 400 <= 0.05 + 0.02
    assert np.median(ests) == pytest.approx(0.05, abs=0.005)


# ---- the gate on simulated interleaved checks: false alarms and power ------------------------

def test_aa_false_alarm_rate_is_below_one_percent():
    rng = np.random.default_rng(3)
    verdicts = [gate(rng, 1.0).status for _ in range(200)]
    assert verdicts.count("regression") <= 2  # <= 1%
    assert verdicts.count("improvement") <= 2


@pytest.mark.parametrize("slowdown, min_power", [(1.05, 0.80), (1.10, 0.95), (1.20, 0.99)])
def test_power_at_injected_slowdowns(slowdown, min_power):
    rng = np.random.default_rng(int(slowdown * 100))
    hits = [gate(rng, slowdown).status == "regression" for _ in range(100)]
    assert np.mean(hits) >= min_power


def test_improvement_is_reported_and_passes():
    v = gate(np.random.default_rng(4), 1 / 1.2)
    assert v.status == "improvement" and not v.failed


def test_small_precise_slowdown_is_within_threshold_not_a_failure():
    rng = np.random.default_rng(5)
    v = gate(rng, 1.01, rounds=60, per_block=200, drift=0.05, cv=0.05)
    assert v.estimate.lo > 1.0  # real and significant ...
    assert v.status == "within-threshold" and not v.failed  # ... but below 5%


def test_interleaved_estimate_drops_contaminated_rounds():
    old, new = interleaved_pair(np.random.default_rng(6), 1.0, rounds=20)
    # contaminate three rounds of the new model with a 2x hiccup
    xs = list(new.samples_ms)
    blocks = list(new.blocks)
    for k in (2, 7, 11):
        b = blocks[k]
        xs[b.start:b.start + b.n] = [2 * v for v in xs[b.start:b.start + b.n]]
        blocks[k] = Block(b.start, b.n, 0.6, True)
    new = _report(xs, blocks)
    e = interleaved_estimate(old, new)
    assert e.n_units == 17 and "3 of 20 rounds dropped" in e.note
    assert 0.95 < e.ratio < 1.05


def test_too_few_rounds_is_an_input_error():
    old, new = interleaved_pair(np.random.default_rng(7), 1.0, rounds=MIN_UNITS - 1)
    with pytest.raises(InputError, match="raise --max-time"):
        interleaved_estimate(old, new)


@pytest.mark.parametrize("side", ["baseline", "new"])
def test_stored_mode_refuses_a_contaminated_side(side):
    """Stored mode cannot cancel load: a run with most blocks under foreign load is refused,
    whichever side it is on (the same samples with clean blocks compare fine)."""
    from dataclasses import replace

    from deploykit.gate.baseline import BaselineError

    rng = np.random.default_rng(9)
    old, _ = interleaved_pair(rng, 1.0, drift=0.03)
    new, _ = interleaved_pair(rng, 1.0, drift=0.03)
    stored_estimate(old, new)
    loaded = tuple(Block(b.start, b.n, 0.6, i % 3 != 0) for i, b in enumerate(
        (old if side == "baseline" else new).blocks))
    old, new = (replace(old, blocks=loaded), new) if side == "baseline" else \
        (old, replace(new, blocks=loaded))
    with pytest.raises(BaselineError, match=f"the {side} measurement is contaminated "
                                            r"\(67% of samples taken"):
        stored_estimate(old, new)


def test_stored_mode_detects_a_shift_without_drift_between_runs():
    rng = np.random.default_rng(8)
    old, _ = interleaved_pair(rng, 1.0, drift=0.03)
    new, _ = interleaved_pair(rng, 1.0, drift=0.03)
    same = decide(stored_estimate(old, new), 0.05)
    assert same.status != "regression"
    slow_samples = [1.15 * x for x in new.samples_ms]
    slow = decide(stored_estimate(old, _report(slow_samples, new.blocks)), 0.05)
    assert slow.status == "regression" and slow.estimate.mode == "stored"
    assert 1.10 < slow.estimate.ratio < 1.20


def test_block_medians_without_blocks_chunks_the_samples():
    r = _report(np.arange(100, dtype=float) + 1, ())
    m = block_medians(r.samples_ms, r.blocks, chunk_unblocked=True)
    assert len(m) == 10 and m[0] == pytest.approx(5.5)


def test_decide_rules():
    def est(r, lo, hi, p_raw=1e-9):
        return Estimate(r, lo, hi, 0.99, "interleaved", 30, 1e-6, p_raw, 5.0, 5.0 * r)

    assert decide(est(1.08, 1.05, 1.11), 0.05).status == "regression"
    assert decide(est(1.04, 1.01, 1.07), 0.05).status == "regression"  # threshold within CI
    assert decide(est(1.02, 1.01, 1.07), 0.05).status == "within-threshold"  # estimate too small
    assert decide(est(1.03, 1.02, 1.04), 0.05).status == "within-threshold"  # surely < 5%
    assert decide(est(1.08, 1.05, 1.11, p_raw=0.2), 0.05).status == "no-change"  # asv's test
    assert decide(est(1.08, 0.99, 1.17), 0.05).status == "no-change"
    assert decide(est(0.90, 0.87, 0.93), 0.05).status == "improvement"
    with pytest.raises(InputError):
        decide(est(1, 1, 1), 0)
    assert "REGRESSION" in decide(est(1.08, 1.05, 1.11), 0.05).summary


def test_parse_threshold():
    assert parse_threshold("5%") == pytest.approx(0.05)
    assert parse_threshold("0.1") == pytest.approx(0.1)
    for bad in ("five", "-5%", "0"):
        with pytest.raises(InputError):
            parse_threshold(bad)


# ---- environment, per-op diff ------------------------------------------------------------------

def test_env_differences_name_what_matters():
    a = {"cpu_model": "EPYC 9R14", "threads": 2, "machine": "x86_64", "target": "ort-cpu",
         "versions": {"onnxruntime": "1.23.0", "numpy": "2.0"}, "hostname": "a"}
    b = dict(a, hostname="b", versions={"onnxruntime": "1.23.0", "numpy": "2.1"})
    assert env_differences(a, b) == []  # hostname and numpy do not matter
    c = dict(a, threads=4, versions={"onnxruntime": "1.24.0"})
    diffs = env_differences(a, c)
    assert any(d.startswith("threads 2 -> 4") for d in diffs)
    assert "onnxruntime 1.23.0 -> 1.24.0" in diffs
    d = dict(a, target_config={"options": {"graph_optimization_level": "all"}, "description": "x"})
    e = dict(a, target_config={"options": {"graph_optimization_level": "basic"}, "description": "y"})
    assert [x.split(" ")[0] for x in env_differences(d, e)] == ["options"]  # prose is ignored


def test_per_op_diff_ranks_nodes_that_got_slower():
    old = [OpTime("conv1", "Conv", 2.0, 0.5), OpTime("relu", "Relu", 1.0, 0.25),
           OpTime("gone", "Add", 1.0, 0.25)]
    new = [OpTime("conv1", "Conv", 3.5, 0.6), OpTime("relu", "Relu", 0.9, 0.2),
           OpTime("extra", "Mul", 0.8, 0.2)]
    rows = per_op_diff(old, new)
    assert [r.name for r in rows] == ["conv1", "extra", "relu", "gone"]
    assert rows[0].delta_ms == pytest.approx(1.5) and rows[1].old_ms is None
    assert rows[-1].new_ms is None and rows[-1].delta_ms == pytest.approx(-1.0)


# ---- baseline files ----------------------------------------------------------------------------

SPECS_IN = (TensorSpec("x", (1, 3, 8, 8), "float32"),)
SPECS_OUT = (TensorSpec("y", (1, 10), "float32"),)


def _baseline_file(tmp_path, model_bytes=b"model-v1"):
    from deploykit.fsutil import sha256_file

    model = tmp_path / "models" / "m.onnx"
    model.parent.mkdir(exist_ok=True)
    model.write_bytes(model_bytes)
    old, _ = interleaved_pair(np.random.default_rng(9), rounds=10)
    rep = _report(old.samples_ms, old.blocks, sha=sha256_file(model), path=str(model))
    out = tmp_path / "baseline.json"
    make_baseline(rep, SPECS_IN, SPECS_OUT, {"seed": 0}, out).save(out)
    return out, model, rep


def test_baseline_round_trip_with_relative_model_path(tmp_path):
    out, model, rep = _baseline_file(tmp_path)
    d = json.loads(out.read_text())
    assert d["schema"] == BASELINE_SCHEMA and d["model"]["path"] == "models/m.onnx"
    assert len(d["report"]["samples_ms"]) == len(rep.samples_ms) and "env" in d
    b = load_baseline(out)
    assert b.report.samples_ms == rep.samples_ms and b.report.blocks == rep.blocks
    assert b.model_file() == model.parent.parent / "models" / "m.onnx"
    assert b.signature_mismatch(SPECS_IN, SPECS_OUT) is None
    assert "inputs" in b.signature_mismatch((TensorSpec("x", (1, 3, 9, 9), "float32"),),
                                            SPECS_OUT)
    model.write_bytes(b"model-v2")  # the file changed since: not the baseline's model any more
    assert b.model_file() is None


@pytest.mark.parametrize("content, match", [
    (None, "not found.*deploykit baseline"),
    ("{not json", "corrupt.*re-record"),
    ('{"kind": "something-else"}', "not a deploykit baseline"),
    ('{"kind": "deploykit-baseline", "schema": 99}', "newer.*upgrade deploykit"),
    ('{"kind": "deploykit-baseline", "schema": 1, "model": {}}', "incomplete or corrupt"),
])
def test_bad_baseline_files(tmp_path, content, match):
    p = tmp_path / "b.json"
    if content is not None:
        p.write_text(content)
    with pytest.raises(BaselineError, match=match):
        load_baseline(p)


def test_truncated_baseline_is_corrupt(tmp_path):
    out, _, _ = _baseline_file(tmp_path)
    out.write_text(out.read_text()[: 500])
    with pytest.raises(BaselineError, match="corrupt"):
        load_baseline(out)


# ---- change points -----------------------------------------------------------------------------

def test_change_point_found_at_a_known_step():
    rng = np.random.default_rng(10)
    series = np.r_[5.0 * rng.lognormal(0, 0.03, 25), 5.6 * rng.lognormal(0, 0.03, 20)]
    cps = change_points(series)
    assert len(cps) == 1 and abs(cps[0].index - 25) <= 1
    assert cps[0].ratio == pytest.approx(1.12, abs=0.03) and cps[0].p <= 0.01


def test_two_steps_and_a_flat_series():
    rng = np.random.default_rng(11)
    series = np.r_[5.0 * rng.lognormal(0, 0.03, 20), 6.0 * rng.lognormal(0, 0.03, 20),
                   5.2 * rng.lognormal(0, 0.03, 20)]
    assert [abs(c.index - t) <= 1 for c, t in zip(change_points(series), (20, 40))] == [True] * 2
    flat_hits = sum(len(change_points(5.0 * rng.lognormal(0, 0.05, 40), seed=s)) > 0
                    for s in range(10))
    assert flat_hits <= 1
