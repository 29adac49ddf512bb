import numpy as np
import onnx
import pytest
from _compress_models import full_check, op_types, params
from onnx import numpy_helper

from deploykit.cli import main
from deploykit.errors import InputError
from deploykit.onnxio import io_specs, make_feeds
from deploykit.rewrite import StepContext, apply_step
from deploykit.rewrite import prune_heads as ph
from deploykit.fidelity import run_ort
from onnx_models import tiny_attention

CTX = StepContext(feeds={})


def _inits(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _feeds(model, seq=7):
    feeds = make_feeds(io_specs(model)[0], seed=2, overrides={"input_ids": (1, seq)})
    feeds["attention_mask"][0, -2:] = 0  # padding: the mask path must still broadcast
    return feeds


def _zeroed_parent(model, details, head_dim=4):
    """The reference built by hand: the parent with the removed heads' rows of W_out zeroed."""
    ref = onnx.ModelProto()
    ref.CopyFrom(model)
    removed = {b["weight"].split(".")[0]: b["removed"] for b in details["blocks"]}
    for t in ref.graph.initializer:
        if t.name.endswith(".o.w"):
            w = numpy_helper.to_array(t).copy()
            for h in removed[t.name.split(".")[0]]:
                w[h * head_dim:(h + 1) * head_dim, :] = 0
            t.CopyFrom(numpy_helper.from_array(w, t.name))
    return ref


def test_prunes_heads_exactly_on_the_kept_ones(tmp_path):
    model = onnx.load(str(tiny_attention(tmp_path / "att.onnx")))
    res = apply_step(ph.PruneHeadsPass(ph.Config(ratio=0.5), CTX), model)
    assert res.skipped is None and res.fidelity_kind == "lossy"
    out = res.model
    full_check(out)
    assert op_types(out) == op_types(model)
    w = _inits(out)
    for i in (0, 1):
        assert w[f"l{i}.q.w"].shape == w[f"l{i}.k.w"].shape == w[f"l{i}.v.w"].shape == (16, 8)
        assert w[f"l{i}.q.b"].shape == (8,) and w[f"l{i}.o.w"].shape == (8, 16)
    assert [(b["heads"], b["kept"]) for b in res.details["blocks"]] == [(4, 2), (4, 2)]
    assert sorted(a.tolist() for n, a in w.items() if n.endswith("_shape")) == [
        [1, -1, 2, 4]] * 6 + [[1, -1, 8]] * 2
    assert params(out) < params(model)
    feeds = _feeds(model)
    got = run_ort(out, feeds)[0]
    ref = run_ort(_zeroed_parent(model, res.details), feeds)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert np.abs(got - run_ort(model, feeds)[0]).max() > 1e-2  # lossy against the real parent
    # the sequence stays dynamic
    assert run_ort(out, _feeds(model, seq=11))[0].shape == (1, 11, 16)


def test_per_block_ratios_errors_and_refusals(tmp_path, mlp_onnx):
    model = onnx.load(str(tiny_attention(tmp_path / "att.onnx")))
    res = apply_step(ph.PruneHeadsPass(ph.Config(ratio=0.0, layers=("l1.q:0.75",)), CTX), model)
    assert [b["kept"] for b in res.details["blocks"]] == [4, 1]
    with pytest.raises(InputError, match="not found"):
        apply_step(ph.PruneHeadsPass(ph.Config(layers=("nope:0.5",)), CTX), model)
    with pytest.raises(InputError, match="ratio"):
        apply_step(ph.PruneHeadsPass(ph.Config(ratio=1.5), CTX), model)
    res = apply_step(ph.PruneHeadsPass(ph.Config(), CTX), onnx.load(str(mlp_onnx)))
    assert res.skipped.startswith("no prunable attention block")


def test_cli_compress_prune_heads_then_int8(tmp_path):
    src = tiny_attention(tmp_path / "att.onnx")
    out = tmp_path / "out.onnx"
    assert main(["compress", str(src), "-r", "prune-heads:ratio=0.25; quantize-dynamic", "-o",
                 str(out), "--no-measure", "--no-store"]) == 0
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
