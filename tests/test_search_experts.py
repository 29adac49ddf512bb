"""Runtime discipline (the recommendation runs on --target's runtime; other runtimes only when asked,
as alternatives) and the expert recipes (built and measured whole whatever the predictor says)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deploykit.backends import registry as targets
from deploykit.backends.base import Artifact, Target
from deploykit.core import ModelRef
from deploykit.fidelity import run_ort
from deploykit.search.candidates import option_variants
from deploykit.search.engine import Search, SearchConfig, write_outputs
from deploykit.search.estimate import Estimator
from deploykit.store import Store

from _search_models import residual_cnn
from test_search import FAST, NO_LIMIT_S, REPO, _feeds

FAST_OPTS = (("target", "fastrt"),)


class _Cached(Artifact):
    """Computes like ORT, then answers from memory: a runtime much faster than ORT."""

    def __init__(self, model, target):
        super().__init__(model, target, (), (), 0.0)
        self._memo: dict[tuple, list[np.ndarray]] = {}

    def run(self, feeds):
        key = tuple((k, id(v)) for k, v in sorted(feeds.items()))
        if key not in self._memo:
            self._memo[key] = run_ort(self.model.path, feeds)
        return self._memo[key]

    def per_op(self, feeds, runs=20, trace_path=None):
        return []


class FastRuntime(Target):
    """...and, like OpenVINO on some graphs, refuses the layer table's one-layer fragments."""

    def __init__(self):
        super().__init__("fastrt", {"backend": "fastrt", "threads": 1})

    def compile(self, model: ModelRef) -> Artifact:
        if Path(model.path).name.startswith("unit-"):
            raise RuntimeError("Exception from src/inference/src/cpp/compiled_model.cpp:84:")
        return _Cached(model, self)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> Path:
    return residual_cnn(tmp_path_factory.mktemp("experts") / "cnn.onnx")


def _run(cnn, out: Path, cfg: SearchConfig, setup=None):
    from deploykit.onnxio import io_specs, load_onnx
    from deploykit.rewrite.calibration import synthetic_calibration

    specs, _ = io_specs(load_onnx(cnn))
    with Store(out / "store.sqlite") as store:
        s = Search(cnn, "ort-cpu", cfg, out, store, feeds=_feeds(),
                   calibration=synthetic_calibration(specs, n=2))
        if setup:
            setup(s)
        return s.run()


def test_other_runtimes_are_searched_only_when_asked():
    ort = targets.get("ort-cpu", threads=2)
    assert all("target" not in dict(v) for v in option_variants(ort))  # OpenVINO installed or not
    with_ov = option_variants(ort, ("ov-cpu",))
    assert (("target", "ov-cpu"),) in with_ov and (("target", "ov-cpu"), ("threads", 1)) in with_ov


def test_recommendation_stays_on_the_target_runtime_when_another_is_faster(cnn, tmp_path):
    cfg = SearchConfig(min_fidelity=0.9, time_limit_s=NO_LIMIT_S, families=("int8",),
                       target_options=False, netadapt=False, runtimes=("fastrt",), **FAST)

    def setup(s):
        s.measure.targets[FAST_OPTS] = FastRuntime()

    res = _run(cnn, tmp_path, cfg, setup)
    assert res.cost["time_limit_reached"] == []
    rec = res.recommendation
    assert rec is not None and "target" not in rec["options"]  # an ORT model
    on_fast = [r for r in res.rows if r.runtime == "fastrt" and r.median is not None]
    on_ort = [r for r in res.rows if r.runtime == "ort-cpu" and r.median is not None]
    assert on_fast and on_ort
    # no layer table of its own: measured whole (a fair share), none predicted from ORT's table
    assert all(r.table_ms is None and r.predicted_ms is None for r in on_fast)
    assert len(on_fast) >= 2
    assert min(r.median for r in on_fast) < min(r.median for r in on_ort)  # really faster
    (alt,) = res.alternatives
    assert alt["runtime"] == "fastrt" and alt["interleaved"]
    assert alt["speedup"] > rec["speedup"]  # listed, with its measured ratio, not recommended
    data = res.to_dict()
    assert data["alternatives"] == res.alternatives
    assert data["runtimes"]["recommendation"] == "ort-cpu"
    assert data["runtimes"]["searched"] == ["ort-cpu", "fastrt"]
    from deploykit.report.html import summary_lines

    lines = summary_lines(data)
    assert any(line.startswith("Alternative on fastrt (not the --target runtime)")
               and f"{alt['speedup']:.2f}x" in line for line in lines)
    paths = write_outputs(res, tmp_path)
    page = paths["html"].read_text()
    assert "<td>fastrt</td>" in page and "alternative (another runtime)" in page
    assert f"{alt['speedup']:.2f}x" in page and page.index("fastrt") > page.index("recommendation")


