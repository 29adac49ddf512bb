"""ov-cpu / ov-cpu-bf16: precision is explicit and recorded, outputs match ORT, per-op schema,
and the failure modes a user meets (no openvino, an op OpenVINO cannot convert)."""

import json
import sys

import numpy as np
import onnxruntime as ort
import pytest

pytest.importorskip("openvino")

from deploykit.backends import registry as targets
from deploykit.backends.openvino import INSTALL_HINT, OpenVinoArtifact  # noqa: E402
from deploykit.fidelity import cosine
from deploykit.cli import main  # noqa: E402
from deploykit.core import ModelRef, OpTime, TimingPlan  # noqa: E402
from deploykit.errors import TargetError  # noqa: E402
from deploykit.fidelity import run_ort
from ov_models import det_model, dynamic_rank_reshape, small_cnn  # noqa: E402

QUICK = TimingPlan(warmup_min_s=0.05, warmup_max_s=0.2, min_samples=10, max_time_s=0.3)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    return ModelRef.from_path(small_cnn(tmp_path_factory.mktemp("ov") / "cnn.onnx"))


@pytest.fixture(scope="module")
def feeds():
    return {"x": np.random.default_rng(7).standard_normal((1, 3, 32, 32)).astype(np.float32)}


@pytest.fixture(scope="module")
def ort_ref(cnn, feeds):
    return ort.InferenceSession(str(cnn.path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _rel_err(a, ref):
    return float(np.abs(a - ref).max() / np.abs(ref).max())


def test_ov_cpu_is_fp32_matches_ort_and_says_so(cnn, feeds, ort_ref):
    art = targets.get("ov-cpu").compile(cnn)
    assert isinstance(art, OpenVinoArtifact) and art.session_create_ms > 0
    assert [s.name for s in art.inputs] == ["x"] and art.outputs[0].shape == (1, 10)
    assert _rel_err(art.run(feeds)[0], ort_ref) < 1e-4
    assert art.precision == "f32" and "precision=f32" in art.labels and art.fidelity_kind == "fp32"
    fid, reason = art.check_fidelity(feeds)
    assert reason is None and fid.max_rel < 1e-4
    kernels = art.exec_types(feeds).values()  # the kernels OpenVINO really ran
    assert kernels and not any("bf16" in k for k in kernels)
    report = art.target.profile(art, feeds, QUICK, per_op=False)
    assert report.env["ov_inference_precision"] == "f32" and report.env["ov_num_threads"] == 2
    assert report.env["ov_num_streams"] == 1 and "precision=f32" in report.labels
    assert report.target == "ov-cpu" and len(report.samples_ms) >= 10
    m = report.memory  # memory per phase on OpenVINO too (measure/memory.py)
    assert m["load_peak_bytes"] > m["rss_before_bytes"]  # the CPU plugin compiled something
    assert m["steady_peak_bytes"] > 0 and m["weight_bytes"] > 0


def test_timed_runner_computes_the_same_outputs(cnn, feeds, ort_ref):
    art = targets.get("ov-cpu").compile(cnn)
    run = art.timed_runner(feeds)
    outputs = run()
    assert _rel_err(outputs[art.compiled.output(0)], ort_ref) < 1e-4


@pytest.mark.bf16
def test_bf16_target_is_labelled_and_differs(cnn, feeds, ort_ref):
    t = targets.get("ov-cpu-bf16", require_available=False)
    if t.unavailable_reason():  # a CPU without bf16: the target says so and refuses to start
        assert "bf16" in t.unavailable_reason()
        with pytest.raises(TargetError, match="unavailable"):
            targets.get("ov-cpu-bf16")
        pytest.skip(t.unavailable_reason())
    art = t.compile(cnn)
    out = art.run(feeds)[0]
    assert art.precision == "bf16" and "precision=bf16" in art.labels
    assert art.fidelity_kind == "bf16"
    assert any("bf16" in k for k in art.exec_types(feeds).values())
    assert _rel_err(out, ort_ref) > 1e-4  # really computed in bf16 ...
    assert cosine(out, ort_ref) >= 0.99  # ... and still close by the bf16 fidelity measure
    fid, reason = art.check_fidelity(feeds)
    assert reason is None and fid.cosine >= 0.99


def test_fidelity_check_fails_on_wrong_outputs(cnn, feeds, monkeypatch):
    art = targets.get("ov-cpu").compile(cnn)
    monkeypatch.setattr(art, "run", lambda f: [np.full((1, 10), 0.5, np.float32)])
    fid, reason = art.check_fidelity(feeds)
    assert reason and "fp32 tolerance" in reason


def test_per_op_breakdown_uses_shared_schema(cnn, feeds, tmp_path):
    art = targets.get("ov-cpu").compile(cnn)
    trace = tmp_path / "ov_trace.json"
    ops = art.per_op(feeds, runs=5, trace_path=str(trace))
    assert ops and all(isinstance(o, OpTime) for o in ops)
    assert abs(sum(o.share for o in ops) - 1.0) < 1e-6
    assert all(o.total_ms >= 0 for o in ops) and ops == sorted(ops, key=lambda o: -o.total_ms)
    assert "Convolution" in {o.op_type for o in ops}
    assert any("conv2" in o.name for o in ops)
    data = json.loads(trace.read_text())
    assert data["backend"] == "openvino" and data["runs"] == 5
    assert {r["name"] for r in data["nodes"]} == {o.name for o in ops}
    assert all("f32" in r["exec_type"] or r["exec_type"] == "undef" for r in data["nodes"])


def test_unknown_precision_is_one_line_error():
    with pytest.raises(TargetError, match="precision must be one of f32, bf16"):
        targets.get("ov-cpu", precision="fp16")


def test_missing_openvino_is_unavailable_with_install_command(monkeypatch, cnn):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now fails
    t = targets.get("ov-cpu", require_available=False)
    assert t.unavailable_reason() == INSTALL_HINT
    with pytest.raises(TargetError, match=r"pip install 'deploykit\[openvino\]'"):
        targets.get("ov-cpu")
    with pytest.raises(TargetError, match="openvino not installed"):
        t.compile(cnn)


def test_op_openvino_cannot_convert_is_named(tmp_path):
    model = ModelRef.from_path(det_model(tmp_path / "det.onnx"))
    with pytest.raises(TargetError) as e:
        targets.get("ov-cpu").compile(model)
    msg = str(e.value)
    assert "\n" not in msg and "Det" in msg and "det.onnx" in msg


def test_op_the_cpu_plugin_cannot_run_is_named(tmp_path):
    """A real refusal of the CPU plugin (not an invented error): a Reshape whose output rank is
    known only at run time converts, ORT runs it, and OpenVINO's CPU plugin will not compile it."""
    path = dynamic_rank_reshape(tmp_path / "dynrank.onnx")
    feeds = {"x": np.ones((2, 3, 4), np.float32), "shape": np.array([4, 6], np.int64)}
    assert run_ort(path, feeds)[0].shape == (4, 6)  # a valid model that ORT runs
    with pytest.raises(TargetError) as e:
        targets.get("ov-cpu").compile(ModelRef.from_path(path))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("ov-cpu cannot compile dynrank.onnx: ")
    # (OpenVINO's frontend names the node after its output tensor, y)
    assert msg.endswith("the OpenVINO CPU plugin cannot run Reshape 'y'"), msg


def test_cli_exits_2_with_one_line_naming_the_op(tmp_path, capsys):
    path = det_model(tmp_path / "det.onnx")
    assert main(["profile", path, "--target", "ov-cpu", "--no-store", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Det" in err and err.startswith("deploykit: error:")


def test_int64_inputs_of_numpy_longlong_type_run(tmp_path):
    """np.longlong is int64 to numpy but not to OpenVINO's binding; ORT hands such arrays back
    (the search's layer table feeds captured tensors to units): run and time must accept them."""
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Cast", ["ids"], ["y"], to=TensorProto.FLOAT)], "g",
                          [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "cast.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    ids = np.arange(4, dtype=np.longlong).reshape(1, 4)
    assert ids.dtype.char == "q"
    t = targets.get("ov-cpu")
    art = t.compile(ModelRef.from_path(path))
    assert art.run({"ids": ids})[0].tolist() == [[0.0, 1.0, 2.0, 3.0]]
    plan = TimingPlan(warmup_min_s=0.01, warmup_max_s=0.02, target_rel_ci=0.5, min_samples=3,
                      max_time_s=0.05, block_s=0.01)
    assert t.profile(art, {"ids": ids}, plan, per_op=False).median_ms > 0
