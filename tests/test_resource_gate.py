"""The memory and cold-start gates of `deploykit check` (gate/resources.py): the decisions on
planted numbers, then live: a planted memory regression and a planted cold-start regression are
caught, an A/A check raises neither, and a baseline from before these gates says "no data"."""

import json
import shutil
import xml.etree.ElementTree as ET

import pytest

import resource_models as rm
from deploykit.cli import main
from deploykit.core import LatencyReport
from deploykit.gate.resources import cold_start_verdict, memory_verdict

MiB = 1 << 20
FAST = ["--max-time", "1", "--warmup-max", "0.1", "-q", "--no-store"]
BASE = [*FAST, "--no-strict"]


def test_memory_verdict_on_planted_runs():
    assert memory_verdict([50 * MiB, 50 * MiB + 4096], [60 * MiB, 60 * MiB], 0.10).status == \
        "regression"
    assert memory_verdict([50 * MiB] * 3, [53 * MiB] * 3, 0.10).status == "within-threshold"
    # below the 1 MiB floor: a tiny model's 20% is allocator noise, not a regression
    assert memory_verdict([2 * MiB] * 3, [2 * MiB + 400_000] * 3, 0.10).status == "no-change"
    # a spread this large across repeated runs is the noise floor
    assert memory_verdict([40 * MiB, 50 * MiB], [52 * MiB, 52 * MiB], 0.10).status == \
        "no-change"
    assert memory_verdict([60 * MiB] * 2, [50 * MiB] * 2, 0.10).status == "improvement"
    v = memory_verdict([], [50 * MiB], 0.10)
    assert v.status == "no-data" and not v.failed and "not checked" in v.summary


def _rep(cold):
    return LatencyReport(samples_ms=(1.0,), target="ort-cpu", target_config={}, artifact_id="a",
                         model_sha256="0" * 64, model_path="m.onnx", env={},
                         stop_reason="time-cap", cold_start_samples_ms=tuple(cold))


def test_cold_start_verdict_on_planted_rounds():
    import numpy as np

    rng = np.random.default_rng(0)
    old = 20 + rng.normal(0, 2, 12)
    same = old * np.exp(rng.normal(0, 0.05, 12))
    assert cold_start_verdict(_rep(old), _rep(same), 0.2, paired=True).status != "regression"
    v = cold_start_verdict(_rep(old), _rep(old * 1.5), 0.2, paired=True)
    assert v.status == "regression" and v.failed and v.ratio == pytest.approx(1.5)
    assert cold_start_verdict(_rep(old), _rep(old * 1.5), 0.2, paired=False).status == \
        "regression"
    assert cold_start_verdict(_rep(old[:3]), _rep(old), 0.2, paired=True).status == "no-data"
    from deploykit.errors import InputError

    with pytest.raises(InputError, match="cannot decide"):  # fails closed, never a pass
        cold_start_verdict(_rep([*old[:-1], float("nan")]), _rep(old), 0.2, paired=True)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("res")
    m = {"plain": rm.plain(d / "plain.onnx"), "memory": rm.extra_memory(d / "memory.onnx"),
         "init": rm.slow_init(d / "init.onnx")}
    m["copy"] = str(d / "copy.onnx")
    shutil.copy(m["plain"], m["copy"])
    return m


@pytest.fixture(scope="module")
def plain_baseline(models, tmp_path_factory) -> str:
    """The plain model's baseline, taken once: the three live checks below compare against the
    plain model interleaved (--against), and none of them writes to the baseline file."""
    base = tmp_path_factory.mktemp("base") / "b.json"
    assert main(["baseline", models["plain"], "-o", str(base), "--memory-runs", "0",
                 *BASE]) == 0
    return str(base)


def _check(tmp_path, base, new, old, *extra):
    out = tmp_path / "v.json"
    rc = main(["check", new, "--baseline", base, "--against", old, "--json", str(out),
               "--max-slowdown", "900%", *FAST, *extra])
    return rc, json.loads(out.read_text())


def test_planted_memory_regression_is_caught(models, plain_baseline, tmp_path):
    junit = tmp_path / "j.xml"
    rc, v = _check(tmp_path, plain_baseline, models["memory"], models["plain"], "--memory-runs",
                   "2", "--junit", str(junit))
    assert rc == 1 and v["memory"]["status"] == "regression", v["memory"]
    assert v["memory"]["new"] - v["memory"]["old"] > 8 * MiB  # at least the constant itself
    assert v["new_report"]["memory"]["steady_delta_bytes"] > 8 * MiB
    assert len(v["new_report"]["memory"]["runs"]) == 2
    cases = ET.parse(junit).getroot().findall("testsuite/testcase")
    assert len(cases) == 3
    assert cases[1].find("failure").get("type") == "MemoryRegression"


def test_planted_cold_start_regression_is_caught(models, plain_baseline, tmp_path):
    rc, v = _check(tmp_path, plain_baseline, models["init"], models["plain"], "--memory-runs",
                   "0")
    assert rc == 1 and v["cold_start"]["status"] == "regression", v["cold_start"]
    assert v["cold_start"]["ratio"] > 2
    assert v["memory"]["status"] == "no-data"


def test_aa_raises_no_alarm(models, plain_baseline, tmp_path):
    md = tmp_path / "c.md"
    rc, v = _check(tmp_path, plain_baseline, models["copy"], models["plain"], "--memory-runs",
                   "2", "--markdown", str(md))
    assert rc == 0, (v["memory"], v["cold_start"])
    assert v["memory"]["status"] in ("no-change", "within-threshold")
    assert v["cold_start"]["status"] != "regression"
    assert "peak steady memory" in md.read_text() and "cold start" in md.read_text()


class _Quiet:
    """The load-monitor seam with no foreign load: stored mode refuses contaminated runs, and
    the shared machine's load is not this test's to judge."""

    def start(self):
        pass

    def stop(self):
        return 0.0


def test_a_baseline_from_before_the_gates_says_no_data(models, tmp_path, monkeypatch):
    from deploykit.measure import timing

    monkeypatch.setattr(timing, "make_load_monitor", _Quiet)
    gone = tmp_path / "gone.onnx"
    shutil.copy(models["plain"], gone)
    base = tmp_path / "b.json"
    assert main(["baseline", str(gone), "-o", str(base), "--memory-runs", "1", *BASE]) == 0
    d = json.loads(base.read_text())
    assert d["report"]["memory"]["runs"] and len(d["report"]["cold_start_samples_ms"]) >= 9
    for k in ("memory", "cold_start_samples_ms"):  # as deploykit wrote baselines before
        d["report"].pop(k)
    base.write_text(json.dumps(d))
    gone.unlink()  # no old model at hand: stored mode
    out, junit = tmp_path / "v.json", tmp_path / "j.xml"
    rc = main(["check", models["copy"], "--baseline", str(base), "--json", str(out), "--junit",
               str(junit), "--memory-runs", "1", "--max-slowdown", "900%", *FAST])
    v = json.loads(out.read_text())
    assert v["mode"] == "stored" and rc == 0
    assert v["memory"]["status"] == "no-data" and v["cold_start"]["status"] == "no-data"
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("skipped") == "2" and suite.get("failures") == "0"
    assert len(suite.findall("testcase/skipped")) == 2
