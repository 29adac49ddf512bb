"""Stability over a long run (measure/stability.py, `profile --duration`): planted drift is
flagged, a steady run is not, and the CLI runs for the duration and writes the summary."""

import json

import numpy as np
import pytest

from deploykit.cli import main
from deploykit.core import Block, LatencyReport
from deploykit.measure.stability import stability


def _report(block_medians, n=50, seed=0):
    rng = np.random.default_rng(seed)
    samples, blocks = [], []
    for m in block_medians:
        blocks.append(Block(len(samples), n, 0.0, False))
        samples += list(m * (1 + rng.normal(0, 0.01, n)))
    return LatencyReport(samples_ms=tuple(samples), target="ort-cpu", target_config={},
                         artifact_id="a", model_sha256="0", model_path="m", env={},
                         stop_reason="time-cap", blocks=tuple(blocks))


def test_a_throttling_run_is_flagged_with_its_trend():
    meds = np.r_[np.full(40, 10.0), np.linspace(10.0, 12.0, 40)]  # slows down in its 2nd half
    st = stability(_report(meds))
    assert st.flagged and st.drift > 0.05 and st.halves_p < 0.01
    assert st.trend_per_min > 0 and st.trend_ci[0] > 0
    assert "second half differs" in st.note


def test_a_steady_run_is_not_flagged():
    rng = np.random.default_rng(1)
    st = stability(_report(10.0 * (1 + rng.normal(0, 0.005, 80))))
    assert not st.flagged and abs(st.drift) < 0.01
    assert st.trend_ci[0] <= 0 <= st.trend_ci[1]
    assert st.p99_over_p50 == pytest.approx(1.0, abs=0.1) and st.cv < 0.05


def test_a_significant_but_tiny_change_is_not_flagged():
    meds = np.r_[np.full(200, 10.0), np.full(200, 10.05)]  # +0.5%: significant, no news
    st = stability(_report(meds, n=20))
    assert st.halves_p < 0.01 and not st.flagged


def test_too_few_blocks_give_no_summary():
    assert stability(_report([10.0] * 3)) is None


def test_profile_duration_runs_that_long_and_reports_stability(mlp_onnx, tmp_path):
    out = tmp_path / "r.json"
    assert main(["profile", str(mlp_onnx), "--duration", "3s", "--no-store", "--no-roofline",
                 "--no-per-op", "-q", "--no-strict", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["stop_reason"] == "time-cap" and sum(d["samples_ms"]) / 1e3 > 2.5
    st = d["stability"]
    assert {"drift", "trend_per_min", "trend_ci", "cv", "iqr_ms", "p99_over_p50",
            "flagged"} <= set(st)
    assert d["memory"]["steady_peak_bytes"] > 0


@pytest.mark.parametrize("bad", ["10x", "0m", "0"])
def test_bad_duration_is_a_one_line_error(mlp_onnx, bad, capsys):
    assert main(["profile", str(mlp_onnx), "--duration", bad, "--no-store", "-q"]) == 2
    assert "--duration" in capsys.readouterr().err
