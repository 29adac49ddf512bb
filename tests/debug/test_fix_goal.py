"""--fix goals: top1@M counts agreement only on the samples the reference decides by >= M."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploykit.debug.fix import Goal, score
from deploykit.errors import InputError


def _linear(path, w):
    """y = x @ w: a real ONNX model ORT runs (the reference with w = I, the candidate perturbed)."""
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                          [numpy_helper.from_array(w.astype(np.float32), "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_top1_margin_leaves_near_ties_out(tmp_path):
    ref = _linear(tmp_path / "ref.onnx", np.eye(3))
    bump = np.eye(3)
    bump[1, 1] = 1.1  # class 1 gains 10%: flips the near tie, not the decided sample
    cand = _linear(tmp_path / "cand.onnx", bump)
    # sample 0: class 0 by 0.05 over class 1 (a near tie); sample 1: class 0 by 2.0
    batches = [{"x": np.array([[1.0, 0.95, 0.0], [3.0, 1.0, 0.0]], np.float32)}]
    assert score(Goal.parse("top1=0.99"), ref, cand, batches) == 0.5
    assert score(Goal.parse("top1@0.5=0.99"), ref, cand, batches) == 1.0
    assert score(Goal.parse("top1@0.01=0.99"), ref, cand, batches) == 0.5
    with pytest.raises(InputError, match="no sample has a reference top-2 margin"):
        score(Goal.parse("top1@5=0.99"), ref, cand, batches)


def test_goal_parse():
    g = Goal.parse("top1@0.5=0.99")
    assert (g.metric, g.value, g.margin) == ("top1", 0.99, 0.5)
    assert str(g) == "top1 (reference margin >= 0.5) >= 0.99"
    assert Goal.parse("cosine=0.99").margin == 0.0
    for bad in ("cosine@0.5=0.99", "top1@x=0.9", "top1@-1=0.9", "top1@0.5", "top1@inf=0.9"):
        with pytest.raises(InputError, match="bad --fix"):
            Goal.parse(bad)
