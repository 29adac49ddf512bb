"""tvm-x86: ONNX -> Relax -> llvm build, checked against ORT; per-op schema; labels; faults."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.backends import registry as targets
from deploykit.backends.tvm import build as tvm_build
from deploykit.backends.tvm.local import UNTUNED_LABEL, op_type_of
from deploykit.core import ModelRef, OpTime, TimingPlan
from deploykit.errors import TargetError, VerificationError
from deploykit.onnxio import make_feeds

import tvm_models as models


@pytest.fixture(scope="module")
def x86():
    return targets.get("tvm-x86")


def test_target_dict_resolves_host_cpu_and_threads(x86):
    t = x86.tvm_target
    assert t["kind"] == "llvm"
    assert t["mcpu"] not in ("host", "", None)
    assert t["num-cores"] == x86.threads


@pytest.mark.parametrize("fixture", ["cnn_onnx", "block_onnx"])
def test_build_matches_ort(x86, fixture, request):
    path = request.getfixturevalue(fixture)
    art = x86.compile(ModelRef.from_path(path))
    assert art.check["max_rel_err"] <= 1e-4
    assert UNTUNED_LABEL in art.labels
    feeds = make_feeds(list(art.inputs), seed=3)
    got = art.run(feeds)
    ref = tvm_build.reference_outputs(art.model, feeds)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-4, atol=1e-4 * np.abs(ref[0]).max())


def test_per_op_breakdown_uses_shared_schema(x86, cnn_onnx, tmp_path):
    art = x86.compile(ModelRef.from_path(cnn_onnx))
    trace = tmp_path / "trace.json"
    ops = art.per_op(make_feeds(list(art.inputs)), runs=3, trace_path=str(trace))
    assert ops and all(isinstance(o, OpTime) for o in ops)
    assert abs(sum(o.share for o in ops) - 1.0) < 1e-6
    assert any("conv2d" in o.op_type for o in ops)
    assert trace.exists() and "traceEvents" in trace.read_text()


def test_profile_report_says_untuned(x86, cnn_onnx):
    art = x86.compile(ModelRef.from_path(cnn_onnx))
    plan = TimingPlan(warmup_min_s=0.05, warmup_max_s=0.2, max_time_s=0.3, min_samples=5)
    rep = x86.profile(art, make_feeds(list(art.inputs)), plan, per_op=False)
    assert UNTUNED_LABEL in rep.labels
    assert len(rep.samples_ms) >= 5 and rep.median_ms > 0
    m = rep.memory  # memory per phase on the TVM local target too (measure/memory.py)
    assert m["load_peak_bytes"] >= m["rss_before_bytes"] and m["steady_peak_bytes"] > 0
    assert m["weight_bytes"] > 0


def test_output_mismatch_fails_loudly(x86, cnn_onnx, monkeypatch):
    real = tvm_build.reference_outputs
    monkeypatch.setattr(tvm_build, "reference_outputs",
                        lambda m, f: [o + 0.01 * np.abs(o).max() for o in real(m, f)])
    with pytest.raises(VerificationError, match="differs from ORT"):
        x86.compile(ModelRef.from_path(cnn_onnx))


def test_unsupported_op_is_named(x86, tmp_path):
    path = models.with_unsupported_op(tmp_path / "celu.onnx")
    with pytest.raises(TargetError, match=r"op Celu \(node 'the_celu'\)"):
        x86.compile(ModelRef.from_path(path))


def test_op_type_folds_numbered_kernels():
    assert op_type_of("fused_conv2d1_add2_relu1") == "fused_conv2d_add_relu"
    assert op_type_of("matmul") == "matmul"


def test_cuda_target_says_why_when_unusable():
    t = targets.get("tvm-cuda", require_available=False)
    reason = t.unavailable_reason()
    import tvm

    if tvm.runtime.enabled("cuda") and tvm.cuda(0).exist:
        assert reason is None
    else:
        assert reason and ("CUDA" in reason or "GPU" in reason)
        with pytest.raises(TargetError, match="unavailable"):
            targets.get("tvm-cuda")


@pytest.mark.gpu
def test_cuda_build_matches_ort(cnn_onnx):
    t = targets.get("tvm-cuda", require_available=False)
    reason = t.unavailable_reason()
    if reason:
        pytest.skip(reason)
    art = t.compile(ModelRef.from_path(cnn_onnx))
    assert art.check["max_rel_err"] <= 1e-4
    plan = TimingPlan(warmup_min_s=0.05, warmup_max_s=0.2, max_time_s=0.3, min_samples=5)
    rep = t.profile(art, make_feeds(list(art.inputs)), plan, per_op=True)
    assert rep.per_op and rep.median_ms > 0


def test_shape_arithmetic_the_frontend_cannot_follow_is_folded_first(x86, tmp_path):
    """Reshape(x, Concat(Shape(x)[0] * 2, 16)), as exporters write for a batch dim: TVM's
    frontend refuses the computed shape; import_model folds it at the static shape and builds."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tvm.relax.frontend.onnx import from_onnx

    n = helper.make_node
    consts = {"i0": [0], "two": [2], "sixteen": [16]}
    graph = helper.make_graph(
        [n("Shape", ["x"], ["s"]), n("Gather", ["s", "i0"], ["b"], axis=0),
         n("Mul", ["b", "two"], ["b2"]), n("Concat", ["b2", "sixteen"], ["shp"], axis=0),
         n("Reshape", ["x", "shp"], ["r"]), n("Relu", ["r"], ["y"])], "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 16])],
        [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "reshape.onnx"
    onnx.save(model, str(path))
    with pytest.raises(Exception, match="Reshape requires the input new shape"):
        from_onnx(model, shape_dict={"x": [8, 4, 8]})
    art = x86.compile(ModelRef.from_path(path))
    assert art.check["max_rel_err"] <= 1e-4
    x = np.random.default_rng(0).standard_normal((8, 4, 8)).astype(np.float32)
    np.testing.assert_allclose(art.run({"x": x})[0], np.maximum(x.reshape(16, 16), 0), rtol=1e-6)
