"""`deploykit baseline / check / history` end to end. Live timings use tiny plans and effects far
larger than any noise (A/A against a 50% threshold, a 10x slower model): these check the
pipeline, exit codes and files, not the gate's statistics (tests/test_regress.py does that)."""

import json
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploykit.cli import main
from deploykit.core import Block, LatencyReport
from deploykit.store import Store

FAST = ["--max-time", "1", "--warmup-max", "0.2", "--memory-runs", "1", "-q"]


class _Load:
    """The load-monitor seam (measure.make_load_monitor) with a fixed foreign load. The shared
    machine's real load is not these tests' to judge: stored-mode checks refuse contaminated
    runs, so the tests that need a stored comparison script a quiet machine, and the refusal is
    tested with a loaded one."""

    def __init__(self, load):
        self.load = load

    def start(self):
        pass

    def stop(self):
        return self.load


@pytest.fixture
def quiet(monkeypatch):
    from deploykit.measure import timing as measure

    monkeypatch.setattr(measure, "make_load_monitor", lambda: _Load(0.0))


def matmul_chain(path, layers: int = 2, dim: int = 64, rows: int = 8) -> str:
    """x[rows, dim] -> (MatMul -> Relu) x layers -> y: cost grows linearly with `layers`."""
    rng = np.random.default_rng(0)
    inits, nodes, x = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((dim, dim)) / np.sqrt(dim)).astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"mm{i}"),
                  helper.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    nodes.append(helper.make_node("Identity", [x], ["y"], name="out"))
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, dim])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    m = {"old": matmul_chain(d / "old.onnx", layers=2, dim=128),
         "slow": matmul_chain(d / "slow.onnx", layers=24, dim=128),
         "other": matmul_chain(d / "other.onnx", layers=2, dim=128, rows=16)}
    m["copy"] = str(d / "copy.onnx")
    shutil.copy(m["old"], m["copy"])
    return m


@pytest.fixture(scope="module")
def baseline(models, tmp_path_factory):
    from deploykit.measure import timing as measure

    d = tmp_path_factory.mktemp("baseline")
    path = d / "baseline.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(measure, "make_load_monitor", lambda: _Load(0.0))
        assert main(["baseline", models["old"], "-o", str(path), "--store",
                     str(d / "s.sqlite"), "--no-strict", *FAST]) == 0
    return path


def _check(models, baseline, tmp_path, model, *extra):
    out = tmp_path / "verdict.json"
    rc = main(["check", models[model], "--baseline", str(baseline), "--json", str(out),
               "--store", str(tmp_path / "s.sqlite"), *FAST, *extra])
    return rc, (json.loads(out.read_text()) if out.exists() else None)


def test_baseline_file_contents(baseline, models):
    d = json.loads(baseline.read_text())
    assert d["kind"] == "deploykit-baseline" and d["schema"] == 1
    assert d["target"] == "ort-cpu" and d["env"]["cpu_model"]
    rep = d["report"]
    assert len(rep["blocks"]) >= 8 and len(rep["samples_ms"]) == sum(b["n"] for b in rep["blocks"])
    assert {o["op_type"] for o in rep["per_op"]} >= {"MatMul"}
    assert d["model"]["inputs"] == [{"name": "x", "shape": [8, 128], "dtype": "float32"}]


def test_aa_interleaved_check_passes_and_writes_reports(models, baseline, tmp_path):
    junit, md = tmp_path / "j.xml", tmp_path / "c.md"
    before = baseline.read_bytes()
    rc, v = _check(models, baseline, tmp_path, "copy", "--against", models["old"],
                   "--max-slowdown", "50%", "--junit", str(junit), "--markdown", str(md))
    assert rc == 0 and v["mode"] == "interleaved" and not v["failed"]
    assert v["ratio_ci"][0] <= v["ratio"] <= v["ratio_ci"][1]
    case = ET.parse(junit).getroot().find("testsuite/testcase")
    assert case is not None and case.find("failure") is None
    assert md.read_text().startswith("### deploykit check: ✅")
    assert baseline.read_bytes() == before  # never overwritten unless asked


