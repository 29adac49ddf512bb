"""End-to-end search on a small CNN: fidelity before timing, few whole measurements, interleaved
recommendation, outputs; an eval that raises; infeasible budget (exit 1); resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from deploykit.core import TimingPlan
from deploykit.search.engine import Search, SearchConfig, write_outputs
from deploykit.store import Store

from _search_models import residual_cnn

REPO = Path(__file__).resolve().parent.parent
# A time limit no test reaches: what these tests check must not depend on the machine's speed.
# Each asserts the search's own record that the limit cut nothing (cost.time_limit_reached).
NO_LIMIT_S = 3600
# short plans: these tests check the search's logic, not latencies
FAST = dict(unit_plan=TimingPlan(warmup_min_s=0.01, warmup_max_s=0.03, target_rel_ci=0.05,
                                 min_samples=10, max_time_s=0.05, block_s=0.02),
            whole_plan=TimingPlan(warmup_min_s=0.02, warmup_max_s=0.1, target_rel_ci=0.05,
                                  min_samples=20, max_time_s=0.3, block_s=0.1),
            final_plan=TimingPlan(warmup_min_s=0.02, warmup_max_s=0.1, target_rel_ci=0.05,
                                  min_samples=20, max_time_s=0.5, block_s=0.1))


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> Path:
    return residual_cnn(tmp_path_factory.mktemp("search") / "cnn.onnx")


def _feeds(hw: int = 24):
    return {"x": np.random.default_rng(0).standard_normal((1, 3, hw, hw)).astype(np.float32)}


def _search(cnn, out, cfg, **kw):
    from deploykit.rewrite.calibration import synthetic_calibration
    from deploykit.onnxio import io_specs, load_onnx

    specs, _ = io_specs(load_onnx(cnn))
    with Store(out / "store.sqlite") as store:
        s = Search(cnn, "ort-cpu", cfg, out, store, feeds=_feeds(specs[0].shape[-1]),
                   calibration=synthetic_calibration(specs, n=2), **kw)
        return s.run()


def test_search_end_to_end(cnn, tmp_path):
    cfg = SearchConfig(min_fidelity=0.9, time_limit_s=NO_LIMIT_S, families=("int8", "prune"),
                       target_options=False, **FAST)
    res = _search(cnn, tmp_path, cfg)
    assert res.cost["time_limit_reached"] == []  # everything below is the whole search's doing
    rows = res.rows
    assert rows[0].cand.family == "baseline" and rows[0].median is not None
    for r in rows:
        if r.status in ("rejected", "failed"):
            assert r.median is None and r.table_ms is None  # never timed
        if r.status == "ok":
            assert r.fidelity >= 0.9 and r.table_ms > 0 and r.stats["params"] > 0
    assert any(r.cand.family == "int8" and r.status == "ok" for r in rows)
    measured = [r for r in rows if r.median is not None]
    assert res.cost["candidates"] >= 10 and res.cost["measured_whole"] == len(measured)
    # whole measurements: the anchor + 2, then at most 25% of the candidates that passed fidelity
    assert 2 <= len(measured) <= max(3, res.cost["fidelity_ok"] // 4)
    rec = res.recommendation
    assert rec is not None and rec["interleaved"] and rec["speedup_ci95"][0] <= rec["speedup"]
    best = min((r for r in measured if r.status == "ok"), key=lambda r: r.median)
    assert rec["id"] == best.cand.id  # fastest at the fidelity floor
    assert res.per_op["baseline"] and res.per_op["recommendation"]
    assert res.predictor["mean_abs_rel_error"] is not None  # judged on whole measurements
    for e in res.predictor["errors"]:
        assert e["predicted_ms"] > 0 and e["measured_ms"] > 0
    paths = write_outputs(res, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["recommendation"]["exported"] == str(tmp_path / "recommended.onnx")
    from deploykit.fsutil import sha256_file

    assert sha256_file(paths["model"]) == rec["sha256"]
    assert set(data["pareto"]) <= {c["id"] for c in data["candidates"] if c["measured"]}
    assert rec["id"] in data["pareto"] or rec["id"] == data["candidates"][0]["id"]
    assert paths["html"].read_text().count("data:image/png;base64,") == 1


def test_a_limit_that_cuts_the_search_is_recorded(cnn, tmp_path):
    """The other side of NO_LIMIT_S: a limit spent before the first candidate is built leaves
    only the baseline and the expert recipes (built whatever the limit, search/experts.py), and
    the result says where the limit cut."""
    cfg = SearchConfig(min_fidelity=0.9, time_limit_s=1e-6, families=("int8", "prune"),
                       target_options=False, **FAST)
    res = _search(cnn, tmp_path, cfg)
    assert res.cost["time_limit_reached"][:1] == ["building candidates"]
    assert "NetAdapt" in res.cost["time_limit_reached"]  # its loop never started an iteration
    assert res.rows[0].cand.family == "baseline"
    extra = res.rows[1:]
    assert extra and all(r.expert for r in extra)  # ORT's expert int8 recipe, nothing else
    assert {r.cand.family for r in extra} == {"int8"}
    assert any(n.startswith("time limit reached while building candidates") for n in res.notes)


def test_eval_that_raises_names_candidate_and_search_goes_on(cnn, tmp_path):
    mod = tmp_path / "evalmod.py"
    mod.write_text(
        "import numpy as np, onnx, onnxruntime as ort\n"
        "def accuracy(path):\n"
        "    if any(n.op_type == 'QuantizeLinear' for n in onnx.load(path).graph.node):\n"
        "        raise RuntimeError('int8 not supported by this eval')\n"
        "    s = ort.InferenceSession(path, providers=['CPUExecutionProvider'])\n"
        "    x = np.random.default_rng(3).standard_normal((1, 3, 24, 24)).astype(np.float32)\n"
        "    return float(np.abs(s.run(None, {'x': x})[0]).sum() > 0)\n")
    from deploykit.search.engine import load_eval

    logged: list[str] = []
    cfg = SearchConfig(min_fidelity=0.5, time_limit_s=30, families=("int8",),
                       target_options=False, **FAST)
    res = _search(cnn, tmp_path, cfg, eval_fn=load_eval(f"{mod}:accuracy"), log=logged.append)
    failed = [r for r in res.rows if r.status == "failed"]
    assert failed and all("RuntimeError: int8 not supported" in r.reason for r in failed)
    assert any("quantize-static" in line and "int8 not supported" in line for line in logged)
    assert res.rows[0].metric == 1.0 and res.rows[0].fidelity == 1.0
    assert res.recommendation is not None  # the search went on and recommended the baseline


def _cli(*args, timeout=180):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "deploykit", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_infeasible_budget_exits_1_with_fastest_found(cnn, tmp_path):
    r = _cli("search", cnn, "--budget-ms", "0.000001", "--families", "int8",
             "--no-target-options", "--time-limit", "10s", "-o", tmp_path / "o", "--store",
             tmp_path / "s.sqlite", "-q")
    assert r.returncode == 1, r.stderr
    assert "no candidate meets 1e-06 ms; fastest found is" in r.stderr
    assert "at fidelity" in r.stderr and "Traceback" not in r.stderr
    data = json.loads((tmp_path / "o" / "search.json").read_text())
    assert data["recommendation"] is None and data["infeasible"]
    assert not (tmp_path / "o" / "recommended.onnx").exists()
    assert (tmp_path / "o" / "report.html").exists()


def _keys(db: Path) -> list[str]:
    try:
        with sqlite3.connect(db, timeout=5) as c:
            return [k for (k,) in c.execute("SELECT key FROM measurements")]
    except sqlite3.Error:
        return []


@pytest.fixture
def quiet(monkeypatch):
    """A scripted quiet machine (the load-monitor seam): the search reuses only clean
    measurements, and whether this shared machine is loaded is not these tests' question."""
    from deploykit.measure import timing as measure

    class Quiet:
        def start(self):
            pass

        def stop(self):
            return 0.0

    monkeypatch.setattr(measure, "make_load_monitor", Quiet)


