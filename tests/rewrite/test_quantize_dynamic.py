import numpy as np
import onnx
import pytest

from _quant_models import conv_bn_net, mlp
from deploykit.errors import InputError
from deploykit.rewrite.recipe import make_step
from deploykit.rewrite import StepContext, apply_step
from deploykit.rewrite.quantize_dynamic import QuantizeDynamicPass
from deploykit.fidelity import compare, run_ort


def _cfg(**kw):
    return make_step("quantize-dynamic", kw).config


def test_dynamic_trio_matmul(tmp_path):
    model = mlp()
    ctx = StepContext(feeds={"x": np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)},
                      workdir=tmp_path)
    res = apply_step(QuantizeDynamicPass(_cfg(), ctx), model)
    ops = [n.op_type for n in res.model.graph.node]
    assert ops.count("MatMulInteger") == 2 and "MatMul" not in ops
    assert res.details["ops"]["MatMulInteger"] == 2
    fid = compare(run_ort(model, ctx.feeds), run_ort(res.model, ctx.feeds))
    assert 0 < fid.max_rel and fid.cosine > 0.999
    onnx.checker.check_model(res.model, full_check=True)


def test_dynamic_leaves_conv_alone_unless_asked(tmp_path):
    ctx = StepContext(feeds={"x": np.ones((1, 3, 16, 16), np.float32)}, workdir=tmp_path)
    res = apply_step(QuantizeDynamicPass(_cfg(), ctx), conv_bn_net())
    ops = [n.op_type for n in res.model.graph.node]
    assert "Conv" in ops and "ConvInteger" not in ops and not res.notes
    res = apply_step(QuantizeDynamicPass(_cfg(include_conv="true"), ctx), conv_bn_net())
    assert "ConvInteger" in [n.op_type for n in res.model.graph.node]
    assert any("ConvInteger" in n and "quantize-static" in n for n in res.notes)


def test_dynamic_skips_already_quantized(tmp_path):
    ctx = StepContext(feeds={"x": np.ones((4, 64), np.float32)}, workdir=tmp_path)
    q = apply_step(QuantizeDynamicPass(_cfg(), ctx), mlp()).model
    res = apply_step(QuantizeDynamicPass(_cfg(), ctx), q)
    assert res.model is None and "already quantized" in res.skipped


def test_dynamic_keeps_sensitive_matmuls_in_fp32_until_target_cosine(tmp_path):
    model = mlp()
    rng = np.random.default_rng(0)
    ctx = StepContext(feeds={"x": rng.standard_normal((4, 64)).astype(np.float32)},
                      calibration=tuple({"x": rng.standard_normal((4, 64)).astype(np.float32)}
                                        for _ in range(2)), workdir=tmp_path)
    plain = apply_step(QuantizeDynamicPass(_cfg(), ctx), model)
    all_int8 = min(compare(run_ort(model, b), run_ort(plain.model, b)).cosine
                   for b in (ctx.feeds, *ctx.calibration))  # what the recipe runner checks too
    target = 1 - (1 - all_int8) * 0.6  # out of reach with both MatMuls in int8
    res = apply_step(QuantizeDynamicPass(_cfg(target_cosine=str(target)), ctx), model)
    d = res.details
    assert d["cosine_all_int8"] == pytest.approx(all_int8)
    assert d["cosine_all_int8"] < target <= d["cosine_vs_float"]
    assert d["excluded_nodes"] and list(d["sensitivity"])[0] == d["excluded_nodes"][0]
    ops = [n.op_type for n in res.model.graph.node]
    assert ops.count("MatMul") == len(d["excluded_nodes"]) == 1  # the worst one stays float
    assert ops.count("MatMulInteger") == 1 and not res.notes


@pytest.mark.parametrize("kw", [{"weight_type": "fp8"}, {"target_cosine": "1.5"},
                                {"max_excluded": "-1"}])
def test_dynamic_bad_config(kw):
    with pytest.raises(InputError, match="quantize-dynamic"):
        _cfg(**kw)


def test_dynamic_excludes_a_gemm_by_its_own_name(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32), "w2")]
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    ctx = StepContext(feeds={"x": rng.standard_normal((4, 64)).astype(np.float32)},
                      workdir=tmp_path)
    res = apply_step(QuantizeDynamicPass(_cfg(exclude="fc", preprocess="false"), ctx), model)
    nodes = {n.op_type: n for n in res.model.graph.node}
    assert [n.op_type for n in res.model.graph.node].count("MatMulInteger") == 1
    assert nodes["MatMul"].input[1] == "w1"  # the Gemm's weight stays float
    assert res.details["excluded_nodes"] == ["fc_MatMul"]