def test_ten_times_slower_model_fails_with_per_op_diff(models, baseline, tmp_path):
    junit = tmp_path / "j.xml"
    rc, v = _check(models, baseline, tmp_path, "slow", "--max-slowdown", "50%",
                   "--junit", str(junit))
    assert rc == 1 and v["status"] == "regression"
    assert v["mode"] == "interleaved"  # the baseline's own model file was found and re-measured
    assert v["ratio_ci"][0] > 1.5
    assert any(o["old_ms"] is None and o["op_type"] == "MatMul" for o in v["per_op_diff"])
    failure = ET.parse(junit).getroot().find("testsuite/testcase/failure")
    assert failure is not None and "REGRESSION" in failure.get("message")
    with Store(tmp_path / "s.sqlite") as st:
        assert [r.label for r in st.runs()] == ["check:regression"]


def test_env_change_refuses_stored_comparison_unless_allowed_and_update(models, baseline,
                                                                        tmp_path, capsys, quiet):
    d = json.loads(baseline.read_text())
    d["env"]["threads"] = d["report"]["env"]["threads"] = 64
    d["model"]["path"] = "/nowhere/old.onnx"  # no old model: stored mode
    changed = tmp_path / "b.json"
    changed.write_text(json.dumps(d))
    rc, _ = _check(models, changed, tmp_path, "old", "--threads", "2")
    assert rc == 2 and "environment differs" in capsys.readouterr().err
    rc, v = _check(models, changed, tmp_path, "old", "--threads", "2", "--allow-env-change",
                   "--max-slowdown", "50%", "--update-baseline")
    assert rc in (0, 1) and v["mode"] == "stored" and v["env_differences"]
    rewritten = json.loads(changed.read_text())  # asked to: the baseline now holds this run
    assert rewritten["env"]["threads"] == 2 and rewritten["created"] > d["created"]


@pytest.mark.parametrize("case, message", [
    ("missing", "baseline file not found"),
    ("corrupt", "corrupt"),
    ("newer", "newer than this deploykit"),
    ("other-model", "different model"),
])
def test_bad_baselines_exit_2_with_what_to_do(models, baseline, tmp_path, capsys, case, message,
                                              monkeypatch):
    from deploykit.measure import timing as measure
    from deploykit.gate import rounds

    timed = []  # refused before measuring anything: nothing may reach the timing loop

    def no_timing(*a, **k):
        timed.append(a)
        raise AssertionError("a bad baseline must be refused before anything is timed")

    monkeypatch.setattr(rounds, "measure_rounds", no_timing)
    monkeypatch.setattr(measure, "measure_many", no_timing)
    path, model = tmp_path / "b.json", "old"
    if case == "corrupt":
        path.write_text(baseline.read_text()[:1000])
    elif case == "newer":
        path.write_text(json.dumps(dict(json.loads(baseline.read_text()), schema=7)))
    elif case == "other-model":
        shutil.copy(baseline, path)
        model = "other"
    rc, _ = _check(models, path, tmp_path, model)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and ("deploykit baseline" in err or "upgrade" in err)
    assert len(err.strip().splitlines()) == 1
    assert not timed  # refused before measuring anything


def test_bad_threshold_is_a_usage_error(models, baseline, tmp_path, capsys):
    rc, _ = _check(models, baseline, tmp_path, "old", "--max-slowdown", "lots")
    assert rc == 2 and "bad threshold" in capsys.readouterr().err


def _stored(store, created, median, path="/ci/model.onnx", load=0.0):
    rng = np.random.default_rng(int(created))
    samples = median * rng.lognormal(0, 0.05, 50)
    store.record_report(LatencyReport(
        samples_ms=tuple(samples), target="ort-cpu", target_config={}, artifact_id="a",
        model_sha256=f"{int(created):064x}", model_path=path, env={}, stop_reason="ci-reached",
        blocks=(Block(0, 50, load, load > 0.25),), created=created), label=f"c{int(created)}")


