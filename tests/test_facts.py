"""FLOPs/MACs and weight facts against hand-computed values for known layers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploykit.measure.facts import model_facts


def _model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                                       for n, s in inputs],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                           for n in outputs], list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _w(name, *shape, dtype=np.float32):
    return numpy_helper.from_array(np.ones(shape, dtype=dtype), name)


def _node(facts, name):
    return next(n for n in facts["per_node"] if n["name"] == name)


def test_conv3x3_64_to_64_on_56x56():
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 4, name="c")],
               [("x", [1, 64, 56, 56])], ["y"], [_w("w", 64, 64, 3, 3)])
    f = model_facts(m)
    assert f["macs"] == 64 * 64 * 9 * 56 * 56
    assert f["flops"] == 2 * 64 * 64 * 9 * 56 * 56
    assert f["parameters"] == 64 * 64 * 9 and f["weight_bytes"] == 4 * 64 * 64 * 9


def test_conv_bias_stride_and_groups():
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1] * 4, strides=[2, 2],
                              name="c"),
             helper.make_node("Conv", ["y", "dw"], ["z"], pads=[1] * 4, group=32, name="dw")]
    m = _model(nodes, [("x", [2, 16, 32, 32])], ["z"],
               [_w("w", 32, 16, 3, 3), _w("b", 32), _w("dw", 32, 1, 3, 3)])
    f = model_facts(m)
    out = 2 * 32 * 16 * 16  # N * Cout * 16 * 16 after stride 2
    assert _node(f, "c")["macs"] == out * 16 * 9
    assert _node(f, "c")["flops"] == 2 * out * 16 * 9 + out  # + bias adds
    assert _node(f, "dw")["macs"] == out * 1 * 9  # depthwise: one input channel per group


def test_conv_transpose():
    m = _model([helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], name="t")],
               [("x", [1, 16, 8, 8])], ["y"], [_w("w", 16, 8, 4, 4)])
    assert model_facts(m)["macs"] == 16 * 8 * 8 * 8 * 4 * 4  # every input pixel x Cout x k x k


def test_gemm_trans_and_bias():
    m = _model([helper.make_node("Gemm", ["a", "b", "c"], ["y"], transA=1, transB=1, name="g")],
               [("a", [32, 4])], ["y"], [_w("b", 16, 32), _w("c", 16)])
    f = model_facts(m)
    assert f["macs"] == 4 * 16 * 32 and f["flops"] == 2 * 4 * 16 * 32 + 4 * 16


def test_attention_matmuls_with_two_activations_and_softmax():
    # scores = Q @ K^T ; probs = softmax(scores) ; out = probs @ V   (B=2, H=4, S=10, D=8)
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2], name="tr"),
             helper.make_node("MatMul", ["q", "kt"], ["s"], name="qk"),
             helper.make_node("Softmax", ["s"], ["p"], axis=-1, name="sm"),
             helper.make_node("MatMul", ["p", "v"], ["o"], name="pv")]
    shp = [2, 4, 10, 8]
    m = _model(nodes, [("q", shp), ("k", shp), ("v", shp)], ["o"])
    f = model_facts(m)
    assert _node(f, "qk")["macs"] == 2 * 4 * 10 * 10 * 8
    assert _node(f, "pv")["macs"] == 2 * 4 * 10 * 8 * 10
    assert _node(f, "sm")["flops"] == 5 * 2 * 4 * 10 * 10
    assert "tr" not in {n["name"] for n in f["per_node"]}  # data movement is free
    assert f["parameters"] == 0


def test_batched_broadcast_matmul_and_einsum():
    nodes = [helper.make_node("MatMul", ["a", "w"], ["y"], name="mm"),
             helper.make_node("Einsum", ["q", "k"], ["s"], equation="bhqd,bhkd->bhqk", name="es")]
    m = _model(nodes, [("a", [3, 5, 7]), ("q", [2, 4, 6, 8]), ("k", [2, 4, 9, 8])], ["y", "s"],
               [_w("w", 7, 2)])
    f = model_facts(m)
    assert _node(f, "mm")["macs"] == 3 * 5 * 2 * 7
    assert _node(f, "es")["macs"] == 2 * 4 * 6 * 9 * 8


def test_integer_and_qdq_ops_are_flagged_int8():
    i8 = lambda n, *s: _w(n, *s, dtype=np.int8)  # noqa: E731
    nodes = [helper.make_node("MatMulInteger", ["xq", "wq"], ["y"], name="mmi"),
             helper.make_node("DequantizeLinear", ["cq", "s"], ["xd"], name="dq_x"),
             helper.make_node("DequantizeLinear", ["cw", "s"], ["wd"], name="dq_w"),
             helper.make_node("Conv", ["xd", "wd"], ["z"], name="qdq_conv")]
    g = helper.make_graph(
        nodes, "q", [helper.make_tensor_value_info("xq", TensorProto.UINT8, [4, 64]),
                     helper.make_tensor_value_info("cq", TensorProto.INT8, [1, 8, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, None),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [i8("wq", 64, 32), i8("cw", 16, 8, 3, 3), numpy_helper.from_array(np.float32(0.1), "s")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    f = model_facts(m)
    assert _node(f, "mmi")["int8"] and _node(f, "mmi")["macs"] == 4 * 32 * 64
    assert _node(f, "qdq_conv")["int8"] and _node(f, "qdq_conv")["macs"] == 16 * 8 * 8 * 8 * 9
    assert f["int8_macs"] == f["macs"]
    # int8 weights count 1 byte each; the scalar scale is not a parameter
    assert f["parameters"] == 64 * 32 + 16 * 8 * 9 and f["weight_bytes"] == f["parameters"]


def test_symbolic_dims_are_pinned_and_reported(mlp_onnx):
    m = onnx.load(str(mlp_onnx))
    one, eight = model_facts(m), model_facts(m, dim_values={"batch": 8})
    assert one["assumed_dims"] == {"batch": 1} and eight["assumed_dims"] == {"batch": 8}
    assert one["macs"] == 16 * 32 + 32 * 4
    assert eight["flops"] == 8 * one["flops"]
    assert one["parameters"] == 16 * 32 + 32 + 32 * 4 + 4
    assert not one["uncounted_nodes"]


def test_unknown_shapes_are_listed_not_guessed():
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"], name="rs"),
             helper.make_node("MatMul", ["r", "w"], ["y"], name="mm")]
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8]),
           helper.make_tensor_value_info("shape", TensorProto.INT64, [2])]
    g = helper.make_graph(nodes, "g", ins, [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                          None)], [_w("w", 8, 3)])
    f = model_facts(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    assert f["uncounted_nodes"] == ["mm"] and f["macs"] == 0


def test_exported_tinyresnet_macs_match_torch_layer_arithmetic(tinyresnet_export):
    """Conv/Linear MACs from the ONNX graph equal those from the torch module's own shapes."""
    import torch

    from deploykit.examples import tinyresnet

    model, total = tinyresnet.build(), 0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, torch.nn.Conv2d):
            total += out.numel() * mod.in_channels // mod.groups * np.prod(mod.kernel_size)
        elif isinstance(mod, torch.nn.Linear):
            total += out.numel() * mod.in_features

    for mod in model.modules():
        mod.register_forward_hook(hook)
    with torch.no_grad():
        model(*tinyresnet.example_inputs())
    assert tinyresnet_export.facts["macs"] == total
    assert tinyresnet_export.facts["assumed_dims"] == {"batch": 1}


