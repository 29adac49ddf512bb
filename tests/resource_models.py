"""Models with planted memory and cold-start costs (tests/test_resource_gate.py)."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROWS, DIM = 8, 64


def _save(path, nodes, inits):
    graph = helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [ROWS, DIM])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [ROWS, DIM])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def _base(rng):
    w = numpy_helper.from_array((rng.standard_normal((DIM, DIM)) / 8).astype(np.float32), "w")
    return [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
            helper.make_node("Relu", ["h"], ["r"], name="relu")], [w]


def plain(path):
    """x -> MatMul -> Relu -> y."""
    nodes, inits = _base(np.random.default_rng(0))
    return _save(path, nodes + [helper.make_node("Identity", ["r"], ["y"], name="out")], inits)


def extra_memory(path, copies: int = 4096):
    """The same output, through a large constant B[copies, ROWS, DIM] that is really used: added
    to the output (broadcast to B's size), subtracted back and averaged over the copies. B is
    copies * 2 KiB (8 MiB for 4096) and each of the two intermediates as big again."""
    rng = np.random.default_rng(0)
    nodes, inits = _base(rng)
    b = (rng.standard_normal((copies, ROWS, DIM)) * 1e-3).astype(np.float32)
    inits.append(numpy_helper.from_array(b, "big"))
    nodes += [helper.make_node("Add", ["r", "big"], ["s"], name="add_big"),
              helper.make_node("Sub", ["s", "big"], ["t"], name="sub_big"),
              helper.make_node("ReduceMean", ["t"], ["y"], name="mean", axes=[0], keepdims=0)]
    return _save(path, nodes, inits)


def slow_init(path, steps: int = 24, n: int = 384):
    """The same output plus a constant computed from initializers only (a chain of `steps`
    n x n MatMuls, scaled to stay finite and multiplied by zero at the end): ORT folds it at
    session creation, so only the cold start pays for it."""
    rng = np.random.default_rng(0)
    nodes, inits = _base(rng)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    inits.append(numpy_helper.from_array(q.astype(np.float32), "q"))
    inits.append(numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"))
    c = "q"
    for i in range(steps):
        nodes.append(helper.make_node("MatMul", [c, "q"], [f"c{i}"], name=f"fold{i}"))
        c = f"c{i}"
    nodes += [helper.make_node("ReduceMean", [c], ["cm"], name="cmean", keepdims=0),
              helper.make_node("Mul", ["cm", "zero"], ["cz"], name="czero"),
              helper.make_node("Add", ["r", "cz"], ["y"], name="out")]
    return _save(path, nodes, inits)
