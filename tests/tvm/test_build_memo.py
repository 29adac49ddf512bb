"""A TVM build is made once per (model, target) in a process: later compiles (the gate's rounds)
get fresh VMs / device sessions from it; another model, target config or tuning database builds
again. Builds are counted by wrapping the real build.build (the build itself runs)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import kill_group
from deploykit.backends import registry as targets
from deploykit.backends.tvm import build as tvm_build
from deploykit.backends.tvm import remote as tvm_remote
from deploykit.backends.tvm import rpc
from deploykit.backends.tvm.build_memo import MEMO
from deploykit.core import ModelRef
from deploykit.onnxio import make_feeds


@pytest.fixture()
def counted(monkeypatch):
    """Real builds, ORT references and exports made during the test."""
    calls = {"build": [], "reference": 0, "export": 0}
    build, reference, export = (tvm_build.build, tvm_build.reference_outputs,
                                tvm_remote.export_library)

    def counting_build(model, target):
        calls["build"].append((model.path.name, target.name, target.threads))
        return build(model, target)

    def counting_reference(model, feeds):
        calls["reference"] += 1
        return reference(model, feeds)

    def counting_export(built, target, model):
        calls["export"] += 1
        return export(built, target, model)

    monkeypatch.setattr(tvm_build, "build", counting_build)
    monkeypatch.setattr(tvm_build, "reference_outputs", counting_reference)
    monkeypatch.setattr(tvm_remote, "export_library", counting_export)
    return calls


def test_second_compile_reuses_the_build_with_a_fresh_vm(cnn_onnx, counted):
    x86 = targets.get("tvm-x86")
    model = ModelRef.from_path(cnn_onnx)
    a = x86.compile(model)
    b = x86.compile(model)
    assert len(counted["build"]) == 1 and counted["reference"] == 1  # built and checked once
    assert a.vm is not b.vm and a.built.executable is b.built.executable
    assert not a.built.reused and b.built.reused
    # honest figures: the build time is the original build's, marked as reused; the reused
    # artifact's session cost is its own VM's creation
    assert b.build_ms == a.build_ms == a.session_create_ms > 0
    assert a.env["tvm_build_reused"] is False and b.env["tvm_build_reused"] is True
    assert b.env["tvm_build_ms"] == a.env["tvm_build_ms"]
    assert math.isfinite(b.session_create_ms) and 0 < b.session_create_ms
    assert b.check == a.check and b.check is not a.check
    assert b.labels == a.labels
    feeds = make_feeds(list(a.inputs), seed=5)
    out_a = a.run(feeds)
    a.close()
    del a  # the second VM does not depend on the first
    out_b = b.run(feeds)
    assert all(np.array_equal(x, y) for x, y in zip(out_a, out_b))


def test_another_model_config_or_tuning_database_builds_again(cnn_onnx, dense_onnx, tmp_path,
                                                              counted):
    cnn, dense = ModelRef.from_path(cnn_onnx), ModelRef.from_path(dense_onnx)
    db = tmp_path / "db"
    db.mkdir()
    x86 = targets.get("tvm-x86", tuning_db=str(db))
    x86.compile(cnn)
    x86.compile(dense)
    assert len(counted["build"]) == 2
    targets.get("tvm-x86", tuning_db=str(db), threads=1).compile(cnn)  # another config
    assert len(counted["build"]) == 3
    (db / "database_workload.json").write_text("")  # the database changed (e.g. tuned)
    x86.compile(cnn)
    assert len(counted["build"]) == 4
    x86.compile(cnn)
    assert len(counted["build"]) == 4
    x86.compile(dense)  # --db DIR is shared by the models: dense's database changed too
    x86.compile(dense)
    assert [c[:3:2] for c in counted["build"]] == [
        ("cnn.onnx", 2), ("dense.onnx", 2), ("cnn.onnx", 1), ("cnn.onnx", 2), ("dense.onnx", 2)]


def test_a_failed_check_stores_nothing(cnn_onnx, monkeypatch):
    from deploykit.errors import VerificationError

    real = tvm_build.reference_outputs
    monkeypatch.setattr(tvm_build, "reference_outputs",
                        lambda m, f: [o + 0.01 * np.abs(o).max() for o in real(m, f)])
    x86 = targets.get("tvm-x86")
    for _ in range(2):  # the second compile builds and checks again: it fails again
        with pytest.raises(VerificationError, match="differs from ORT"):
            x86.compile(ModelRef.from_path(cnn_onnx))
    assert len(MEMO) == 0


def test_the_memo_keeps_the_most_recent_builds(cnn_onnx, dense_onnx, counted, monkeypatch):
    monkeypatch.setattr(MEMO, "max_entries", 1)
    x86 = targets.get("tvm-x86")
    cnn, dense = ModelRef.from_path(cnn_onnx), ModelRef.from_path(dense_onnx)
    for m in (cnn, dense, cnn):
        x86.compile(m)
    assert len(counted["build"]) == 3 and len(MEMO) == 1


def test_the_gates_rounds_build_each_model_once(cnn_onnx, dense_onnx, counted):
    """10 rounds of fresh sessions of two models: two builds; every round's VM is new and its
    cold start (VM creation + first inference) a real sample."""
    from deploykit.gate.rounds import MIN_ROUNDS, gate_target, measure_rounds

    t = gate_target("tvm-x86", threads=1)
    models = [ModelRef.from_path(cnn_onnx), ModelRef.from_path(dense_onnx)]
    reports = measure_rounds(t, models, {"seed": 0}, max_time=0.2, warmup_max=0.05)
    assert sorted(c[0] for c in counted["build"]) == ["cnn.onnx", "dense.onnx"]
    for r in reports:
        assert len(r.blocks) >= MIN_ROUNDS
        assert r.env["tvm_build_reused"] is True and r.env["tvm_build_ms"] > 0
        assert len(r.cold_start_samples_ms) >= MIN_ROUNDS - 1
        assert all(math.isfinite(c) and c > 0 for c in r.cold_start_samples_ms)
        # the rounds' sessions are their own VMs, not the build time repeated
        assert r.session_create_ms != r.env["tvm_build_ms"]


def test_remote_compile_reuses_the_library_and_opens_a_new_session(cnn_onnx, tmp_path, counted):
    toml = tmp_path / "tvm-x86-rpc.toml"
    toml.write_text('name = "tvm-x86-rpc"\nbackend = "tvm"\nthreads = 1\nremote = true\n'
                    '[tvm_target]\nkind = "llvm"\nmcpu = "host"\n')
    model = ModelRef.from_path(cnn_onnx)
    proc, port = rpc.start_server()
    try:
        t = targets.get(str(toml), rpc=f"127.0.0.1:{port}")
        a = t.compile(model)
        feeds = make_feeds(list(a.inputs), seed=2)
        out_a = a.run(feeds)
        a.close()  # a direct server holds one session at a time
        b = t.compile(model)
        assert len(counted["build"]) == 1 and counted["export"] == 1
        assert b.lib == a.lib and b.built.reused and not a.built.reused
        assert b.env["tvm_build_ms"] == a.build_ms > 0 and b.env["tvm_build_reused"] is True
        assert 0 < b.session_create_ms != a.build_ms  # upload + load: this session's cost
        assert counted["reference"] == 2  # the new session's device is checked again
        assert b.check["max_rel_err"] <= 1e-4
        out_b = b.run(feeds)
        assert all(np.array_equal(x, y) for x, y in zip(out_a, out_b))
        b.close()
    finally:
        kill_group(proc)