@pytest.mark.parametrize("op,cost", [("Relu", 1), ("Sigmoid", 4), ("LayerNormalization", 5)])
def test_elementwise_costs(op, cost):
    ins = ["x", "g"] if op == "LayerNormalization" else ["x"]
    inits = [_w("g", 10)] if op == "LayerNormalization" else []
    m = _model([helper.make_node(op, ins, ["y"], name="n")], [("x", [3, 10])], ["y"], inits)
    assert model_facts(m)["flops"] == cost * 30


def test_onnx_attention_op_4d_and_3d():
    b, h, s, l_, e = 2, 4, 6, 9, 8
    four = _model([helper.make_node("Attention", ["q", "k", "v"], ["o"], name="a")],
                  [("q", [b, h, s, e]), ("k", [b, h, l_, e]), ("v", [b, h, l_, e])], ["o"],
                  opset=23)
    three = _model([helper.make_node("Attention", ["q", "k", "v"], ["o"], q_num_heads=h,
                                     kv_num_heads=h, name="a")],
                   [("q", [b, s, h * e]), ("k", [b, l_, h * e]), ("v", [b, l_, h * e])], ["o"],
                   opset=23)
    for m in (four, three):
        f = model_facts(m)
        assert f["macs"] == b * h * s * l_ * 2 * e  # Q K^T and P V
        assert f["flops"] == 2 * f["macs"] + 5 * b * h * s * l_


def test_shapes_that_need_values_are_folded(monkeypatch):
    """Range over a Shape (how exported attention masks are built) defeats ONNX shape
    inference; constant folding of the pinned model recovers the shapes."""
    import deploykit.measure.facts as facts

    i64 = lambda n, v: numpy_helper.from_array(np.array(v, np.int64), n)  # noqa: E731
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0, name="gather"),
             helper.make_node("Range", ["zero", "n", "step"], ["r"], name="range"),
             helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Unsqueeze", ["rf", "axes"], ["col"], name="unsqueeze"),
             helper.make_node("MatMul", ["col", "w"], ["z"], name="mm")]
    m = _model(nodes, [("x", ["batch", 8])], ["z"],
               [i64("zero", 0), i64("step", 1), i64("axes", [1]), _w("w", 1, 4)])
    f = model_facts(m, dim_values={"batch": 3})
    assert f["uncounted_nodes"] == [] and _node(f, "mm")["macs"] == 3 * 4
    monkeypatch.setattr(facts, "_shapes_by_folding", lambda m: {})
    assert model_facts(m, dim_values={"batch": 3})["uncounted_nodes"] == ["mm"]
