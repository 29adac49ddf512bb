import numpy as np
import pytest
from _compress_models import CTX, full_check, op_types, rel_err
from onnx import TensorProto, helper, numpy_helper

from deploykit.errors import InputError
from deploykit.rewrite import apply_step, lowrank as lm


def _mlp(rank1: int | None = 8, rank2: int | None = 6, seed: int = 0):
    """x[2,64] -> MatMul(64x96) -> Relu -> Gemm(transB, alpha=0.5, beta=2, 96->80); the weights
    have exactly the given rank (None: full rank)."""
    rng = np.random.default_rng(seed)

    def w(k, n, r):
        return rng.standard_normal((k, n)) if r is None else \
            rng.standard_normal((k, r)) @ rng.standard_normal((r, n))

    inits = [numpy_helper.from_array(w(64, 96, rank1).astype(np.float32), "W1"),
             numpy_helper.from_array(w(96, 80, rank2).T.astype(np.float32).copy(), "W2"),
             numpy_helper.from_array(rng.standard_normal(80).astype(np.float32), "b2")]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["y"], name="mm"),
             helper.make_node("Relu", ["y"], ["z"], name="relu"),
             helper.make_node("Gemm", ["z", "W2", "b2"], ["out"], transB=1, alpha=0.5, beta=2.0,
                              name="fc")]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 80])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run(model, x):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_exact_on_low_rank_weights_by_energy():
    model = _mlp()
    res = apply_step(lm.LowrankPass(lm.Config(energy=0.999999), CTX), model)
    full_check(res.model)
    assert op_types(res.model) == {"MatMul": 3, "Relu": 1, "Gemm": 1}
    assert [d["rank"] for d in res.details["layers"]] == [8, 6]
    assert res.details["fired"] == 2
    assert {t.name for t in res.model.graph.initializer}.isdisjoint({"W1", "W2"})
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    assert rel_err(_run(model, x), _run(res.model, x)) < 1e-5


def test_reported_error_is_the_real_frobenius_error():
    model = _mlp(None, None)
    res = apply_step(lm.LowrankPass(lm.Config(ratio=0.25), CTX), model)
    inits = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}
    w1 = numpy_helper.to_array(model.graph.initializer[0])
    approx = inits["W1_svd_u"] @ inits["W1_svd_v"]
    layer = res.details["layers"][0]
    assert layer["rank"] == 16 and inits["W1_svd_u"].shape == (64, 16)
    real = np.linalg.norm(approx - w1) / np.linalg.norm(w1)
    assert layer["rel_frobenius_error"] == pytest.approx(real, rel=1e-3)
    assert 0.3 < real < 0.95  # random weights are far from low rank


def test_refuses_when_flops_would_grow():
    res = apply_step(lm.LowrankPass(lm.Config(ratio=0.9), CTX), _mlp())
    assert res.model is None and "does not reduce FLOPs" in res.skipped


def test_nothing_to_factorize_and_bad_config():
    model = _mlp()
    del model.graph.node[:]
    model.graph.node.append(helper.make_node("Identity", ["x"], ["out"]))
    assert apply_step(lm.LowrankPass(lm.Config(), CTX), model).skipped.startswith("no MatMul/Gemm")
    for cfg in (lm.Config(ratio=0.0), lm.Config(energy=1.5), lm.Config(layers=("W9:0.5",)),
                lm.Config(layers=("W1:1.5",))):
        with pytest.raises(InputError):
            apply_step(lm.LowrankPass(cfg, CTX), _mlp())


def test_large_weights_use_randomized_svd_with_exact_error():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((640, 24)) @ rng.standard_normal((24, 520))
         + 0.05 * rng.standard_normal((640, 520))).astype(np.float32)
    a, b, r, err = lm.svd_split(w, 0.05, None)  # min side >= 512: randomized range finder
    assert r == 26 and a.shape == (640, 26) and b.shape == (26, 520)
    real = np.linalg.norm(a @ b - w) / np.linalg.norm(w)
    assert err == pytest.approx(real, rel=1e-3)
    best = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    optimal = np.sqrt((best[26:] ** 2).sum() / (best ** 2).sum())
    assert real < optimal * 1.01  # as good as the exact truncated SVD


@pytest.mark.parametrize("shape", [(520, 700), (700, 520)])
def test_a_sizeable_rank_of_a_large_weight_is_the_exact_truncated_svd(shape):
    """ratio 0.25-0.5 on a large weight: the Gram-matrix SVD, optimal (the randomized finder
    was ~10x slower there and ~5% worse on flat spectra), with the exact reported error."""
    w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    a, b, r, err = lm.svd_split(w, 0.5, None)
    assert r == 260 and a.shape == (shape[0], 260) and b.shape == (260, shape[1])
    real = np.linalg.norm(a @ b - w) / np.linalg.norm(w)
    assert err == pytest.approx(real, rel=1e-4)
    best = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    assert real == pytest.approx(np.sqrt((best[260:] ** 2).sum() / (best ** 2).sum()), rel=1e-5)


def test_per_layer_ranks_override_the_ratio():
    model = _mlp(None, None)
    assert [n for n, _, _ in lm.linear_layers(model)] == ["W1", "W2"]
    assert lm.linear_layers(model)[1][1:] == (96, 80)  # Gemm transB: K x N as x @ W sees it
    only = apply_step(lm.LowrankPass(lm.Config(ratio=0.0, layers=("W1:0.25",)), CTX), model)
    assert [(d["initializer"], d["rank"]) for d in only.details["layers"]] == [("W1", 16)]
    assert "W2" in {t.name for t in only.model.graph.initializer}
    both = apply_step(lm.LowrankPass(lm.Config(ratio=0.25, layers=("W2:0.5",)), CTX), model)
    assert [(d["initializer"], d["rank"]) for d in both.details["layers"]] == [("W1", 16),
                                                                               ("W2", 40)]
