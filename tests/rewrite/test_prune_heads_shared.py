"""prune-heads on attention weights shared across layers (ALBERT): the applications of the same
Q/K/V/output projections are one group, pruned once with one kept set of heads, exact on the
kept heads; a projection shared with anything else pins the group with the reason."""

import numpy as np
import onnx
import pytest
from _compress_models import full_check
from onnx import numpy_helper

from deploykit.fidelity import run_ort
from deploykit.onnxio import io_specs, make_feeds
from deploykit.rewrite import StepContext, apply_step
from deploykit.rewrite import prune_heads as ph
from onnx_models import tiny_attention

CTX = StepContext(feeds={})


def _shared(tmp_path, names=("q.w", "q.b", "k.w", "k.b", "v.w", "v.b", "o.w")) -> onnx.ModelProto:
    """tiny_attention's two layers with layer 1 reading layer 0's `names` instead of its own."""
    model = onnx.load(str(tiny_attention(tmp_path / "att.onnx")))
    for node in model.graph.node:
        for i, x in enumerate(node.input):
            if x.startswith("l1.") and x[3:] in names:
                node.input[i] = "l0." + x[3:]
    keep = [t for t in model.graph.initializer if not (t.name.startswith("l1.")
                                                         and t.name[3:] in names)]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    onnx.checker.check_model(model, full_check=True)
    return model


def _feeds(model, seq=7):
    feeds = make_feeds(io_specs(model)[0], seed=2, overrides={"input_ids": (1, seq)})
    feeds["attention_mask"][0, -2:] = 0
    return feeds


def test_shared_attention_is_pruned_once_exactly_on_the_kept_heads(tmp_path):
    model = _shared(tmp_path)
    res = apply_step(ph.PruneHeadsPass(ph.Config(ratio=0.5), CTX), model)
    assert res.skipped is None
    full_check(res.model)
    [blk] = res.details["blocks"]
    assert (blk["applications"], blk["heads"], blk["kept"]) == (2, 4, 2)
    w = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}
    assert w["l0.q.w"].shape == w["l0.v.w"].shape == (16, 8) and w["l0.o.w"].shape == (8, 16)
    ref = onnx.ModelProto()
    ref.CopyFrom(model)
    for t in ref.graph.initializer:
        if t.name == "l0.o.w":
            arr = numpy_helper.to_array(t).copy()
            for h in blk["removed"]:
                arr[h * 4:(h + 1) * 4] = 0
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
    feeds = _feeds(model)
    got, want = run_ort(res.model, feeds)[0], run_ort(ref, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert np.abs(got - run_ort(model, feeds)[0]).max() > 1e-2
    assert run_ort(res.model, _feeds(model, seq=11))[0].shape == (1, 11, 16)


@pytest.mark.parametrize("names,why", [
    (("q.w",), "query weight 'l0.q.w' is shared by 2 nodes and MatMul"),
    (("o.w",), "output projection weight 'l0.o.w' is shared by 2 nodes and MatMul"),
])
def test_a_projection_shared_with_another_block_pins_the_group(tmp_path, names, why):
    res = apply_step(ph.PruneHeadsPass(ph.Config(ratio=0.5), CTX), _shared(tmp_path, names))
    assert res.skipped is not None and why in res.skipped


def test_prune_hidden_slices_each_shared_projection_once(tmp_path):
    """The hidden stream reads and writes the shared projections at every application: each is
    sliced once (rows of Q/K/V, columns of W_out), and the result is the parent with the removed
    channels silenced in every constant that writes the stream (no norm here: exact)."""
    from deploykit.rewrite import prune_hidden as phd

    model = _shared(tmp_path)
    res = apply_step(phd.PruneHiddenPass(phd.Config(ratio=0.5, output_width="pad"), CTX), model)
    assert res.skipped is None
    full_check(res.model)
    w = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}
    assert w["l0.q.w"].shape == (8, 16) and w["l0.o.w"].shape == (16, 8)
    removed = res.details["streams"][0]["removed"]
    ref = onnx.ModelProto()
    ref.CopyFrom(model)
    for t in ref.graph.initializer:
        arr = numpy_helper.to_array(t).copy()
        if t.name in ("emb", "l0.o.w"):
            arr[:, removed] = 0
        elif t.name in ("l0.o.b", "l1.o.b"):  # the output biases are not shared
            arr[removed] = 0
        else:
            continue
        t.CopyFrom(numpy_helper.from_array(arr, t.name))
    feeds = _feeds(model)
    got, want = run_ort(res.model, feeds)[0], run_ort(ref, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
