import json

import numpy as np
import onnx
import pytest
from _compress_models import full_check, op_types, params
from onnx import TensorProto, helper, numpy_helper

from deploykit.cli import main
from deploykit.errors import InputError
from deploykit.fidelity import run_ort
from deploykit.rewrite import StepContext, apply_step
from deploykit.rewrite import prune_hidden as ph

D, HEADS, FFN, VOCAB, MAXLEN = 32, 4, 64, 50, 512
# constants that WRITE the stream, and the axis their channels lie on (zeroing these silences a
# channel everywhere); the rest (Q/K/V/fc1/pooler rows, gamma) only read it
_WRITERS = {"word_emb": 1, "pos_emb": 1, "type_emb": 1, ".wo": 1, ".bo": 0, ".w2": 0, ".b2": 0,
            ".beta": 0, ".g": 0}


def tiny_bert(layers: int = 2, norm: str = "ln", head: str = "classifier", seed: int = 0,
              extra: str | None = None) -> onnx.ModelProto:
    """A BERT-shaped encoder as exporters write it: word + position + type embeddings (Gather),
    a no-op stream Reshape sharing its shape constant with the attention's head merge, per layer
    multi-head attention (Q/K/V MatMul+bias -> Reshape/Transpose heads -> masked Softmax ->
    merge -> output projection) and a Gemm FFN on the stream flattened to 2-D (restored by a
    Reshape to the stream's own Shape), each with a residual Add and a norm. `norm`: "ln"
    (LayerNormalization), "decomposed" (ReduceMean/Sub/Pow/Sqrt/Div), "rms" (Pow/ReduceMean/
    Sqrt/Reciprocal/Mul) or "affine" (x * g + beta: no statistics, so pruning is exact).
    `head`: "classifier" ([CLS] -> pooler Gemm -> Tanh -> classifier Gemm -> logits), "lm" (a
    Gemm reading the word embedding table: tied), "embedding" (masked mean pooling, then x /
    Expand(ReduceL2(x)) as F.normalize exports) or "none" (last_hidden_state is the output)."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    dh = D // HEADS

    def c(name, arr, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(arr, dtype), name))
        return name

    def w(name, *shape):
        return c(name, rng.standard_normal(shape) / np.sqrt(shape[-1]))

    def n(op, ins, out, **kw):
        nodes.append(helper.make_node(op, ins, [out], name=out, **kw))
        return out

    c("eps", 1e-5)
    c("two", 2.0)
    c("last", [-1], np.int64)

    def norm_(x, p):
        g = c(p + ".g", 1 + 0.1 * rng.standard_normal(D))
        beta = c(p + ".beta", 0.1 * rng.standard_normal(D))
        if norm == "ln":
            return n("LayerNormalization", [x, g, beta], p + ".out", axis=-1)
        if norm == "affine":
            return n("Add", [n("Mul", [x, g], p + ".s"), beta], p + ".out")
        if norm == "decomposed":
            cen = n("Sub", [x, n("ReduceMean", [x, "last"], p + ".mean")], p + ".cen")
            var = n("ReduceMean", [n("Pow", [cen, "two"], p + ".sq"), "last"], p + ".var")
            std = n("Sqrt", [n("Add", [var, "eps"], p + ".ve")], p + ".std")
            y = n("Mul", [n("Div", [cen, std], p + ".z"), g], p + ".s")
            return n("Add", [y, beta], p + ".out")
        assert norm == "rms"
        ms = n("ReduceMean", [n("Pow", [x, "two"], p + ".sq"), "last"], p + ".ms")
        inv = n("Reciprocal", [n("Sqrt", [n("Add", [ms, "eps"], p + ".ve")], p + ".rms")],
                p + ".inv")
        return n("Mul", [n("Mul", [x, inv], p + ".z"), g], p + ".out")

    # embeddings; position ids are the first `sequence` entries of a constant arange
    c("arange", np.arange(MAXLEN)[None], np.int64)
    c("zero", [0], np.int64)
    c("one", [1], np.int64)
    c("two_i", [2], np.int64)
    seq = n("Slice", [n("Shape", ["input_ids"], "ids_shape"), "one", "two_i"], "seq")
    pos_ids = n("Slice", ["arange", "zero", seq, "one"], "pos_ids")
    e = n("Add", [n("Gather", [w("word_emb", VOCAB, D), "input_ids"], "we"),
                  n("Gather", [w("pos_emb", MAXLEN, D), pos_ids], "pe")], "e1")
    e = n("Add", [e, n("Gather", [w("type_emb", 2, D), "token_type_ids"], "te")], "e2")
    c("merge_shape", [0, 0, D], np.int64)  # shared by the stream view and every head merge
    x = norm_(n("Reshape", [e, "merge_shape"], "e3"), "emb.ln")
    # the attention mask, broadcast over heads and queries
    mf = n("Cast", ["attention_mask"], "mf", to=TensorProto.FLOAT)
    c("neg", -1e4)
    c("onef", 1.0)
    c("axes12", [1, 2], np.int64)
    mask = n("Unsqueeze", [n("Mul", [n("Sub", ["onef", mf], "inv_m"), "neg"], "m_neg"),
                           "axes12"], "mask")
    c("heads_shape", [0, 0, HEADS, dh], np.int64)
    c("scale", 1 / np.sqrt(dh))
    c("flat_shape", [-1, D], np.int64)
    for i in range(layers):
        p = f"l{i}"
        qkv = []
        for t, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
            y = n("Add", [n("MatMul", [x, w(f"{p}.w{t}", D, D)], f"{p}.{t}0"),
                          c(f"{p}.b{t}", 0.1 * rng.standard_normal(D))], f"{p}.{t}1")
            y = n("Reshape", [y, "heads_shape"], f"{p}.{t}2")
            qkv.append(n("Transpose", [y], f"{p}.{t}3", perm=perm))
        s = n("Mul", [n("MatMul", qkv[:2], f"{p}.qk"), "scale"], f"{p}.s0")
        prob = n("Softmax", [n("Add", [s, mask], f"{p}.s1")], f"{p}.prob", axis=-1)
        a = n("Transpose", [n("MatMul", [prob, qkv[2]], f"{p}.pv")], f"{p}.a0",
              perm=[0, 2, 1, 3])
        a = n("Reshape", [a, "merge_shape"], f"{p}.a1")
        o = n("Add", [n("MatMul", [a, w(f"{p}.wo", D, D)], f"{p}.o0"),
                      c(f"{p}.bo", 0.1 * rng.standard_normal(D))], f"{p}.o1")
        x = norm_(n("Add", [x, o], f"{p}.r1"), f"{p}.ln1")
        h = n("Gemm", [n("Reshape", [x, "flat_shape"], f"{p}.xf"), w(f"{p}.w1", FFN, D),
                       c(f"{p}.b1", 0.1 * rng.standard_normal(FFN))], f"{p}.h0", transB=1)
        h = n("Gemm", [n("Gelu", [h], f"{p}.h1"), w(f"{p}.w2", D, FFN),
                       c(f"{p}.b2", 0.1 * rng.standard_normal(D))], f"{p}.h2", transB=1)
        h = n("Reshape", [h, n("Shape", [x], f"{p}.xs")], f"{p}.h3")
        x = norm_(n("Add", [x, h], f"{p}.r2"), f"{p}.ln2")
    vi = helper.make_tensor_value_info
    outs = []
    if head == "classifier":
        cls = n("Gather", [x, c("cls_index", 0, np.int64)], "cls", axis=1)
        pool = n("Tanh", [n("Gemm", [cls, w("pool.w", D, D), c("pool.b", np.zeros(D))],
                            "pool0", transB=1)], "pool")
        n("Gemm", [pool, w("cls.w", 3, D), c("cls.b", np.zeros(3))], "logits", transB=1)
        outs.append(vi("logits", TensorProto.FLOAT, ["batch", 3]))
    elif head == "lm":  # tied: the LM head reads the word embedding table (transB)
        n("Gemm", [n("Reshape", [x, "flat_shape"], "xf"), "word_emb"], "logits", transB=1)
        outs.append(vi("logits", TensorProto.FLOAT, [None, VOCAB]))
    elif head == "embedding":  # sentence-transformers: masked mean pooling + F.normalize
        m3 = n("Unsqueeze", [mf, "last"], "m3")
        pooled = n("Div", [n("ReduceSum", [n("Mul", [x, m3], "xm"), "one"], "xs", keepdims=0),
                           n("ReduceSum", [m3, "one"], "cnt", keepdims=0)], "pooled")
        l2 = n("Clip", [n("ReduceL2", [pooled, "last"], "l2"), c("tiny", 1e-12)], "l2c")
        n("Div", [pooled, n("Expand", [l2, c("width", [1, D], np.int64)], "l2x")], "embedding")
        outs.append(vi("embedding", TensorProto.FLOAT, ["batch", D]))
    else:
        n("Identity", [x], "last_hidden_state")
        outs.append(vi("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", D]))
    if extra == "flatten":  # a read of the stream the step does not understand
        n("Flatten", [x], "flat", axis=1)
        outs.append(vi("flat", TensorProto.FLOAT, ["batch", None]))
    ids = [vi(k, TensorProto.INT64, ["batch", "sequence"])
           for k in ("input_ids", "attention_mask", "token_type_ids")]
    model = helper.make_model(helper.make_graph(nodes, "tiny_bert", ids, outs, inits),
                              opset_imports=[helper.make_opsetid("", 20)])
    onnx.checker.check_model(model, full_check=True)
    return model


def _feeds(seed=0, batch=2, seq=9):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), np.int64)
    mask[0, -3:] = 0
    return {"input_ids": rng.integers(0, VOCAB, (batch, seq)), "attention_mask": mask,
            "token_type_ids": rng.integers(0, 2, (batch, seq))}


def _silenced(model, channels) -> onnx.ModelProto:
    """The parent with `channels` of the stream zeroed in every constant that writes it: those
    channels are then zero on the whole stream, and nothing else changes."""
    ref = onnx.ModelProto()
    ref.CopyFrom(model)
    for t in ref.graph.initializer:
        axis = next((a for k, a in _WRITERS.items() if t.name == k or t.name.endswith(k)), None)
        if axis is not None and t.name not in ("pool.b", "cls.b"):
            arr = numpy_helper.to_array(t).copy()
            idx = [slice(None)] * arr.ndim
            idx[axis] = list(channels)
            arr[tuple(idx)] = 0
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
    return ref


def _prune(model, ctx=None, **kw):
    return apply_step(ph.PruneHiddenPass(ph.Config(**kw), ctx or StepContext(feeds={})), model)


def _inits(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize("norm", ["ln", "decomposed", "rms", "affine"])
def test_prunes_the_stream_of_a_bert_like_encoder(norm):
    model = tiny_bert(norm=norm)
    res = _prune(model, ratio=0.25)
    assert res.skipped is None and res.fidelity_kind == "lossy"
    out = res.model
    full_check(out)
    assert op_types(out) == op_types(model)  # same graph, narrower tensors
    (st,) = res.details["streams"]
    assert (st["width"], st["kept"], len(st["removed"])) == (D, 24, 8)
    assert st["norms"] == {"ln": 5, "decomposed": 10, "rms": 5, "affine": 0}[norm]
    assert bool(res.notes) == (norm != "affine")  # lossy norms are said
    w = _inits(out)
    assert w["word_emb"].shape == (VOCAB, 24) and w["pos_emb"].shape == (MAXLEN, 24)
    for i in (0, 1):  # readers lose rows, writers columns; the heads' own widths stay
        assert w[f"l{i}.wq"].shape == w[f"l{i}.wk"].shape == w[f"l{i}.wv"].shape == (24, D)
        assert w[f"l{i}.bq"].shape == (D,)
        assert w[f"l{i}.wo"].shape == (D, 24) and w[f"l{i}.bo"].shape == (24,)
        assert w[f"l{i}.w1"].shape == (FFN, 24) and w[f"l{i}.w2"].shape == (24, FFN)
    assert w["pool.w"].shape == (D, 24) and w["cls.w"].shape == (3, D)
    # the stream view got its own shape constant; the head merges keep theirs
    assert w["merge_shape"].tolist() == [0, 0, D] and [0, 0, 24] in [
        a.tolist() for a in w.values() if a.dtype == np.int64]
    assert w["heads_shape"].tolist() == [0, 0, HEADS, D // HEADS]
    assert params(out) < params(model)
    feeds = _feeds()
    got, parent = run_ort(out, feeds)[0], run_ort(model, feeds)[0]
    assert got.shape == parent.shape == (2, 3) and np.isfinite(got).all()
    # exact on the kept channels where there are no statistics; lossy where there are
    ref = run_ort(_silenced(model, st["removed"]), feeds)[0]
    if norm == "affine":
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    else:
        assert np.abs(got - ref).max() > 1e-3


def test_dead_channels_go_first_and_the_rest_is_exact():
    """Channels zero on the whole stream carry nothing: magnitude finds them, and removing them
    is exact when no norm takes statistics (a misaligned slice of any constant fails this)."""
    dead = [1, 5, 6, 13, 20, 21, 27, 30]
    model = _silenced(tiny_bert(norm="affine", seed=1), dead)
    res = _prune(model, ratio=0.25)
    assert res.details["streams"][0]["removed"] == dead
    feeds = _feeds(1)
    np.testing.assert_allclose(run_ort(res.model, feeds)[0], run_ort(model, feeds)[0],
                               rtol=1e-4, atol=1e-5)
    # with LayerNorm the same dead channels change the mean and variance: close, not exact
    ln = _silenced(tiny_bert(norm="ln", seed=1), dead)
    res = _prune(ln, ratio=0.25)
    assert res.details["streams"][0]["removed"] == dead
    got, want = run_ort(res.model, feeds)[0], run_ort(ln, feeds)[0]
    assert 1e-4 < np.abs(got - want).max()
    cos = (got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want)
    assert cos > 0.9


def test_activation_importance_reads_the_stream():
    dead = [0, 2, 4, 8, 16, 18, 24, 31]
    model = _silenced(tiny_bert(norm="affine", seed=2), dead)
    # magnitude alone is misled by the readers' rows: make the dead channels' reader rows large
    for t in model.graph.initializer:
        if t.name.endswith((".wq", ".wk", ".wv")):
            arr = numpy_helper.to_array(t).copy()
            arr[dead] *= 50
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
    assert _prune(model, ratio=0.25).details["streams"][0]["removed"] != dead
    feeds = _feeds(2)
    ctx = StepContext(feeds=feeds, calibration=(feeds, _feeds(3)), calibration_is_synthetic=False)
    res = _prune(model, ctx, ratio=0.25, importance="activation")
    assert res.details["streams"][0]["removed"] == dead
    np.testing.assert_allclose(run_ort(res.model, feeds)[0], run_ort(model, feeds)[0],
                               rtol=1e-4, atol=1e-5)


def test_tied_lm_head_is_sliced_once_and_exactly():
    model = tiny_bert(norm="affine", head="lm")
    res = _prune(model, ratio=0.25)
    full_check(res.model)
    assert _inits(res.model)["word_emb"].shape == (VOCAB, 24)
    removed = res.details["streams"][0]["removed"]
    feeds = _feeds()
    got, ref = run_ort(res.model, feeds)[0], run_ort(_silenced(model, removed), feeds)[0]
    assert got.shape == (18, VOCAB)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_pooled_normalized_embedding_is_an_output_refused_or_padded():
    model = tiny_bert(head="embedding")
    res = _prune(model, ratio=0.25)
    assert "graph output 'embedding'" in res.skipped
    res = _prune(model, ratio=0.25, output_width="pad")
    full_check(res.model)
    assert _inits(res.model)["l2x_shape"].tolist() == [1, 24]  # the Expand to the new width
    feeds = _feeds()
    got = run_ort(res.model, feeds)[0]
    removed = res.details["streams"][0]["removed"]
    assert got.shape == (2, D) and not got[:, removed].any()
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)  # still unit length


def test_refuses_a_stream_that_is_the_models_output():
    model = tiny_bert(head="none")
    res = _prune(model, ratio=0.25)
    assert res.model is None
    assert "graph output 'last_hidden_state'" in res.skipped and "contract" in res.skipped
    assert "\n" not in res.skipped
    # output_width=pad keeps the contract: the kept channels in place, zeros in the removed
    res = _prune(tiny_bert(head="none", norm="affine"), ratio=0.25, output_width="pad")
    full_check(res.model)
    st = res.details["streams"][0]
    assert st["padded_outputs"] == ["last_hidden_state"]
    parent = tiny_bert(head="none", norm="affine")
    feeds = _feeds()
    got = run_ort(res.model, feeds)[0]
    assert got.shape == (2, 9, D) and not got[..., st["removed"]].any()
    ref = run_ort(_silenced(parent, st["removed"]), feeds)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_skips_what_it_cannot_follow_and_checks_its_config():
    res = _prune(tiny_bert(extra="flatten"), ratio=0.25)
    assert res.model is None
    assert "unsupported Flatten 'flat'" in res.skipped
    res = _prune(tiny_bert(), ratio=0.1)  # 32 - 3 = 29 -> rounded up to 32
    assert res.skipped.startswith("ratio 0.1 removes no channel")
    with pytest.raises(InputError, match="ratio"):
        _prune(tiny_bert(), ratio=1.0)
    with pytest.raises(InputError, match="output_width"):
        _prune(tiny_bert(), output_width="crop")


def test_cli_compress_prune_hidden(tmp_path, capsys):
    src = tmp_path / "bert.onnx"
    onnx.save(tiny_bert(), str(src))
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    assert main(["compress", str(src), "-r", "prune-hidden:ratio=0.25", "-o", str(out),
                 "--no-measure", "--no-store", "--json", str(report)]) == 0
    (step,) = json.loads(report.read_text())["recipe"]["steps"]
    assert step["skipped"] is None
    assert step["details"]["streams"][0]["kept"] == 24
    assert _inits(onnx.load(str(out)))["word_emb"].shape == (VOCAB, 24)


def test_search_tries_it_where_the_stream_ends_in_a_projection():
    from deploykit.search.candidates import model_candidates

    recipes = [c.recipe for c in model_candidates(tiny_bert())]
    assert "prune-hidden:ratio=0.25" in recipes
    assert "prune-hidden:ratio=0.25; quantize-dynamic" in recipes
    assert ph.prunable_streams(tiny_bert(head="none")) == []
    assert not any("prune-hidden" in c.recipe for c in model_candidates(tiny_bert(head="none")))
