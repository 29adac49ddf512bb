"""Tiny ONNX graphs for the TVM tests, built with onnx.helper (no exporter, seconds to build)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(nodes, name, inputs, outputs, inits, path, opset=17):
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def cnn(path, seed: int = 0):
    """x[1,3,32,32] -> Conv+Relu -> Conv(stride 2)+Relu -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    w = lambda *s: rng.standard_normal(s).astype(np.float32) * 0.2  # noqa: E731
    inits = [numpy_helper.from_array(w(8, 3, 3, 3), "w1"), numpy_helper.from_array(w(8), "b1"),
             numpy_helper.from_array(w(16, 8, 3, 3), "w2"),
             numpy_helper.from_array(w(10, 16), "fc_w"), numpy_helper.from_array(w(10), "fc_b")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4, name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1] * 4, strides=[2, 2],
                              name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1, name="fc")]
    return _save(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             [1, 3, 32, 32])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits, path)


def transformer_block(path, seed: int = 0, seq: int = 16, dim: int = 32, heads: int = 2):
    """A pre-norm encoder block: LayerNorm -> 2-head self-attention -> residual -> LayerNorm ->
    MLP(Gelu) -> residual, on x[1,seq,dim]."""
    rng = np.random.default_rng(seed)
    hd = dim // heads
    w = lambda *s: (rng.standard_normal(s) / np.sqrt(s[0])).astype(np.float32)  # noqa: E731
    arr = numpy_helper.from_array
    inits = [arr(np.ones(dim, np.float32), "g1"), arr(np.zeros(dim, np.float32), "be1"),
             arr(np.ones(dim, np.float32), "g2"), arr(np.zeros(dim, np.float32), "be2"),
             arr(w(dim, dim), "wq"), arr(w(dim, dim), "wk"), arr(w(dim, dim), "wv"),
             arr(w(dim, dim), "wo"), arr(w(dim, 4 * dim), "w1"), arr(w(4 * dim, dim), "w2"),
             arr(np.array([1, seq, heads, hd], np.int64), "split_shape"),
             arr(np.array([1, seq, dim], np.int64), "merge_shape"),
             arr(np.array(1.0 / np.sqrt(hd), np.float32), "scale")]
    n = helper.make_node
    nodes = [n("LayerNormalization", ["x", "g1", "be1"], ["h"], axis=-1, name="ln1")]
    for t in "qkv":
        nodes += [n("MatMul", ["h", f"w{t}"], [f"{t}0"], name=f"proj_{t}"),
                  n("Reshape", [f"{t}0", "split_shape"], [f"{t}1"], name=f"split_{t}"),
                  n("Transpose", [f"{t}1"], [f"{t}2"],
                    perm=[0, 2, 3, 1] if t == "k" else [0, 2, 1, 3], name=f"heads_{t}")]
    nodes += [n("MatMul", ["q2", "k2"], ["s0"], name="scores"),
              n("Mul", ["s0", "scale"], ["s1"], name="scale_scores"),
              n("Softmax", ["s1"], ["a"], axis=-1, name="softmax"),
              n("MatMul", ["a", "v2"], ["o0"], name="attend"),
              n("Transpose", ["o0"], ["o1"], perm=[0, 2, 1, 3], name="merge_heads"),
              n("Reshape", ["o1", "merge_shape"], ["o2"], name="merge"),
              n("MatMul", ["o2", "wo"], ["o3"], name="proj_o"),
              n("Add", ["x", "o3"], ["r1"], name="residual1"),
              n("LayerNormalization", ["r1", "g2", "be2"], ["h2"], axis=-1, name="ln2"),
              n("MatMul", ["h2", "w1"], ["m0"], name="fc1"),
              n("Gelu", ["m0"], ["m1"], name="gelu"),
              n("MatMul", ["m1", "w2"], ["m2"], name="fc2"),
              n("Add", ["r1", "m2"], ["y"], name="residual2")]
    return _save(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                               [1, seq, dim])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, seq, dim])], inits,
                 path, opset=20)


def dense_relu(path, seed: int = 0, n_in: int = 64, n_out: int = 64):
    """x[1,n_in] -> MatMul -> Relu: one kernel, the cheapest thing MetaSchedule can tune."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((n_in, n_out)).astype(np.float32), "w")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="dense"),
             helper.make_node("Relu", ["m"], ["y"], name="relu")]
    return _save(nodes, "dense_relu",
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n_in])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n_out])], inits, path)


def with_unsupported_op(path):
    """Relu -> Celu: ORT runs it, TVM's ONNX frontend has no converter for Celu."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Celu", ["r"], ["y"], name="the_celu")]
    return _save(nodes, "celu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [], path)
