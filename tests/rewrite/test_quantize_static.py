import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from _quant_models import conv_bn_net, messy
from deploykit.errors import InputError
from deploykit.rewrite.recipe import make_step
from deploykit.rewrite import StepContext, apply_step
from deploykit.rewrite.quantize_static import QuantizeStaticPass
from deploykit.fidelity import compare, run_ort


def _ctx(tmp_path, synthetic=True, n=4):
    rng = np.random.default_rng(0)
    batch = lambda: {"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}  # noqa: E731
    return StepContext(feeds=batch(), calibration=tuple(batch() for _ in range(n)),
                       calibration_is_synthetic=synthetic, workdir=tmp_path)


def _cfg(**kw):
    return make_step("quantize-static", kw).config


def _inits(model):
    return {t.name: t for t in model.graph.initializer}


def _producer(model):
    return {o: n for n in model.graph.node for o in n.output}


def test_static_qdq_trio_u8s8_per_channel(tmp_path):
    model, ctx = conv_bn_net(), _ctx(tmp_path)
    res = apply_step(QuantizeStaticPass(_cfg(), ctx), model)
    q = res.model
    ops = {n.op_type for n in q.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    prod, inits = _producer(q), _inits(q)
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    for conv in convs:  # activations and weights both arrive through DequantizeLinear
        assert prod[conv.input[0]].op_type == "DequantizeLinear"
        wdq = prod[conv.input[1]]
        assert wdq.op_type == "DequantizeLinear"
        w = inits[wdq.input[0]]
        assert w.data_type == onnx.TensorProto.INT8  # S8 weights
        assert numpy_helper.to_array(inits[wdq.input[1]]).shape == (w.dims[0],)  # per channel
    act_q = [n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    assert act_q and all(inits[n.input[2]].data_type == onnx.TensorProto.UINT8 for n in act_q)
    fid = compare(run_ort(model, ctx.feeds), run_ort(q, ctx.feeds))
    assert fid.cosine > 0.999 and fid.max_rel > 0  # really quantized, still close
    onnx.checker.check_model(q, full_check=True)
    assert res.fidelity_kind == "int8" and any("synthetic" in n for n in res.notes)


def test_static_per_tensor_s8s8(tmp_path):
    res = apply_step(QuantizeStaticPass(_cfg(per_channel="false", activation_type="int8"),
                                        _ctx(tmp_path)), conv_bn_net())
    q, prod, inits = res.model, _producer(res.model), _inits(res.model)
    conv = next(n for n in q.graph.node if n.op_type == "Conv")
    assert numpy_helper.to_array(inits[prod[conv.input[1]].input[1]]).shape == ()
    act_q = [n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    assert act_q and all(inits[n.input[2]].data_type == onnx.TensorProto.INT8 for n in act_q)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_static_calibration_methods(tmp_path, method):
    model, ctx = conv_bn_net(), _ctx(tmp_path, synthetic=False, n=2)
    res = apply_step(QuantizeStaticPass(_cfg(method=method), ctx), model)
    assert res.details["method"] == method and not res.notes
    assert compare(run_ort(model, ctx.feeds), run_ort(res.model, ctx.feeds)).cosine > 0.99


def test_static_sensitive_nodes_kept_in_fp32_until_target(tmp_path):
    model, ctx = conv_bn_net(), _ctx(tmp_path)
    model.graph.node[3].name = "block/conv2"  # exported names hold '/'
    target = 0.99998
    res = apply_step(QuantizeStaticPass(_cfg(target_cosine=str(target)), ctx), model)
    d = res.details
    assert d["cosine_all_int8"] < target <= d["cosine_vs_float"]
    assert d["excluded_nodes"] and set(d["excluded_nodes"]) <= {"conv1", "block/conv2", "fc"}
    assert list(d["sensitivity"])[0] == d["excluded_nodes"][0]  # worst node first
    inits = _inits(res.model)
    for n in res.model.graph.node:  # excluded nodes keep float weights
        if n.name in d["excluded_nodes"]:
            assert inits[n.input[1]].data_type == onnx.TensorProto.FLOAT


def test_static_skips_quantized_and_op_free_models(tmp_path):
    ctx = _ctx(tmp_path)
    q = apply_step(QuantizeStaticPass(_cfg(), ctx), conv_bn_net()).model
    res = apply_step(QuantizeStaticPass(_cfg(), ctx), q)
    assert res.model is None and res.skipped.startswith("already quantized")
    res = apply_step(QuantizeStaticPass(_cfg(), StepContext(
        feeds={"x": np.ones((4, 8), np.float32)}, workdir=tmp_path)), messy())
    assert res.model is None and "to quantize" in res.skipped


@pytest.mark.parametrize("kw", [{"method": "kl"}, {"activation_type": "int4"},
                                {"target_cosine": "1.5"}, {"percentile": "50"}])
def test_static_bad_config(kw):
    with pytest.raises(InputError, match="quantize-static"):
        _cfg(**kw)


def test_preprocess_leaves_nothing_in_the_working_directory(tmp_path, monkeypatch):
    # an op ORT's symbolic shape inference does not know: it saves sym_shape_infer_temp.onnx
    # into the working directory before raising "Incomplete symbolic shape inference"
    import onnx
    from onnx import TensorProto, helper

    from deploykit.rewrite.quantize_static import preprocess

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph([helper.make_node("Foo", ["x"], ["t"], domain="com.example"),
                           helper.make_node("Relu", ["t"], ["y"])], "g", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                            helper.make_opsetid("com.example", 1)])
    (tmp_path / "in").mkdir()
    (tmp_path / "work").mkdir()
    (tmp_path / "cwd").mkdir()
    onnx.save(m, tmp_path / "in" / "m.onnx")
    monkeypatch.chdir(tmp_path / "cwd")
    note = preprocess(tmp_path / "in" / "m.onnx", tmp_path / "work" / "pre.onnx")
    assert note is None or note.startswith("quant_pre_process failed")
    assert list((tmp_path / "cwd").iterdir()) == []
    assert [p.name for p in (tmp_path / "in").iterdir()] == ["m.onnx"]


def test_target_cosine_can_keep_a_non_compute_node_in_fp32(tmp_path):
    """An Add of a mask input (a few -1e4 entries, as attention masks hold) ruins its int8
    range: the sensitivity search ranks every node ORT quantized, so it keeps that Add, not
    only MatMuls, in fp32."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((32, 64)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((64, 16)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Add", ["r", "m"], ["rm"], name="mask_add"),
             helper.make_node("Tanh", ["rm"], ["t"], name="tanh"),
             helper.make_node("MatMul", ["t", "w2"], ["y"], name="mm2")]
    graph = helper.make_graph(nodes, "masked", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 32]),
        helper.make_tensor_value_info("m", TensorProto.FLOAT, [4, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    mask = np.zeros((4, 64), np.float32)
    mask[:, :4] = -1e4

    def batch():
        return {"x": (0.2 * rng.standard_normal((4, 32))).astype(np.float32), "m": mask}

    ctx = StepContext(feeds=batch(), calibration=tuple(batch() for _ in range(4)),
                      workdir=tmp_path)
    res = apply_step(QuantizeStaticPass(_cfg(target_cosine="0.999"), ctx), model)
    d = res.details
    assert d["cosine_all_int8"] < 0.99 and d["cosine_vs_float"] >= 0.999
    assert "mask_add" in d["sensitivity"] and "mask_add" in d["excluded_nodes"]
