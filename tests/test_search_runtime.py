"""A candidate's fidelity is checked on the runtime it will run on (not only on ORT) before it is
timed, and built candidates are reused only for the same source model, inputs and code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deploykit.backends import registry as targets
from deploykit.backends.base import Artifact, Target
from deploykit.core import ModelRef, TimingPlan
from deploykit.search.engine import Row, Search, SearchConfig, code_id, reference_runtime
from deploykit.search.candidates import Candidate
from deploykit.store import Store
from deploykit.fidelity import run_ort

from _search_models import residual_cnn

PLAN = TimingPlan(warmup_min_s=0.01, warmup_max_s=0.02, target_rel_ci=0.2, min_samples=5,
                  max_time_s=0.1, block_s=0.02)


class _Noisy(Artifact):
    """ORT's outputs plus noise of a given relative size: a runtime that computes differently."""

    def __init__(self, model, target):
        super().__init__(model, target, (), (), 0.0)
        self.rng = np.random.default_rng(0)

    def run(self, feeds):
        outs = run_ort(self.model.path, feeds)
        return [o + self.target.noise * np.abs(o).mean() * self.rng.standard_normal(o.shape)
                .astype(o.dtype) for o in outs]


class NoisyTarget(Target):
    compiled = 0

    def __init__(self, noise: float):
        super().__init__(f"noisy-{noise:g}", {"backend": "noisy", "threads": 1})
        self.noise = noise

    def compile(self, model: ModelRef) -> Artifact:
        NoisyTarget.compiled += 1
        return _Noisy(model, self)


def _feeds():
    return {"x": np.random.default_rng(0).standard_normal((1, 3, 24, 24)).astype(np.float32)}


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> Path:
    return residual_cnn(tmp_path_factory.mktemp("rt") / "cnn.onnx")


def _search(model, out, store, min_fidelity=0.99):
    return Search(model, "ort-cpu", SearchConfig(min_fidelity=min_fidelity, whole_plan=PLAN),
                  out, store, feeds=_feeds())


def test_only_ort_cpu_is_the_reference_runtime():
    assert reference_runtime(targets.get("ort-cpu"))
    assert reference_runtime(targets.get("ort-cpu", threads=1))
    assert not reference_runtime(NoisyTarget(0.0))
    assert not reference_runtime(targets.get("ort-cuda", require_available=False))


def test_candidate_below_the_floor_on_its_runtime_is_rejected_before_timing(cnn, tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        s = _search(cnn, tmp_path / "out", store, min_fidelity=0.5)  # random weights prune badly
        cand = Candidate("prune", (("prune-channels", (("ratio", 0.25),)),))
        for noise, ok in ((3.0, False), (1e-3, True)):
            opts = (("target", f"noisy-{noise:g}"),)
            s.measure.targets[opts] = NoisyTarget(noise)
            row = Row(cand.with_options(opts))
            s.build(row)
            assert row.status == "ok"
            ort_fidelity = row.fidelity
            rep = s.measure.whole(row, PLAN)
            rt = row.fidelity_detail["runtime"]
            assert rt["target"] == f"noisy-{noise:g}" and rt["against"] == "the original on ORT"
            if ok:  # timed, and its fidelity is the worse of ORT's and the runtime's
                assert rep is not None and row.median is not None
                assert row.fidelity == min(ort_fidelity, rt["cosine"]) < 1
            else:  # nothing timed, and the reason names the runtime
                assert rep is None and row.median is None and row.status == "rejected"
                assert f"on noisy-{noise:g}: cosine" in row.reason and "< 0.5" in row.reason
        # the runtime check is cached with the build: a restarted search compiles nothing for it
        before = NoisyTarget.compiled
        again = Row(cand.with_options((("target", "noisy-3"),)))
        s.build(again)
        assert s.measure.whole(again, PLAN) is None and NoisyTarget.compiled == before


def test_the_baseline_is_never_rejected_on_the_users_runtime(cnn, tmp_path):
    with Store(tmp_path / "s.sqlite") as store:
        s = _search(cnn, tmp_path / "out", store)
        s.measure.targets[()] = NoisyTarget(0.5)  # the user's own --target computes like this
        base = Row(Candidate("baseline"))
        s.build(base)
        assert s.measure.whole(base, PLAN) is not None and base.status == "ok"
        assert base.fidelity_detail["runtime"]["cosine"] < 0.99  # reported, not hidden


def test_builds_are_not_reused_across_source_models(cnn, tmp_path):
    other = residual_cnn(tmp_path / "other.onnx", seed=1)
    cand = Candidate("prune", (("prune-channels", (("ratio", 0.25),)),))
    paths = []
    with Store(tmp_path / "s.sqlite") as store:
        for model in (cnn, other, cnn):
            row = Row(cand)
            _search(model, tmp_path / "out", store).build(row)  # the same OUTDIR each time
            paths.append((row.path, row.sha256))
    assert paths[0][1] != paths[1][1]  # the other model's cut, not the first one's cache
    assert paths[2] == paths[0]  # the first model's build is reused
    assert code_id() == code_id() and len(code_id()) == 16


class _NoUnits(NoisyTarget):
    """A runtime that refuses model fragments (the layer table's units), not whole models."""

    refused = 0

    def compile(self, model: ModelRef) -> Artifact:
        if Path(model.path).name.startswith("unit-"):
            _NoUnits.refused += 1
            raise RuntimeError("cannot compile a fragment\nsecond line")
        return super().compile(model)


def test_runtime_without_its_own_layer_table_is_measured_whole_not_borrowed(cnn, tmp_path):
    """A runtime that cannot time a unit alone is not predicted from ORT's table (another
    runtime fuses and quantizes differently): its candidates are left to whole measurements."""
    from functools import partial

    from deploykit.search.layer_table import LayerTable

    with Store(tmp_path / "s.sqlite") as store:
        s = Search(cnn, "ort-cpu", SearchConfig(whole_plan=PLAN, unit_plan=PLAN), tmp_path / "o",
                   store, feeds=_feeds())
        opts = (("target", "nounits"),)
        s.measure.targets[opts] = _NoUnits(0.0)
        s.estimator.tables = {v: LayerTable(partial(s.measure.time_unit, s.target_of(v)),
                                           partial(s.measure.lookup_unit, s.target_of(v)),
                                           tmp_path / "units" / str(i))
                              for i, v in enumerate([(), opts])}
        base, on_other = Row(Candidate("baseline")), Row(Candidate("baseline").with_options(opts))
        for r in (base, on_other):
            s.build(r)
        assert s.estimator.estimate(base) > 0
        assert s.estimator.estimate(on_other) is None and _NoUnits.refused == 1
        assert s.estimator.whole_only(on_other) and not s.estimator.whole_only(base)
        assert any("no layer table of its own (RuntimeError: cannot compile a fragment)" in n
                   and "measured whole instead of predicted from another runtime's table" in n
                   for n in s.notes)
        assert s.estimator.estimate(on_other) is None and _NoUnits.refused == 1  # not retried
        assert s.measure.whole(on_other, PLAN) is not None and on_other.median > 0
