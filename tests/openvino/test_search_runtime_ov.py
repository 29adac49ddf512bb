"""The search's runtime fidelity check on the real OpenVINO CPU plugin: an int8-weight candidate
(`nncf-weights`) is computed differently by OpenVINO than by ORT, the search keeps the worse
cosine (the one on ov-cpu, recomputed here by hand), and a floor between the two rejects the
candidate on ov-cpu although ORT alone would pass it, before anything is timed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nncf")

from deploykit.backends import registry as targets
from deploykit.core import ModelRef, TimingPlan  # noqa: E402
from deploykit.search.engine import Row, Search, SearchConfig
from deploykit.search.candidates import Candidate
from deploykit.store import Store  # noqa: E402
from deploykit.fidelity import compare, run_ort

from _search_models import residual_cnn  # noqa: E402

PLAN = TimingPlan(warmup_min_s=0.01, warmup_max_s=0.02, target_rel_ci=0.2, min_samples=5,
                  max_time_s=0.1, block_s=0.02)
W8 = Candidate("int8", (("nncf-weights", ()),))


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> Path:
    return residual_cnn(tmp_path_factory.mktemp("ovrt") / "cnn.onnx")


def _feeds():
    return {"x": np.random.default_rng(0).standard_normal((1, 3, 24, 24)).astype(np.float32)}


def _row(cnn, out: Path, store, min_fidelity: float):
    s = Search(cnn, "ov-cpu", SearchConfig(min_fidelity=min_fidelity, whole_plan=PLAN), out,
               store, feeds=_feeds())
    row = Row(W8)
    s.build(row)  # built and checked on ORT (the verification runtime)
    assert row.status == "ok", row.reason
    ort_cosine = row.fidelity
    return s, row, ort_cosine


def test_ov_cpu_fidelity_is_checked_on_openvino_and_the_worse_is_kept(cnn, tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        s, row, ort_cosine = _row(cnn, tmp_path / "out", store, min_fidelity=0.9)
        rep = s.measure.whole(row, PLAN)
        rt = row.fidelity_detail["runtime"]
        assert rt["target"] == "ov-cpu" and rt["against"] == "the original on ORT"
        # by hand: the candidate file on the real CPU plugin vs the original model on ORT
        art = targets.get("ov-cpu").compile(ModelRef.from_path(row.path))
        try:
            by_hand = compare(run_ort(cnn, _feeds()), art.run(_feeds())).cosine
        finally:
            art.close()
        assert rt["cosine"] == pytest.approx(by_hand, abs=1e-9)
        assert by_hand < ort_cosine  # OpenVINO computes the int8-weight model differently
        assert row.fidelity == pytest.approx(by_hand, abs=1e-9)  # the worse of the two is kept
        assert rep is not None and row.median is not None and rep.target == "ov-cpu"
        assert row.status == "ok" and len(store.runs()) == 1  # timed once, on ov-cpu


def test_a_floor_ort_meets_but_openvino_misses_rejects_before_timing(cnn, tmp_path):
    with Store(tmp_path / "probe.sqlite") as store:  # the two cosines of this candidate
        s, row, ort_cosine = _row(cnn, tmp_path / "probe", store, min_fidelity=0.9)
        s.measure.whole(row, PLAN)
        ov_cosine = row.fidelity_detail["runtime"]["cosine"]
    assert ov_cosine < ort_cosine
    floor = (ov_cosine + ort_cosine) / 2
    with Store(tmp_path / "s.sqlite") as store:
        s, row, ort_again = _row(cnn, tmp_path / "out", store, min_fidelity=floor)
        assert ort_again >= floor  # ORT alone would let it through
        assert s.measure.whole(row, PLAN) is None
        assert row.status == "rejected" and row.median is None
        assert row.reason.startswith("on ov-cpu: cosine") and f"< {floor}" in row.reason
        assert store.runs() == []  # nothing was timed
