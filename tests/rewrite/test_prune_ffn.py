import json

import numpy as np
import onnx
import pytest
from _compress_models import full_check, op_types, params
from onnx import numpy_helper

from deploykit.cli import main
from deploykit.errors import InputError
from deploykit.onnxio import io_specs, make_feeds
from deploykit.rewrite import StepContext, apply_step
from deploykit.rewrite import prune_ffn as pf
from deploykit.fidelity import run_ort
from onnx_models import tiny_encoder


def _model(tmp_path, **kw) -> onnx.ModelProto:
    return onnx.load(str(tiny_encoder(tmp_path / "enc.onnx", **kw)))


def _feeds(model, seed=0):
    return make_feeds(io_specs(model)[0], seed=seed, overrides={"input_ids": (2, 9)})


def _inits(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _zeroed_parent(model, out, gemm: bool):
    """The reference built by hand: the parent with the removed neurons silenced (their fc2 rows
    zeroed), the kept ones found by matching the pruned fc1 columns back to the parent's."""
    ref = onnx.ModelProto()
    ref.CopyFrom(model)
    parent, pruned = _inits(model), _inits(out)
    for t in ref.graph.initializer:
        if not t.name.endswith("fc2.w"):
            continue
        fc1 = t.name.replace("fc2", "fc1")
        cols = parent[fc1].T if gemm else parent[fc1]  # [hidden, neurons]
        kept = pruned[fc1].T if gemm else pruned[fc1]
        keep = [int(np.flatnonzero((cols == kept[:, [j]]).all(axis=0))[0])
                for j in range(kept.shape[1])]
        dead = np.setdiff1d(np.arange(cols.shape[1]), keep)
        w2 = numpy_helper.to_array(t).copy()
        if gemm:
            w2[:, dead] = 0
        else:
            w2[dead, :] = 0
        t.CopyFrom(numpy_helper.from_array(w2, t.name))
    return ref


@pytest.mark.parametrize("kw", [{}, {"act": "erf"}, {"act": "Relu", "gemm": True}],
                         ids=["gelu", "erf-gelu", "gemm-relu"])
def test_prunes_blocks_exactly_on_the_kept_neurons(tmp_path, kw):
    model = _model(tmp_path, **kw)
    res = apply_step(pf.PruneFfnPass(pf.Config(ratio=0.5), StepContext(feeds={})), model)
    assert res.skipped is None and res.fidelity_kind == "lossy"
    out = res.model
    full_check(out)
    assert op_types(out) == op_types(model)  # same graph, narrower tensors
    w = _inits(out)
    gemm = kw.get("gemm", False)
    for i in (0, 1):
        assert w[f"l{i}.fc1.w"].shape == ((32, 16) if gemm else (16, 32))
        assert w[f"l{i}.fc1.b"].shape == (32,)
        assert w[f"l{i}.fc2.w"].shape == ((16, 32) if gemm else (32, 16))
    assert [b["kept"] for b in res.details["blocks"]] == [32, 32]
    assert params(out) < params(model)
    feeds = _feeds(model)
    got, parent = run_ort(out, feeds)[0], run_ort(model, feeds)[0]
    ref = run_ort(_zeroed_parent(model, out, gemm), feeds)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert np.abs(got - parent).max() > 1e-2  # lossy against the real parent


def test_activation_importance_removes_dead_neurons_first(tmp_path):
    model = _model(tmp_path, act="Relu")
    for t in model.graph.initializer:  # half the neurons of each block never fire
        if t.name.endswith("fc1.b"):
            b = numpy_helper.to_array(t).copy()
            b[::2] = -1e4
            t.CopyFrom(numpy_helper.from_array(b, t.name))
    feeds = _feeds(model)
    ctx = StepContext(feeds=feeds, calibration=(feeds, _feeds(model, 1)),
                      calibration_is_synthetic=False)
    act = apply_step(pf.PruneFfnPass(pf.Config(ratio=0.5, importance="activation"), ctx),
                     model).model
    np.testing.assert_allclose(run_ort(act, feeds)[0], run_ort(model, feeds)[0], rtol=1e-4,
                               atol=1e-4)
    # weights alone cannot see it
    mag = apply_step(pf.PruneFfnPass(pf.Config(ratio=0.5), ctx), model).model
    assert np.abs(run_ort(mag, feeds)[0] - run_ort(model, feeds)[0]).max() > 1e-2


def test_per_block_ratios_and_errors(tmp_path):
    model = _model(tmp_path)
    res = apply_step(pf.PruneFfnPass(pf.Config(ratio=0.0, layers=("l1.fc1.w:0.75",)),
                                     StepContext(feeds={})), model)
    assert [b["kept"] for b in res.details["blocks"]] == [64, 16]
    with pytest.raises(InputError, match="not found"):
        apply_step(pf.PruneFfnPass(pf.Config(layers=("nope:0.5",)), StepContext(feeds={})), model)
    with pytest.raises(InputError, match="ratio"):
        apply_step(pf.PruneFfnPass(pf.Config(ratio=1.0), StepContext(feeds={})), model)
    assert [n for n, *_ in pf.prunable_layers(model)] == ["l0.fc1.w", "l1.fc1.w"]


def test_refuses_what_is_not_a_feed_forward_block(mlp_onnx):
    from onnx_models import conv_relu_gemm

    model = onnx.load(str(mlp_onnx))  # MatMul -> Relu -> MatMul, but fc2 feeds the output: ok
    assert apply_step(pf.PruneFfnPass(pf.Config(), StepContext(feeds={})), model).skipped is None
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        conv = onnx.load(conv_relu_gemm(f"{d}/c.onnx"))
    res = apply_step(pf.PruneFfnPass(pf.Config(), StepContext(feeds={})), conv)
    assert res.skipped.startswith("no prunable feed-forward block")


def test_cli_compress_prune_ffn(tmp_path, capsys):
    src = tiny_encoder(tmp_path / "enc.onnx")
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    assert main(["compress", str(src), "-r", "prune-ffn:ratio=0.5; quantize-dynamic", "-o",
                 str(out), "--no-measure", "--no-store", "--json", str(report)]) == 0
    steps = json.loads(report.read_text())["recipe"]["steps"]
    assert [s["skipped"] for s in steps] == [None, None]
    assert steps[0]["details"]["params_after"] < steps[0]["details"]["params_before"]


def test_reshapes_sharing_a_shape_constant_get_their_own_counts(tmp_path):
    model = _model(tmp_path, act="Gelu", gemm=True)  # Gemm -> Reshape -> Gelu -> Reshape -> Gemm
    res = apply_step(pf.PruneFfnPass(pf.Config(ratio=0.25, round_to=1, layers=("l1.fc1:0.75",)),
                                     StepContext(feeds={})), model)  # a block named by its fc1 node
    assert [b["kept"] for b in res.details["blocks"]] == [48, 16]
    full_check(res.model)
    shapes = sorted(numpy_helper.to_array(t).tolist() for t in res.model.graph.initializer
                    if t.name.startswith("l") and t.name.endswith("_shape"))
    assert shapes == [[-1, 16], [-1, 48], [1, -1, 16], [1, -1, 48]]
    assert not {"ffn_3d", "ffn_2d"} & {t.name for t in res.model.graph.initializer}
    feeds = _feeds(model)
    ref = run_ort(_zeroed_parent(model, res.model, True), feeds)[0]
    np.testing.assert_allclose(run_ort(res.model, feeds)[0], ref, rtol=1e-4,
                               atol=1e-4 * np.abs(ref).max())


def _swiglu(tmp_path, layers: int = 2, hidden: int = 16, neurons: int = 32) -> onnx.ModelProto:
    """LLaMA's MLP: down(silu(x @ gate) * (x @ up)) + x, per layer, plus a sibling pair that is
    not gated (two projections of the same input with the same width, each to its own output)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(3)
    inits, nodes, x = [], [], "x"

    def w(name, *shape):
        arr = rng.standard_normal(shape) / np.sqrt(shape[0])
        inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name

    for i in range(layers):
        p = f"l{i}."
        nodes += [helper.make_node("MatMul", [x, w(p + "gate", hidden, neurons)], [p + "g"]),
                  helper.make_node("Sigmoid", [p + "g"], [p + "sg"]),
                  helper.make_node("Mul", [p + "g", p + "sg"], [p + "silu"]),
                  helper.make_node("MatMul", [x, w(p + "up", hidden, neurons)], [p + "u"]),
                  helper.make_node("Mul", [p + "silu", p + "u"], [p + "h"]),
                  helper.make_node("MatMul", [p + "h", w(p + "down", neurons, hidden)],
                                   [p + "d"]),
                  helper.make_node("Add", [p + "d", x], [p + "y"])]
        x = p + "y"
    nodes += [helper.make_node("MatMul", [x, w("qa", hidden, neurons)], ["a"]),
              helper.make_node("MatMul", [x, w("qb", hidden, neurons)], ["b"])]
    vi = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)  # noqa: E731
    g = helper.make_graph(nodes, "swiglu", [vi("x", [2, 9, hidden])],
                          [vi("a", [2, 9, neurons]), vi("b", [2, 9, neurons])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_gated_blocks_prune_gate_and_up_together_exactly(tmp_path):
    model = _swiglu(tmp_path)
    res = apply_step(pf.PruneFfnPass(pf.Config(ratio=0.5), StepContext(feeds={})), model)
    assert res.skipped is None
    out = res.model
    full_check(out)
    w, parent = _inits(out), _inits(model)
    assert [len(b["gates"]) for b in res.details["blocks"]] == [1, 1]  # the pair stays out
    for i in (0, 1):
        assert w[f"l{i}.gate"].shape == w[f"l{i}.up"].shape == (16, 16)
        assert w[f"l{i}.down"].shape == (16, 16)
        # gate and up keep the same neurons: the kept columns come from the same indices
        keep = [int(np.flatnonzero((parent[f"l{i}.gate"] == w[f"l{i}.gate"][:, [j]])
                                   .all(axis=0))[0]) for j in range(16)]
        np.testing.assert_array_equal(parent[f"l{i}.up"][:, keep], w[f"l{i}.up"])
        np.testing.assert_array_equal(parent[f"l{i}.down"][keep], w[f"l{i}.down"])
    assert w["qa"].shape == w["qb"].shape == (16, 32)
    # exact on the kept neurons: the parent with the removed neurons' down rows zeroed
    ref = onnx.ModelProto()
    ref.CopyFrom(model)
    for t in ref.graph.initializer:
        if t.name.endswith("down"):
            i = t.name.split(".")[0]
            kept = w[f"{i}.gate"]
            keep = [int(np.flatnonzero((parent[f"{i}.gate"] == kept[:, [j]]).all(axis=0))[0])
                    for j in range(kept.shape[1])]
            d = parent[t.name].copy()
            d[np.setdiff1d(np.arange(32), keep)] = 0
            t.CopyFrom(numpy_helper.from_array(d, t.name))
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 9, 16)).astype(np.float32)}
    for got, want in zip(run_ort(out, feeds), run_ort(ref, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert [r[2] for r in pf.prunable_layers(model)] == [["l0.gate", "l0.up"],
                                                          ["l1.gate", "l1.up"]]
