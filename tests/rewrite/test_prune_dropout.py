"""Inference Dropout (old exporters, caffe2 zoo files like AlexNet) is the identity for the
pruning walks: prune-ffn and prune-channels see through it, unless it may train or its mask is
read. Exactness is checked against the parent with the weights reading the dropped neurons or
channels zeroed."""

import numpy as np
import onnx
import pytest
from _compress_models import CTX, full_check, image, rel_err, run, zeroed_parent
from onnx import TensorProto, helper, numpy_helper

from deploykit.rewrite import apply_step, prune_channels as pc, prune_ffn as pf
from deploykit.rewrite._channel_graph import load_ir
from deploykit.rewrite._ffn_blocks import find_blocks


def _dropout(x, y, opset, training, name, mask_out=None):
    """A Dropout node at `opset` (ratio attribute before 12, ratio/training_mode inputs after),
    with its mask output named (AlexNet's files name it even though nothing reads it)."""
    outs = [y, mask_out or f"{name}_mask"]
    if opset < 12:
        return helper.make_node("Dropout", [x], outs, ratio=0.5, name=name), []
    ratio = numpy_helper.from_array(np.array(0.5, np.float32), f"{name}_ratio")
    if training is None:
        return helper.make_node("Dropout", [x, ratio.name], outs, name=name), [ratio]
    tm = numpy_helper.from_array(np.array(training), f"{name}_tm")
    return helper.make_node("Dropout", [x, ratio.name, tm.name], outs, name=name), [ratio, tm]


def _mlp(opset=9, training=None, mask_read=False, seed=0):  # mask_read: give opset >= 10
    """x[2,32] -> Gemm 64 -> Relu -> Dropout -> Gemm 48 -> Relu -> Dropout -> Gemm 10 (AlexNet's
    classifier, transB weights with biases)."""
    rng = np.random.default_rng(seed)
    dims = [32, 64, 48, 10]
    nodes, inits = [], []
    x = "x"
    for i in range(3):
        w = (rng.standard_normal((dims[i + 1], dims[i])) / np.sqrt(dims[i])).astype(np.float32)
        b = (rng.standard_normal(dims[i + 1]) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"fc{i}_w"), numpy_helper.from_array(b, f"fc{i}_b")]
        nodes.append(helper.make_node("Gemm", [x, f"fc{i}_w", f"fc{i}_b"], [f"g{i}"], transB=1,
                                      name=f"fc{i}"))
        if i == 2:
            break
        nodes.append(helper.make_node("Relu", [f"g{i}"], [f"r{i}"], name=f"relu{i}"))
        node, extra = _dropout(f"r{i}", f"d{i}", opset, training, f"drop{i}")
        nodes.append(node)
        inits += extra
        x = f"d{i}"
    outputs = [helper.make_tensor_value_info("g2", TensorProto.FLOAT, [2, 10])]
    if mask_read:
        outputs.append(helper.make_tensor_value_info("drop0_mask", TensorProto.BOOL, [2, 64]))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [2, 32])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    full_check(model)
    return model


def _ffn_zeroed(model, blocks, keep):
    """The parent with fc2's weights on the dropped neurons zeroed, for every block."""
    z = onnx.ModelProto()
    z.CopyFrom(model)
    inits = {t.name: t for t in z.graph.initializer}
    for b in blocks:
        if b.name not in keep:
            continue
        arr = numpy_helper.to_array(inits[b.w2.name]).copy()
        dead = np.setdiff1d(np.arange(b.neurons), keep[b.name])
        index = [slice(None)] * arr.ndim
        index[b.w2_axis] = dead
        arr[tuple(index)] = 0
        inits[b.w2.name].CopyFrom(numpy_helper.from_array(arr, b.w2.name))
    return z


@pytest.mark.parametrize("opset,training", [(9, None), (13, None), (13, False)],
                         ids=["opset9-attr", "opset13-no-training-input", "opset13-training-false"])
