"""MetaSchedule tuning: the database is stored per (model, target) in the user cache dir and the
next build applies it without tuning again."""

from __future__ import annotations

import json

import pytest

from deploykit import cli
from deploykit.backends import registry as targets
from deploykit.backends.tvm import build as tvm_build, tune as tvm_tune
from deploykit.backends.tvm.local import UNTUNED_LABEL
from deploykit.core import ModelRef


def test_tune_then_build_reuses_database(dense_onnx, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = ModelRef.from_path(dense_onnx)
    target = targets.get("tvm-x86")
    db = tvm_build.tuning_dir(model.sha256, target.tvm_target)
    assert str(db).startswith(str(tmp_path / "cache"))
    assert UNTUNED_LABEL in target.compile(model).labels  # nothing stored yet

    assert cli.main(["tune", str(dense_onnx), "--target", "tvm-x86", "--trials", "2", "-q"]) == 0
    assert "database" in capsys.readouterr().out
    n = tvm_build.record_count(db)
    assert n >= 1
    # MetaSchedule records of this model's kernel: [workload, [trace, run secs, target, args]]
    records = [json.loads(line) for line in
               (db / "database_tuning_record.json").read_text().splitlines() if line.strip()]
    workloads = [w for w in (db / "database_workload.json").read_text().splitlines() if w.strip()]
    assert len(records) >= n and workloads
    for workload, (trace, run_secs, tvm_target, args) in records:
        assert 0 <= workload < len(workloads)
        assert trace[0] and all(isinstance(inst[0], str) for inst in trace[0])  # instructions
        assert tvm_target["kind"] == "llvm"
        assert ["TENSOR", "float32", [1, 64]] in args  # the model's x[1, 64]
    assert sum(bool(s) and 0 < max(s) < 1e9 for _, (_, s, _, _) in records) == n  # measured

    def no_tuning(*a, **k):
        raise AssertionError("a build must not tune")

    from tvm.s_tir import meta_schedule as ms

    monkeypatch.setattr(ms.relax_integration, "tune_relax", no_tuning)
    monkeypatch.setattr(tvm_tune, "tune", no_tuning)
    art = target.compile(model)  # second build: applies the stored database, checked vs ORT
    assert UNTUNED_LABEL not in art.labels
    assert art.built.tuning_records == n and art.built.tuning_db == str(db)
    assert art.check["max_rel_err"] <= 1e-4


def test_tune_refuses_remote_and_bad_budget(dense_onnx):
    model = ModelRef.from_path(dense_onnx)
    with pytest.raises(Exception, match="trials"):
        tvm_tune.tune(model, targets.get("tvm-x86"), 0)
    with pytest.raises(Exception, match="RPC"):
        tvm_tune.tune(model, targets.get("tvm-aarch64", require_available=False), 2)
