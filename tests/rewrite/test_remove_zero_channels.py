import numpy as np
from _compress_models import (CTX, bn_concat_net, full_check, image, load, op_types, params,
                              rel_err, run, zeroed_parent)
from onnx import numpy_helper

from deploykit.rewrite import apply_step, prune_channels as pc
from deploykit.rewrite import remove_zero_channels as rz


def _set(model, name, fn):
    t = next(t for t in model.graph.initializer if t.name == name)
    t.CopyFrom(numpy_helper.from_array(fn(numpy_helper.to_array(t).copy()), name))


def _shape(model, name):
    return tuple(next(t for t in model.graph.initializer if t.name == name).dims)


def test_unread_channels_of_a_zeroed_parent_go_exactly_like_structured_pruning():
    model = load("tinyresnet")
    cg = pc.ChannelGraph(pc.load_ir(model))
    keep = pc.choose_keep(cg, pc.Config(ratio=0.5))
    parent = zeroed_parent(model, keep, cg)
    res = apply_step(rz.RemoveZeroChannelsPass(rz.Config(), CTX), parent)
    full_check(res.model)
    assert op_types(res.model) == op_types(parent)
    assert params(res.model) == params(
        apply_step(pc.PruneChannelsPass(pc.Config(ratio=0.5), CTX), model).model)
    x = image()
    assert rel_err(run(parent, x), run(res.model, x)) < 1e-5  # exact rewrite


def _zero_filter(w):
    w[[1, 5]] = 0
    return w


def test_zero_filters_through_batchnorm_only_when_its_shift_is_zero():
    model = bn_concat_net()
    _set(model, "w0", _zero_filter)
    # BN maps a zero channel to beta - mean*gamma/std != 0: the channel is alive, nothing to do
    assert apply_step(rz.RemoveZeroChannelsPass(rz.Config(), CTX), model).model is None
    for name in ("beta", "mean"):
        _set(model, name, lambda a: np.where(np.isin(np.arange(a.size), [1, 5]), 0, a))
    res = apply_step(rz.RemoveZeroChannelsPass(rz.Config(), CTX), model)
    full_check(res.model)
    assert _shape(res.model, "w0") == (6, 3, 3, 3) and _shape(res.model, "wa") == (6, 6, 3, 3)
    assert res.details["channels_removed"] == 2
    x = image(2, (1, 3, 16, 16))
    assert rel_err(run(model, x), run(res.model, x)) < 1e-5


def test_zero_channels_through_concat_and_depthwise():
    model = bn_concat_net()
    _set(model, "wb", lambda w: (w.__setitem__(2, 0), w)[1])  # concat channel 6+2 = 8 is zero
    # its depthwise bias is not zero
    assert apply_step(rz.RemoveZeroChannelsPass(rz.Config(), CTX), model).model is None
    _set(model, "bd", lambda b: (b.__setitem__(8, 0), b)[1])
    res = apply_step(rz.RemoveZeroChannelsPass(rz.Config(), CTX), model)
    full_check(res.model)
    assert _shape(res.model, "wb") == (3, 8, 1, 1) and _shape(res.model, "wd") == (9, 1, 3, 3)
    assert _shape(res.model, "fc_w") == (5, 9 * 16)
    x = image(3, (1, 3, 16, 16))
    assert rel_err(run(model, x), run(res.model, x)) < 1e-5


def test_nothing_zero_is_skipped():
    res = apply_step(rz.RemoveZeroChannelsPass(rz.Config(), CTX), bn_concat_net())
    assert res.model is None and "no channel" in res.skipped
