"""Tiny graphs for the debugger's tests, built in code: a conv chain, the same chain with one
layer broken, and a MatMul chain whose one layer a bf16 runtime cannot compute."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(nodes, x_shape, out, out_shape, inits, path):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         x_shape)],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def conv_chain(path, broken: int | None = None, n: int = 5, c: int = 8, hw: int = 12,
               seed: int = 0):
    """x[1,3,hw,hw] -> (Conv k3 -> Relu) x n -> GlobalAveragePool -> Flatten -> Gemm(10) -> y.
    `broken`: that conv's weights get heavy noise (a planted broken layer)."""
    rng = np.random.default_rng(seed)
    nodes, inits, x, cin = [], [], "x", 3
    for i in range(n):
        w = (rng.standard_normal((c, cin, 3, 3)) / np.sqrt(cin * 9)).astype(np.float32)
        if i == broken:
            w = w + np.random.default_rng(99).standard_normal(w.shape).astype(np.float32) \
                * np.abs(w).mean() * 1.5
        inits += [numpy_helper.from_array(w, f"w{i}"),
                  numpy_helper.from_array((rng.standard_normal(c) * 0.1).astype(np.float32),
                                          f"b{i}")]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1] * 4,
                                   name=f"conv{i}"),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        x, cin = f"r{i}", c
    inits += [numpy_helper.from_array((rng.standard_normal((10, c)) * 0.3).astype(np.float32),
                                      "fc_w"),
              numpy_helper.from_array(np.zeros(10, np.float32), "fc_b")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["p"], name="pool"),
              helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
              helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1, name="fc")]
    return _save(nodes, [1, 3, hw, hw], "y", [1, 10], inits, path)


def cancelling_chain(path, d: int = 64, rows: int = 4, seed: int = 0):
    """(MatMul -> Tanh) x 5; before mm2 an Add shifts the activations by 256 and mm2's weight
    columns sum to zero, so exact arithmetic cancels the shift while bf16 (8-bit mantissa: a
    step of 2 at 256) loses the signal in mm2 alone."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(5):
        w = (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)
        if i == 2:
            inits.append(numpy_helper.from_array(np.full(d, 256.0, np.float32), "shift"))
            nodes.append(helper.make_node("Add", [x, "shift"], ["a2"], name="shift2"))
            x, w = "a2", w - w.mean(0, keepdims=True)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"mm{i}"),
                  helper.make_node("Tanh", [f"m{i}"], [f"t{i}"], name=f"tanh{i}")]
        x = f"t{i}"
    return _save(nodes, [rows, d], x, [rows, d], inits, path)


def data(path, n: int = 6, shape=(1, 3, 12, 12), seed: int = 1):
    """An .npz with n samples of x (leading sample axis: one batch per sample)."""
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.standard_normal((n, *shape)).astype(np.float32))
    return path
