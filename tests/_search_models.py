"""A small residual CNN with a linear head, built in code: conv 3x3 (kxk), 1x1 skip, residual Add,
Gemm. Big enough for every search family to apply, small enough to time in milliseconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def residual_cnn(path, seed: int = 0, c: int = 16, hw: int = 24, head: int = 64) -> Path:
    rng = np.random.default_rng(seed)

    def w(name, *shape, scale=None):
        fan = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        arr = rng.standard_normal(shape) * (scale if scale is not None else 1 / np.sqrt(fan))
        return numpy_helper.from_array(arr.astype(np.float32), name)

    inits = [w("w0", c, 3, 3, 3), w("b0", c, scale=0.1), w("w1", c, c, 3, 3), w("b1", c, scale=0.1),
             w("w2", c, c, 3, 3), w("b2", c, scale=0.1), w("ws", c, c, 1, 1),
             w("fc1", head, c), w("fc1b", head, scale=0.1), w("fc2", 10, head),
             w("fc2b", 10, scale=0.1)]
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], name="stem"),
        n("Relu", ["c0"], ["r0"], name="stem_relu"),
        n("Conv", ["r0", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        n("Relu", ["c1"], ["r1"], name="relu1"),
        n("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        n("Conv", ["r0", "ws"], ["s"], name="skip"),
        n("Add", ["c2", "s"], ["a"], name="add"),
        n("Relu", ["a"], ["r2"], name="relu2"),
        n("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        n("Flatten", ["p"], ["f"], name="flatten"),
        n("Gemm", ["f", "fc1", "fc1b"], ["h"], transB=1, name="fc1"),
        n("Relu", ["h"], ["hr"], name="fc1_relu"),
        n("Gemm", ["hr", "fc2", "fc2b"], ["y"], transB=1, name="fc2"),
    ]
    graph = helper.make_graph(
        nodes, "residual_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return Path(path)