def test_history_lists_and_flags_a_step(tmp_path, capsys):
    db = tmp_path / "h.sqlite"
    rng = np.random.default_rng(0)
    with Store(db) as st:
        for i in range(24):  # commit 14 made the model 15% slower
            _stored(st, 1000 + i, (5.0 if i < 14 else 5.75) * rng.lognormal(0, 0.02))
        _stored(st, 2000, 3.0, path="/ci/other.onnx")
    assert main(["history", "--store", str(db), "--model", "/ci/model.onnx", "--trend",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["runs"]) == 20 and out["runs"][0]["label"] == "c1023"
    (trend,) = out["trends"]
    (cp,) = trend["change_points"]
    assert cp["index"] == 14 and cp["ratio"] == pytest.approx(1.15, abs=0.04)
    assert main(["history", "--store", str(db), "--trend", "--limit", "5"]) == 0
    text = capsys.readouterr().out
    assert "change at run 15" in text and "5 of 25" in text


def test_history_without_store_is_an_input_error(tmp_path, capsys):
    assert main(["history", "--store", str(tmp_path / "none.sqlite")]) == 2
    assert "no results store" in capsys.readouterr().err


def _stored_mode_baseline(baseline, tmp_path, load=None):
    """The baseline with its model file gone (stored mode), its blocks optionally under load."""
    d = json.loads(baseline.read_text())
    d["model"]["path"] = "/nowhere/old.onnx"
    if load is not None:
        d["report"]["blocks"] = [dict(b, foreign_cpu=load, contaminated=load > 0.25)
                                 for b in d["report"]["blocks"]]
    path = tmp_path / "stored.json"
    path.write_text(json.dumps(d))
    return path


def test_stored_mode_refuses_a_contaminated_baseline_before_measuring(models, baseline, tmp_path,
                                                                      capsys, monkeypatch):
    from deploykit.gate import rounds
    from deploykit.measure import timing as measure

    def no_timing(*a, **k):
        raise AssertionError("a contaminated baseline must be refused before anything is timed")

    monkeypatch.setattr(rounds, "measure_rounds", no_timing)
    monkeypatch.setattr(measure, "measure_many", no_timing)
    path = _stored_mode_baseline(baseline, tmp_path, load=0.6)
    rc, v = _check(models, path, tmp_path, "old")
    err = capsys.readouterr().err
    assert rc == 2 and v is None and "the baseline measurement is contaminated" in err
    assert "--against OLD_MODEL" in err and "deploykit baseline" in err
    assert len(err.strip().splitlines()) == 1


def test_stored_mode_refuses_a_new_run_taken_under_load(models, baseline, tmp_path, capsys,
                                                         monkeypatch):
    from deploykit.measure import timing as measure

    path = _stored_mode_baseline(baseline, tmp_path, load=0.0)
    monkeypatch.setattr(measure, "make_load_monitor", lambda: _Load(0.6))
    rc, v = _check(models, path, tmp_path, "old", "--max-slowdown", "50%")
    err = capsys.readouterr().err
    assert rc == 2 and v is None and "the new measurement is contaminated" in err
    assert "--wait-quiet" in err
    monkeypatch.setattr(measure, "make_load_monitor", lambda: _Load(0.0))
    rc, v = _check(models, path, tmp_path, "old", "--max-slowdown", "50%")
    assert rc in (0, 1) and v["mode"] == "stored"
    assert v["contaminated_share"] == {"old": 0.0, "new": 0.0}


def test_interleaved_check_under_load_reports_the_share(models, baseline, tmp_path, monkeypatch):
    from deploykit.measure import timing as measure

    monkeypatch.setattr(measure, "make_load_monitor", lambda: _Load(0.6))
    md = tmp_path / "c.md"
    rc, v = _check(models, baseline, tmp_path, "copy", "--against", models["old"],
                   "--max-slowdown", "50%", "--markdown", str(md))
    assert rc == 0 and v["mode"] == "interleaved"
    assert v["state"] == "contaminated" and v["contaminated_share"] == {"old": 1.0, "new": 1.0}
    assert "rounds had foreign CPU load (kept)" in v["note"]
    assert "| measurement | contaminated (rounds with foreign load: old 100%, new 100%" in \
        md.read_text()


def test_trend_leaves_out_contaminated_runs_unless_asked(tmp_path, capsys):
    db = tmp_path / "h.sqlite"
    rng = np.random.default_rng(1)
    with Store(db) as st:
        for i in range(18):  # the last 6 were taken beside a CPU hog: 1.8x, marked contaminated
            hog = i >= 12
            _stored(st, 1000 + i, 5.0 * rng.lognormal(0, 0.01) * (1.8 if hog else 1.0),
                    load=0.6 if hog else 0.0)
    assert main(["history", "--store", str(db), "--trend", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["state"] for r in out["runs"]].count("contaminated") == 6
    assert out["trends_skipped_contaminated"] == 6
    (trend,) = out["trends"]
    assert trend["runs"] == 12 and trend["change_points"] == []
    assert main(["history", "--store", str(db), "--trend", "--json",
                 "--include-contaminated"]) == 0
    (trend,) = json.loads(capsys.readouterr().out)["trends"]
    assert trend["runs"] == 18 and trend["change_points"]  # the hog looks like a regression
    assert main(["history", "--store", str(db), "--trend"]) == 0
    assert "left out 6 run(s) measured under foreign load" in capsys.readouterr().out
