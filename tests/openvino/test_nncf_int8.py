"""nncf-int8: QDQ ONNX out, runs int8 kernels on OpenVINO, close to fp32, honest notes."""

import sys

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

pytest.importorskip("nncf")

from deploykit.backends import registry as targets
from deploykit.fidelity import cosine
from deploykit.core import ModelRef  # noqa: E402
from deploykit.errors import InputError  # noqa: E402
from deploykit.rewrite import StepContext, apply_step  # noqa: E402
from deploykit.rewrite import nncf_int8 as qn
from ov_models import attention, small_cnn  # noqa: E402


def _batches(shape, n, seed):
    rng = np.random.default_rng(seed)
    return tuple({"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(n))


@pytest.fixture(scope="module")
def cnn_result(tmp_path_factory):
    path = small_cnn(tmp_path_factory.mktemp("nncf") / "cnn.onnx")
    ctx = StepContext(feeds=_batches((1, 3, 32, 32), 1, 0)[0],
                      calibration=_batches((1, 3, 32, 32), 8, 1), calibration_is_synthetic=True)
    return path, apply_step(qn.NncfInt8Pass(qn.Config(), ctx), onnx.load(path))


def test_cnn_gets_qdq_and_an_honest_note(cnn_result):
    _, res = cnn_result
    ops = {n.op_type for n in res.model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    onnx.checker.check_model(res.model)
    assert res.fidelity_kind == "int8" and res.skipped is None
    assert res.details["model_type"] == "default" and res.details["calibration_batches"] == 8
    assert res.details["preset"] == "performance"
    assert any("synthetic" in n for n in res.notes)


def test_cnn_runs_int8_on_openvino_close_to_fp32(cnn_result, tmp_path):
    path, res = cnn_result
    qpath = tmp_path / "cnn_int8.onnx"
    onnx.save(res.model, str(qpath))
    feeds = _batches((1, 3, 32, 32), 1, 99)[0]  # not a calibration batch
    ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    art = targets.get("ov-cpu").compile(ModelRef.from_path(qpath))
    out = art.run(feeds)[0]
    assert cosine(out, ref) >= 0.99
    assert art.fidelity_kind == "int8" and art.check_fidelity(feeds)[1] is None
    assert any("I8" in k or "i8" in k for k in art.exec_types(feeds).values())
    ort_out = ort.InferenceSession(str(qpath), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert cosine(ort_out, ref) >= 0.99  # the same file is a valid ORT QDQ model


def test_transformer_mode_chosen_for_attention(tmp_path):
    path = attention(tmp_path / "attn.onnx")
    model = onnx.load(path)
    assert qn.is_transformer_like(ir.from_proto(model))
    ctx = StepContext(feeds=_batches((1, 16, 32), 1, 0)[0], calibration=_batches((1, 16, 32), 4, 1),
                      calibration_is_synthetic=False)
    res = apply_step(qn.NncfInt8Pass(qn.Config(subset_size=2), ctx), model)
    assert res.details["model_type"] == "transformer" and res.details["calibration_batches"] == 2
    assert res.details["preset"] == "mixed"
    assert not res.notes
    assert "QuantizeLinear" in {n.op_type for n in res.model.graph.node}
    feeds = _batches((1, 16, 32), 1, 5)[0]
    ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    qpath = tmp_path / "attn_int8.onnx"
    onnx.save(res.model, str(qpath))
    out = targets.get("ov-cpu").compile(ModelRef.from_path(qpath)).run(feeds)[0]
    assert cosine(out, ref) >= 0.99


def test_skips_what_it_cannot_or_need_not_quantize(cnn_result):
    _, res = cnn_result
    ctx = StepContext(feeds={})
    again = apply_step(qn.NncfInt8Pass(qn.Config(), ctx), res.model)
    assert again.model is None and "already quantized" in again.skipped
    relu = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "relu",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])]))
    nothing = apply_step(qn.NncfInt8Pass(qn.Config(), ctx), relu)
    assert nothing.model is None and "no Conv/MatMul/Gemm" in nothing.skipped


def test_missing_nncf_is_a_skip_with_install_command(monkeypatch, cnn_result):
    path, _ = cnn_result
    monkeypatch.setitem(sys.modules, "nncf", None)
    res = apply_step(qn.NncfInt8Pass(qn.Config(), StepContext(feeds={})), onnx.load(path))
    assert res.model is None and "pip install 'deploykit[openvino]'" in res.skipped


@pytest.mark.parametrize("kw", [{"preset": "fast"}, {"model_type": "cnn"}, {"subset_size": 0}])
def test_bad_config_is_input_error(kw):
    with pytest.raises(InputError, match="nncf-int8"):
        qn.Config(**kw)


def test_exclude_keeps_named_nodes_float(tmp_path):
    """exclude= (NNCF's IgnoredScope) is what `debug --fix` rebuilds with: the named MatMul keeps
    float weights, the others stay int8, and the recipe parses the list."""
    from deploykit.debug.fix import quantized_nodes, weighted_nodes
    from deploykit.rewrite.recipe import parse_recipe

    path = attention(tmp_path / "attn.onnx")
    ctx = StepContext(feeds=_batches((1, 16, 32), 1, 0)[0], calibration=_batches((1, 16, 32), 4, 1),
                      calibration_is_synthetic=False)
    cfg = parse_recipe("nncf-int8:exclude=o_proj|v_proj")[0].config
    assert cfg.exclude == ("o_proj", "v_proj")
    full = apply_step(qn.NncfInt8Pass(qn.Config(), ctx), onnx.load(path)).model
    res = apply_step(qn.NncfInt8Pass(cfg, ctx), onnx.load(path))
    assert {"o_proj", "v_proj"} <= weighted_nodes(full) & quantized_nodes(full)
    assert not {"o_proj", "v_proj"} & (weighted_nodes(res.model) | quantized_nodes(res.model))
    assert {"q_proj", "k_proj"} <= weighted_nodes(res.model)
    assert res.details["excluded_nodes"] == ["o_proj", "v_proj"]


def test_exclude_of_a_missing_node_is_a_one_line_error(tmp_path):
    from deploykit.errors import DeployKitError

    path = attention(tmp_path / "attn.onnx")
    ctx = StepContext(feeds=_batches((1, 16, 32), 1, 0)[0], calibration=_batches((1, 16, 32), 2, 1),
                      calibration_is_synthetic=False)
    with pytest.raises(DeployKitError, match="nncf-int8 failed") as e:
        apply_step(qn.NncfInt8Pass(qn.Config(exclude=("no_such_node",)), ctx), onnx.load(path))
    assert "\n" not in str(e.value)