QUIET_SITE = Path(__file__).resolve().parent / "quiet_machine"  # the same, for a subprocess


def test_resume_after_sigkill_does_not_measure_again(cnn, tmp_path):
    store, out = tmp_path / "s.sqlite", tmp_path / "o"
    args = ["search", cnn, "--families", "int8,prune", "--no-target-options", "--no-netadapt",
            "--time-limit", f"{NO_LIMIT_S}s", "-o", out, "--store", store, "-q",
            "--min-fidelity", "0.9"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(QUIET_SITE), str(REPO)])}
    p = subprocess.Popen([sys.executable, "-m", "deploykit", *map(str, args)], cwd=REPO, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while len(_keys(store)) < 8 and p.poll() is None and time.monotonic() - t0 < 300:  # hangs
        time.sleep(0.2)
    assert p.poll() is None, "the search ended before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    before = set(_keys(store))
    assert len(before) >= 8, "the search stored too little before it was killed"
    assert not (out / "search.json").exists()  # killed mid-search: no half-written result
    r = subprocess.run([sys.executable, "-m", "deploykit", *map(str, args)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    after = set(_keys(store))
    assert before <= after
    with sqlite3.connect(store) as c:
        labels = [lab for (lab,) in c.execute("SELECT label FROM runs WHERE label LIKE 'cache:%'")]
    assert len(labels) == len(set(labels)) == len(after)  # nothing was measured twice
    cost = json.loads((out / "search.json").read_text())["cost"]
    assert cost["time_limit_reached"] == []  # the resumed search ran to its end
    assert cost["units_reused"] + cost["whole_reused"] >= 1


def test_netadapt_per_layer_moves_inside_a_search(tmp_path, quiet):
    from deploykit.rewrite.recipe import parse_recipe

    # wide enough that a layer's cut shows in its units' times above the per-call overhead of
    # the short test timing plans (at 16 channels on 24x24 a unit is mostly overhead, and
    # whether any cut met the 8% goal was up to the noise)
    cnn = residual_cnn(tmp_path / "wide.onnx", c=32, hw=32)

    # a limit it does not reach (its record says so): a restart must then repeat the same
    # decisions from the cache
    cfg = SearchConfig(min_fidelity=0.8, time_limit_s=NO_LIMIT_S,
                       families=("prune", "lowrank", "int8"), target_options=False, **FAST)
    res = _search(cnn, tmp_path, cfg)
    assert res.cost["time_limit_reached"] == []
    log = res.cost["netadapt"]
    # 3 channel groups, the MLP head's neurons (prune-ffn) and its first weight's rank
    assert log["layers"] == 5 and log["proposals"] >= 3
    chosen = [it for it in log["iterations"] if it["chosen"]]
    assert chosen, log
    per_layer = [r for r in res.rows if r.cand.family.endswith("/layer")]
    assert len(per_layer) >= log["proposals"] - 2  # (the last ones may be their int8 forms)
    for it in chosen:  # each kept state met its goal on the table, above the fidelity floor
        assert it["table_ms"] <= it["goal_ms"] and it["fidelity"] >= 0.8
    for r in per_layer:
        assert parse_recipe(r.cand.recipe)  # an ordinary recipe `deploykit compress` can run
        if r.status == "ok":
            assert r.fidelity >= 0.8 and r.table_ms > 0
    assert any(r.cand.family.endswith("/layer+int8") for r in res.rows)
    assert log["iterations"][-1]["stop"]
    again = _search(cnn, tmp_path, cfg)  # same outdir and store: nothing is measured again
    assert again.cost["time_limit_reached"] == []
    assert again.cost["netadapt"]["iterations"] == log["iterations"]
    assert again.cost["units_timed"] == 0 and again.cost["whole_measured_now"] == 0
    assert again.recommendation["id"] == res.recommendation["id"]
    only = _search(cnn, tmp_path / "no-int8", SearchConfig(
        min_fidelity=0.8, time_limit_s=NO_LIMIT_S, families=("prune",), target_options=False,
        **FAST))
    assert not any("int8" in r.cand.family for r in only.rows)  # --families is obeyed