def test_expert_recipe_with_a_bad_prediction_is_still_measured_whole(cnn, tmp_path, monkeypatch):
    expert_recipe = "quantize-static"  # ORT's expert: calibrated static int8, per-channel U8S8
    real = Estimator.estimate

    def pessimistic(self, row, keep=None):  # the predictor calls the expert 1000x too slow
        ms = real(self, row, keep)
        return ms * 1000 if ms is not None and row.cand.recipe == expert_recipe else ms

    monkeypatch.setattr(Estimator, "estimate", pessimistic)
    found = {}
    for experts in (False, True):  # same OUTDIR: the builds are reused
        cfg = SearchConfig(min_fidelity=0.9, time_limit_s=NO_LIMIT_S, families=("int8",),
                           target_options=False, netadapt=False, whole_fraction=0.01,
                           experts=experts, **FAST)
        res = _run(cnn, tmp_path, cfg)
        (row,) = [r for r in res.rows if r.cand.recipe == expert_recipe and not r.cand.options]
        assert row.status == "ok"
        found[experts] = row
    assert found[False].median is None  # the predictor alone would never have measured it
    row = found[True]
    assert row.median is not None and "per-channel U8S8" in row.expert
    assert row.predicted_ms is not None and row.predicted_ms > 50 * row.median  # bad prediction
    assert row.to_dict()["expert"] == row.expert


def test_runtimes_option_bad_input_is_one_line(cnn, tmp_path):
    import os

    r = subprocess.run([sys.executable, "-m", "deploykit", "search", str(cnn), "--runtimes",
                        "no-such-runtime", "-o", str(tmp_path / "o"), "--time-limit", "5s"],
                       cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    err = [line for line in r.stderr.splitlines() if line.startswith("deploykit: error:")]
    assert len(err) == 1 and "--runtimes" in err[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "o" / "search.json").exists()


def test_ort_experts_include_the_hand_defaults_users_type_first(cnn, tmp_path):
    """The hand recipes of BENCHMARKS.md are experts too: ORT's quantize_dynamic exactly as
    users call it (per-tensor, no pre-processing) for a Linear-heavy model — it beat the
    per-channel one on the 4 x Linear(4096) MLP; a Conv model gets no dynamic expert
    (ConvInteger is slow on ORT CPU)."""
    import onnx

    from deploykit.search.experts import expert_steps
    from onnx_models import make_mlp

    have = {"quantize-static", "quantize-dynamic", "nncf-int8", "nncf-weights"}
    mlp = onnx.load(str(make_mlp(tmp_path / "mlp.onnx")))
    steps = [s for s, _ in expert_steps(mlp, "ort", have)]
    assert steps == [("quantize-static", ()), ("quantize-dynamic", ()),
                     ("quantize-dynamic", (("per_channel", False), ("preprocess", False)))]
    conv = [s for s, _ in expert_steps(onnx.load(str(cnn)), "ort", have)]
    assert conv == steps[:1]
    assert [s for s, _ in expert_steps(mlp, "ort", {"quantize-static"})] == steps[:1]
    assert [s[0] for s, _ in expert_steps(mlp, "openvino", have)] == ["nncf-int8", "nncf-weights"]
