"""Tiny ONNX graphs for the OpenVINO tests, built in code (no exporter, seconds to run)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(nodes, inits, inputs, outputs, path, name):
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return str(path)


def small_cnn(path, seed: int = 0) -> str:
    """x[1,3,32,32] -> Conv(16) Relu Conv(32, stride 2) Relu GlobalAveragePool Flatten Gemm(10)."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)

    inits = [numpy_helper.from_array(a, n) for a, n in [
        (w(16, 3, 3, 3), "w1"), (w(16), "b1"), (w(32, 16, 3, 3), "w2"), (w(32), "b2"),
        (w(10, 32), "fc_w"), (w(10), "fc_b")]]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2],
                         name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1, name="fc"),
    ]
    return _save(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], path, "small_cnn")


def attention(path, seq: int = 16, d: int = 32, seed: int = 0) -> str:
    """Single-head self-attention + output projection: MatMul feeding Softmax (transformer-like)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32), n)
             for n in ("wq", "wk", "wv", "wo")]
    inits.append(numpy_helper.from_array(np.array(1 / np.sqrt(d), np.float32), "scale"))
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="v_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1], name="k_t"),
        helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
        helper.make_node("Mul", ["s", "scale"], ["ss"], name="scale_scores"),
        helper.make_node("Softmax", ["ss"], ["a"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["a", "v"], ["ctx"], name="context"),
        helper.make_node("MatMul", ["ctx", "wo"], ["y"], name="o_proj"),
    ]
    return _save(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, seq, d])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, seq, d])], path,
                 "attention")


def det_model(path) -> str:
    """Det: a standard ONNX op that ONNX Runtime runs and OpenVINO's ONNX frontend cannot convert."""
    return _save([helper.make_node("Det", ["x"], ["y"], name="det")], [],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])], path, "det")


def dynamic_rank_reshape(path) -> str:
    """x[2,3,4] -> Relu -> Reshape to a shape given at run time (`shape` of unknown length): ONNX
    Runtime runs it and OpenVINO's frontend converts it, but the output rank is unknown until run
    time, which the OpenVINO CPU plugin refuses when it compiles (its query marks the Reshape)."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu"),
         helper.make_node("Reshape", ["r", "shape"], ["y"], name="to_runtime_shape")],
        "dynamic_rank_reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, ["rank"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])  # rank unknown
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))  # onnx.checker wants a shape for every graph output: the test
    return str(path)  # checks this model by running it on ORT instead
