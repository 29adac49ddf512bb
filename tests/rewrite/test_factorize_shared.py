"""The factorization steps (lowrank, tucker, compact) on weights several nodes share (ALBERT's
layers, a reused conv): the weight is decomposed once and every use reads one set of factors.
Before, each use was factorized on its own and the second one's factors (same initializer
names) made the model fail onnx.checker."""

import numpy as np
import onnx
import pytest
from _compress_models import CTX, full_check, rel_err
from onnx import TensorProto, helper, numpy_helper

from deploykit.fidelity import run_ort
from deploykit.rewrite import apply_step, compact, lowrank as lm, tucker


def _shared_matmul(uses: int = 3) -> onnx.ModelProto:
    """x[2,64] -> (MatMul W -> Tanh) x uses, one W [64, 64] of rank 8 read by every MatMul."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 8)) @ rng.standard_normal((8, 64)) / 16).astype(np.float32)
    nodes, x = [], "x"
    for i in range(uses):
        nodes += [helper.make_node("MatMul", [x, "W"], [f"m{i}"], name=f"mm{i}"),
                  helper.make_node("Tanh", [f"m{i}"], [f"t{i}"])]
        x = f"t{i}"
    g = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [2, 64])], [helper.make_tensor_value_info(
            x, TensorProto.FLOAT, [2, 64])], [numpy_helper.from_array(w, "W")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _shared_conv() -> onnx.ModelProto:
    """x[1,16,8,8] -> (Conv W 3x3 pad 1 -> Relu) x 2, one W read by both convs."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((16, 16, 3, 3)) / 12).astype(np.float32)
    nodes, x = [], "x"
    for i in range(2):
        nodes += [helper.make_node("Conv", [x, "W"], [f"c{i}"], pads=[1, 1, 1, 1],
                                   name=f"conv{i}"),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x = f"r{i}"
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 16, 8, 8])  # noqa
    g = helper.make_graph(nodes, "shared_conv", [vi("x")], [vi(x)],
                          [numpy_helper.from_array(w, "W")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_lowrank_factorizes_a_shared_weight_once():
    model = _shared_matmul()
    res = apply_step(lm.LowrankPass(lm.Config(energy=0.999999), CTX), model)
    full_check(res.model)
    names = sorted(t.name for t in res.model.graph.initializer)
    assert names == ["W_svd_u", "W_svd_v"]  # one pair, read by the three uses
    assert [d["rank"] for d in res.details["layers"]] == [8, 8, 8]
    x = {"x": np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)}
    assert rel_err(run_ort(model, x)[0], run_ort(res.model, x)[0]) < 1e-5  # W is rank 8


@pytest.mark.parametrize("step", ["tucker", "compact"])
def test_conv_factorizations_of_a_shared_weight_happen_once(step):
    model = _shared_conv()
    if step == "tucker":
        res = apply_step(tucker.TuckerPass(tucker.Config(ratio=0.5), CTX), model)
    else:
        res = apply_step(compact.CompactPass(compact.Config(), CTX), model)
    assert res.skipped is None
    full_check(res.model)
    assert len(res.details["layers"]) == 2
    inits = [t.name for t in res.model.graph.initializer]
    assert len(inits) == len(set(inits)) == (3 if step == "tucker" else 2)
    x = {"x": np.random.default_rng(1).standard_normal((1, 16, 8, 8)).astype(np.float32)}
    assert run_ort(res.model, x)[0].shape == (1, 16, 8, 8)


def test_lowrank_decomposes_each_weight_at_most_once(monkeypatch):
    """The SVD is the step's cost (minutes on ALBERT's 4096 x 16384 weights): once per shared
    weight, and never for a weight the ratio's rank cannot make cheaper."""
    calls = []
    real = lm.svd_split

    def counted(w, ratio, energy):
        calls.append(w.shape)
        return real(w, ratio, energy)

    monkeypatch.setattr(lm, "svd_split", counted)
    res = apply_step(lm.LowrankPass(lm.Config(ratio=0.25), CTX), _shared_matmul())
    assert res.details["fired"] == 3 and calls == [(64, 64)]
    calls.clear()
    res = apply_step(lm.LowrankPass(lm.Config(ratio=0.5), CTX), _shared_matmul())
    assert res.skipped is not None and "does not reduce FLOPs" in res.skipped and calls == []
