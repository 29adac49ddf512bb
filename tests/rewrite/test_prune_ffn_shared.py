"""prune-ffn on feed-forward weights shared across layers (ALBERT applies one layer's weights at
every depth): the applications of the same weights are one group, pruned once with one kept set,
exact on the kept neurons; a shared weight with a use that is not such a block pins the group."""

import numpy as np
import onnx
import pytest
from _compress_models import full_check
from onnx import TensorProto, helper, numpy_helper

from deploykit.fidelity import run_ort
from deploykit.rewrite import StepContext, apply_step
from deploykit.rewrite import prune_ffn as pf

D, N = 16, 32


def _shared(apps: int = 3, odd: str | None = None, dead: bool = False) -> onnx.ModelProto:
    """x -> [fc1 (W1, b1) -> Relu -> fc2 (W2, b2) + residual] x apps, all applications reading
    the same initializers. `odd`: 'softmax' (the last application reads fc1 through a Softmax,
    not an element-wise activation), 'w2-elsewhere' (W2 also feeds a foreign MatMul),
    'merged-bias' (b1 is also added to an unrelated output, as exporters merge equal constants).
    `dead`: half the neurons never fire (bias -1e4)."""
    rng = np.random.default_rng(7)
    b1 = rng.standard_normal(N).astype(np.float32)
    if dead:
        b1[::2] = -1e4
    inits = [numpy_helper.from_array((rng.standard_normal((D, N)) / 4).astype(np.float32), "W1"),
             numpy_helper.from_array(b1, "b1"),
             numpy_helper.from_array((rng.standard_normal((N, D)) / 6).astype(np.float32), "W2"),
             numpy_helper.from_array(rng.standard_normal(D).astype(np.float32), "b2")]
    nodes, x = [], "x"
    for i in range(apps):
        p = f"a{i}."
        act = "Softmax" if odd == "softmax" and i == apps - 1 else "Relu"
        nodes += [helper.make_node("MatMul", [x, "W1"], [p + "h"], name=p + "fc1"),
                  helper.make_node("Add", [p + "h", "b1"], [p + "hb"], name=p + "bias1"),
                  helper.make_node(act, [p + "hb"], [p + "r"], name=p + "act"),
                  helper.make_node("MatMul", [p + "r", "W2"], [p + "o"], name=p + "fc2"),
                  helper.make_node("Add", [p + "o", "b2"], [p + "ob"], name=p + "bias2"),
                  helper.make_node("Add", [p + "ob", x], [p + "y"], name=p + "res")]
        x = p + "y"
    vi = lambda n, *s: helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 5, *s])  # noqa
    ins, outs = [vi("x", D)], [vi(x, D)]
    if odd == "w2-elsewhere":
        nodes.append(helper.make_node("MatMul", ["side", "W2"], ["z"], name="foreign"))
        ins.append(vi("side", N))
        outs.append(vi("z", D))
    if odd == "merged-bias":
        nodes.append(helper.make_node("Add", ["side", "b1"], ["z"], name="foreign"))
        ins.append(vi("side", N))
        outs.append(vi("z", N))
    g = helper.make_graph(nodes, "shared_ffn", ins, outs, inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _feeds(model, seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"x": (2, 5, D), "side": (2, 5, N)}
    return {i.name: rng.standard_normal(shapes[i.name]).astype(np.float32)
            for i in model.graph.input}


def _inits(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _silenced(model, out) -> onnx.ModelProto:
    """The parent with the removed neurons' W2 rows zeroed (once: every application reads it),
    the kept neurons found by matching the pruned W1 columns back to the parent's."""
    parent, pruned = _inits(model), _inits(out)
    keep = [int(np.flatnonzero((parent["W1"] == pruned["W1"][:, [j]]).all(axis=0))[0])
            for j in range(pruned["W1"].shape[1])]
    w2 = parent["W2"].copy()
    w2[np.setdiff1d(np.arange(N), keep)] = 0
    ref = onnx.ModelProto()
    ref.CopyFrom(model)
    for t in ref.graph.initializer:
        if t.name == "W2":
            t.CopyFrom(numpy_helper.from_array(w2, "W2"))
    return ref, keep


@pytest.mark.parametrize("odd", [None, "merged-bias"])
def test_shared_weights_are_pruned_once_exactly_on_the_kept_neurons(odd):
    model = _shared(odd=odd)
    res = apply_step(pf.PruneFfnPass(pf.Config(ratio=0.5), StepContext(feeds={})), model)
    assert res.skipped is None
    out = res.model
    full_check(out)
    assert [(b["applications"], b["kept"]) for b in res.details["blocks"]] == [(3, 16)]
    w, parent = _inits(out), _inits(model)
    assert w["W1"].shape == (D, 16) and w["W2"].shape == (16, D)
    assert sum(1 for n in out.graph.node if n.op_type == "MatMul") == \
        sum(1 for n in model.graph.node if n.op_type == "MatMul")  # still shared, not copied
    ref, keep = _silenced(model, out)
    bias = next(v for k, v in w.items() if k.startswith("b1") and v.shape == (16,))
    np.testing.assert_array_equal(bias, parent["b1"][keep])
    feeds = _feeds(model)
    got, want, real = run_ort(out, feeds), run_ort(ref, feeds), run_ort(model, feeds)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5 * np.abs(want[0]).max())
    assert np.abs(got[0] - real[0]).max() > 1e-2  # lossy against the real parent
    if odd == "merged-bias":  # the unrelated user of the merged bias is untouched
        assert w["b1"].shape == (N,)
        np.testing.assert_array_equal(got[1], real[1])
    assert pf.prunable_layers(model) == [("W1", N, ["W1"], ["W2"])]


def test_activation_importance_is_aggregated_over_the_applications():
    model = _shared(dead=True)
    feeds = _feeds(model)
    ctx = StepContext(feeds=feeds, calibration=(feeds, _feeds(model, 1)),
                      calibration_is_synthetic=False)
    act = apply_step(pf.PruneFfnPass(pf.Config(ratio=0.5, importance="activation"), ctx), model)
    assert act.skipped is None and _inits(act.model)["W1"].shape == (D, 16)
    np.testing.assert_allclose(run_ort(act.model, feeds)[0], run_ort(model, feeds)[0],
                               rtol=1e-5, atol=1e-5)  # only the dead neurons went


@pytest.mark.parametrize("odd,why", [
    ("softmax", "fc1 weight 'W1' is shared by 3 nodes and MatMul 'a2.fc1' does not use it"),
    ("w2-elsewhere", "fc2 weight 'W2' is shared by 4 nodes and MatMul 'foreign' does not use it"),
])
def test_a_shared_weight_used_outside_valid_blocks_pins_the_group(odd, why):
    model = _shared(odd=odd)
    res = apply_step(pf.PruneFfnPass(pf.Config(ratio=0.5), StepContext(feeds={})), model)
    assert res.skipped is not None and "no prunable feed-forward block" in res.skipped
    assert why in res.skipped


@pytest.fixture(scope="module")
def albert(tmp_path_factory) -> onnx.ModelProto:
    """The real thing: ALBERT (2 layers sharing one set of weights, heads as [.., -1, d]
    Reshapes), built by `transformers` from a small config and exported by deploykit."""
    import torch
    from transformers import AlbertConfig, AlbertModel

    from deploykit.export.exporter import export_module
    from test_quantize_transformer import _First

    torch.manual_seed(0)
    cfg = AlbertConfig(hidden_size=64, embedding_size=32, intermediate_size=128,
                       num_attention_heads=4, num_hidden_layers=2, vocab_size=100,
                       max_position_embeddings=32)
    inner = AlbertModel._from_config(cfg, attn_implementation="eager").eval()
    ids = torch.randint(0, 100, (1, 16))
    path = tmp_path_factory.mktemp("albert") / "albert.onnx"
    export_module(_First.wrap(inner), (ids, torch.ones(1, 16, dtype=torch.int64)), path)
    return onnx.load(str(path))


def _rows_zeroed(model, name: str, rows) -> onnx.ModelProto:
    ref = onnx.ModelProto()
    ref.CopyFrom(model)
    for t in ref.graph.initializer:
        if t.name == name:
            arr = numpy_helper.to_array(t).copy()
            arr[list(rows)] = 0
            t.CopyFrom(numpy_helper.from_array(arr, name))
    return ref


def _albert_close(out, ref):
    feeds = {"input_ids": np.random.default_rng(0).integers(0, 100, (1, 16)),
             "attention_mask": np.ones((1, 16), np.int64)}
    got, want = run_ort(out, feeds)[0], run_ort(ref, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_albert_feed_forward(albert):
    res = apply_step(pf.PruneFfnPass(pf.Config(ratio=0.5), StepContext(feeds={})), albert)
    assert res.skipped is None
    [blk] = res.details["blocks"]
    assert (blk["applications"], blk["neurons"], blk["kept"]) == (2, 128, 64)
    full_check(res.model)
    w, parent = _inits(res.model), _inits(albert)
    fc1 = blk["weight"]
    keep = [int(np.flatnonzero((parent[fc1] == w[fc1][:, [j]]).all(axis=0))[0])
            for j in range(64)]
    fc2 = next(n.input[1] for n in albert.graph.node if n.name == blk["fc2"])
    _albert_close(res.model, _rows_zeroed(albert, fc2, np.setdiff1d(np.arange(128), keep)))


def test_albert_heads(albert):
    from deploykit.rewrite import prune_heads as ph
    from deploykit.rewrite._channel_graph import load_ir

    res = apply_step(ph.PruneHeadsPass(ph.Config(ratio=0.5), StepContext(feeds={})), albert)
    assert res.skipped is None
    [blk] = res.details["blocks"]
    assert (blk["applications"], blk["heads"], blk["kept"]) == (2, 4, 2)
    full_check(res.model)
    w_out = ph.find_attention(load_ir(albert))[0].w_out.name
    rows = [h * 16 + i for h in blk["removed"] for i in range(16)]
    _albert_close(res.model, _rows_zeroed(albert, w_out, rows))
