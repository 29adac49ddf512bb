import json
import os

import numpy as np
import onnxruntime as ort
import pytest

from deploykit.backends import registry as targets
from deploykit.backends.ort import aggregate_node_events, by_op_type
from deploykit.core import ModelRef, TimingPlan
from deploykit.errors import TargetError
from deploykit.onnxio import make_feeds
from onnx_models import conv_relu_gemm


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return ModelRef.from_path(conv_relu_gemm(tmp_path_factory.mktemp("m") / "m.onnx"))


def test_compile_runs_and_matches_plain_ort(model):
    art = targets.get("ort-cpu").compile(model)
    feeds = make_feeds(list(art.inputs), seed=3)
    ref = ort.InferenceSession(str(model.path)).run(None, feeds)[0]
    np.testing.assert_allclose(art.run(feeds)[0], ref, rtol=1e-5, atol=1e-6)
    assert art.session_create_ms > 0 and art.providers[0] == "CPUExecutionProvider"


def test_per_op_breakdown_names_graph_nodes_and_writes_trace(model, tmp_path):
    art = targets.get("ort-cpu").compile(model)
    trace = tmp_path / "trace.json"
    ops = art.per_op(make_feeds(list(art.inputs)), runs=5, trace_path=str(trace))
    assert ops and abs(sum(o.share for o in ops) - 1.0) < 1e-6
    assert {o.op_type for o in ops} <= {"Conv", "Relu", "GlobalAveragePool", "Flatten", "Gemm",
                                        "FusedConv", "Reshape", "ReorderInput",
                                        "ReorderOutput"}  # ORT NCHWc layout transforms
    assert any(o.op_type.endswith("Conv") for o in ops)
    events = json.loads(trace.read_text())
    assert any(e.get("cat") == "Node" for e in events)  # Chrome trace event list


def test_aggregate_node_events_known_answer():
    ev = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 10},
          {"cat": "Node", "name": "a_kernel_time", "ts": 1, "dur": 999, "args": {"op_name": "Conv"}},
          {"cat": "Session", "name": "model_run", "ts": 100, "dur": 10},
          {"cat": "Node", "name": "a_kernel_time", "ts": 101, "dur": 3000, "args": {"op_name": "Conv"}},
          {"cat": "Node", "name": "b_kernel_time", "ts": 102, "dur": 1000, "args": {"op_name": "Relu"}},
          {"cat": "Session", "name": "model_run", "ts": 200, "dur": 10},
          {"cat": "Node", "name": "a_kernel_time", "ts": 201, "dur": 1000, "args": {"op_name": "Conv"}},
          {"cat": "Node", "name": "b_kernel_time", "ts": 202, "dur": 1000, "args": {"op_name": "Relu"}}]
    ops = aggregate_node_events(ev, runs=2, runs_skip=1)
    assert [(o.name, o.op_type, o.total_ms, o.share) for o in ops] == [
        ("a", "Conv", 2.0, pytest.approx(4 / 6)), ("b", "Relu", 1.0, pytest.approx(2 / 6))]
    assert [o.op_type for o in by_op_type(ops)] == ["Conv", "Relu"]


def test_profile_returns_a_distribution(model):
    t = targets.get("ort-cpu")
    art = t.compile(model)
    plan = TimingPlan(warmup_max_s=0.2, max_time_s=0.5, min_samples=10)
    r = t.profile(art, make_feeds(list(art.inputs)), plan)
    d = r.to_dict()
    for key in ("median_ms", "p90_ms", "p99_ms", "ci95_ms", "samples_ms", "per_op", "env",
                "target", "model_sha256", "flops", "roofline_efficiency"):
        assert key in d
    assert d["ci95_ms"][0] <= d["median_ms"] <= d["ci95_ms"][1]
    assert d["env"]["threads"] == 2 and d["env"]["versions"]["onnxruntime"] == ort.__version__
    assert r.stop_reason in ("ci-reached", "time-cap")


@pytest.mark.gpu
def test_cuda_target_is_usable_only_with_a_cuda_provider_and_a_gpu():
    reason = targets.get("ort-cuda", require_available=False).unavailable_reason()
    gpu = os.path.exists("/dev/nvidia0") or os.path.exists("/proc/driver/nvidia/version")
    if "CUDAExecutionProvider" in ort.get_available_providers() and gpu:
        assert reason is None
        assert targets.get("ort-cuda").name == "ort-cuda"
    else:  # the pinned onnxruntime is the CPU build: this branch everywhere CI runs today
        assert reason and "CUDA" in reason
        with pytest.raises(TargetError, match="unavailable"):
            targets.get("ort-cuda")


def test_unknown_target_lists_known_ones():
    with pytest.raises(TargetError, match="known: .*ort-cpu"):
        targets.get("nope")
