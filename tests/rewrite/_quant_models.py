"""Tiny ONNX graphs for the quantization / BN-folding / clean-up / recipe tests (built in code)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _model(nodes, inputs, outputs, inits, name):
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def conv_bn_net(seed: int = 0, hw: int = 16, c: int = 16) -> onnx.ModelProto:
    """x[1,3,hw,hw] -> Conv-BN-Relu -> Conv-BN (+ residual) -> Relu -> GAP -> Gemm(10) -> y."""
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(f(c, 3, 3, 3) * 0.3, "w1"),
             numpy_helper.from_array(f(c, c, 3, 3) * 0.1, "w2"),
             numpy_helper.from_array(f(10, c) * 0.3, "fc_w"),
             numpy_helper.from_array(f(10), "fc_b")]
    for k in (1, 2):
        inits += [numpy_helper.from_array(rng.uniform(0.5, 1.5, c).astype(np.float32), f"g{k}"),
                  numpy_helper.from_array(rng.uniform(-0.2, 0.2, c).astype(np.float32), f"b{k}"),
                  numpy_helper.from_array(rng.uniform(-0.2, 0.2, c).astype(np.float32), f"m{k}"),
                  numpy_helper.from_array(rng.uniform(0.5, 1.5, c).astype(np.float32), f"v{k}")]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "g1", "b1", "m1", "v1"], ["n1"], name="bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("BatchNormalization", ["c2", "g2", "b2", "m2", "v2"], ["n2"], name="bn2"),
        helper.make_node("Add", ["n2", "r1"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["fl"], name="flatten"),
        helper.make_node("Gemm", ["fl", "fc_w", "fc_b"], ["y"], transB=1, name="fc"),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, hw, hw])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits,
                  "conv_bn_net")


def mlp(seed: int = 0, d: int = 64, h: int = 128, batch: int = 4) -> onnx.ModelProto:
    """x[batch,d] -> MatMul+Add -> Relu -> MatMul+Add -> y[batch,10]."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((d, h)) / np.sqrt(d)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(h).astype(np.float32) * 0.1, "b1"),
             numpy_helper.from_array((rng.standard_normal((h, 10)) / np.sqrt(h)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal(10).astype(np.float32) * 0.1, "b2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"], name="mm1"),
             helper.make_node("Add", ["h0", "b1"], ["h1"], name="add1"),
             helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
             helper.make_node("MatMul", ["h2", "w2"], ["o0"], name="mm2"),
             helper.make_node("Add", ["o0", "b2"], ["y"], name="add2")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, d])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])], inits, "mlp")


def messy(seed: int = 0) -> onnx.ModelProto:
    """y = Identity(x) * (c1 + c2) with c1 + c2 foldable, plus a dead branch and an unused
    initializer: what clean-up removes."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "c1"),
             numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "c2"),
             numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "unused")]
    nodes = [helper.make_node("Add", ["c1", "c2"], ["c"], name="const_add"),
             helper.make_node("Identity", ["x"], ["xi"], name="ident"),
             helper.make_node("Mul", ["xi", "c"], ["y"], name="mul"),
             helper.make_node("Exp", ["x"], ["dead"], name="dead_exp")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], inits, "messy")