def test_prune_ffn_walks_through_inference_dropout_and_chains_blocks(opset, training):
    model = _mlp(opset, training)
    cfg = pf.Config(ratio=0.5)
    res = apply_step(pf.PruneFfnPass(cfg, CTX), model)
    assert res.skipped is None, res.skipped
    out = res.model
    full_check(out)
    shapes = {t.name: tuple(t.dims) for t in out.graph.initializer}
    # fc1 (64 -> 32 neurons) and fc2 (48 -> 24): fc1's weight is block 2's fc2 AND block 3's fc1
    assert shapes["fc0_w"] == (32, 32) and shapes["fc0_b"] == (32,)
    assert shapes["fc1_w"] == (24, 32) and shapes["fc1_b"] == (24,)
    assert shapes["fc2_w"] == (10, 24) and shapes["fc2_b"] == (10,)
    assert sum(n.op_type == "Dropout" for n in out.graph.node) == 2
    blocks, _ = find_blocks(load_ir(model))
    keep = pf.choose_keep(blocks, {b.name: pf.magnitude(b) for b in blocks}, cfg)
    x = np.random.default_rng(1).standard_normal((2, 32)).astype(np.float32)
    ref, got = run(_ffn_zeroed(model, blocks, keep), x), run(out, x)
    assert rel_err(ref, got) < 1e-5
    assert rel_err(run(model, x), got) > 1e-3  # lossy against the real parent


@pytest.mark.parametrize("kw,why", [({"opset": 13, "training": True}, "training mode"),
                                    ({"opset": 13, "mask_read": True}, "mask output read")])
def test_prune_ffn_stops_at_a_dropout_that_is_not_the_identity(kw, why):
    blocks, reasons = find_blocks(load_ir(_mlp(**kw)))
    assert "fc0_w" not in [b.name for b in blocks]
    assert any(r.startswith("fc0_w") and why in r for r in reasons), reasons


def _conv_dropout_net(training=False, mask_read=False):
    """Conv 3->8 -> Relu -> Dropout(opset 13) -> Conv 8->4."""
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    w1 = rng.standard_normal((4, 8, 3, 3)).astype(np.float32)
    drop, extra = _dropout("r", "d", 13, training, "drop")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
         helper.make_node("Relu", ["c0"], ["r"], name="relu"), drop,
         helper.make_node("Conv", ["d", "w1"], ["y"], pads=[1, 1, 1, 1], name="conv1")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])] + (
            [helper.make_tensor_value_info("drop_mask", TensorProto.BOOL, [1, 8, 16, 16])]
            if mask_read else []),
        [numpy_helper.from_array(w0, "w0"), numpy_helper.from_array(w1, "w1"), *extra])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model


def test_prune_channels_walks_through_inference_dropout():
    model = _conv_dropout_net()
    cfg = pc.Config(ratio=0.5)
    res = apply_step(pc.PruneChannelsPass(cfg, CTX), model)
    assert res.skipped is None, res.skipped
    out = res.model
    full_check(out)
    shapes = {t.name: tuple(t.dims) for t in out.graph.initializer}
    assert shapes["w0"] == (4, 3, 3, 3) and shapes["w1"] == (4, 4, 3, 3)
    cg = pc.ChannelGraph(load_ir(model))
    keep = pc.choose_keep(cg, cfg)
    x = image(shape=(1, 3, 16, 16))
    assert rel_err(run(zeroed_parent(model, keep, cg), x), run(out, x)) < 1e-5


@pytest.mark.parametrize("kw,why", [({"training": True}, "training mode"),
                                    ({"mask_read": True}, "mask output read")])
def test_prune_channels_pins_a_dropout_that_is_not_the_identity(kw, why):
    cg = pc.ChannelGraph(load_ir(_conv_dropout_net(**kw)))
    assert cg.prunable() == []
    assert any(why in r for r in cg.blocked.values()), cg.blocked


@pytest.mark.parametrize("training", [False, True])
def test_prune_hidden_walks_through_inference_dropout_only(training):
    from test_prune_hidden import tiny_bert

    from deploykit.rewrite import prune_hidden as ph

    model = tiny_bert()  # Dropout on the embeddings' sum, as BERT has it
    for n in model.graph.node:
        n.input[:] = ["e2_drop" if i == "e2" else i for i in n.input]
    node, extra = _dropout("e2", "e2_drop", 20, training, "emb.drop")
    pos = next(i for i, n in enumerate(model.graph.node) if "e2" in n.output) + 1
    model.graph.node.insert(pos, node)
    model.graph.initializer.extend(extra)
    full_check(model)
    res = apply_step(ph.PruneHiddenPass(ph.Config(ratio=0.25), CTX), model)
    if training:
        assert res.skipped is not None and "training mode" in res.skipped
    else:
        assert res.skipped is None, res.skipped
        full_check(res.model)
        (st,) = res.details["streams"]
        assert st["kept"] < st["width"]
