import numpy as np
import pytest
from _compress_models import (CTX, conv_relu_net, full_check, image, load, op_types, rel_err,
                              run)
from onnx import numpy_helper

from deploykit.errors import InputError
from deploykit.rewrite import apply_step, compact as cc


def _conv_net(w: np.ndarray, seed: int = 0):
    return conv_relu_net(w, seed, dilations=[1, 1])  # an explicit default attribute, kept


def test_exact_when_each_input_slice_has_rank_multiplier():
    rng = np.random.default_rng(0)
    o, i = 32, 24  # every W[:, c] (32 x 9) has rank 2: depth multiplier 2 reproduces it
    w = np.einsum("oim,imk->oik", rng.standard_normal((o, i, 2)),
                  rng.standard_normal((i, 2, 9))).reshape(o, i, 3, 3)
    model = _conv_net(w)
    res = apply_step(cc.CompactPass(cc.Config(multiplier=2), CTX), model)
    full_check(res.model)
    assert op_types(res.model) == {"Conv": 2, "Relu": 1}
    groups = [a.i for n in res.model.graph.node for a in n.attribute if a.name == "group"]
    assert groups == [24]
    layer = res.details["layers"][0]
    assert layer["rel_frobenius_error"] < 1e-6 and layer["multiplier"] == 2
    x = image(0, (1, 24, 16, 16))
    assert rel_err(run(model, x), run(res.model, x)) < 1e-5
    lossy = apply_step(cc.CompactPass(cc.Config(multiplier=1), CTX), model).details["layers"][0]
    assert 0.1 < lossy["rel_frobenius_error"] < 1


def test_tinyresnet_matches_its_separable_reconstruction():
    model = load("tinyresnet")
    res = apply_step(cc.CompactPass(cc.Config(multiplier=1), CTX), model)
    full_check(res.model)
    fired = res.details["fired"]
    assert fired == 8  # every 3x3 conv but the 3-channel stem; the 1x1 shortcuts are refused
    assert sorted(set(why.split(" ")[0] for why in res.details["refused"].values())) == [
        "1x1", "3->32"]
    assert op_types(res.model)["Conv"] == op_types(model)["Conv"] + fired
    new = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}
    orig = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    ref = load("tinyresnet")
    for t in ref.graph.initializer:
        if f"{t.name}_dw" in new:
            dw, pw = new[f"{t.name}_dw"], new[f"{t.name}_pw"][:, :, 0, 0]  # [I,1,k,k], [O,I]
            w = pw[:, :, None, None] * dw[None, :, 0]
            t.CopyFrom(numpy_helper.from_array(w.astype(np.float32), t.name))
            layer = next(d for d in res.details["layers"] if d["initializer"] == t.name)
            real = np.linalg.norm(w - orig[t.name]) / np.linalg.norm(orig[t.name])
            assert layer["rel_frobenius_error"] == pytest.approx(real, rel=1e-3)
    x = image()
    assert rel_err(run(ref, x), run(res.model, x)) < 1e-4


def test_refusals_and_bad_config():
    model = _conv_net(np.random.default_rng(0).standard_normal((32, 24, 3, 3)))
    res = apply_step(cc.CompactPass(cc.Config(multiplier=9), CTX), model)
    assert res.model is None and "does not reduce MACs" in res.skipped
    with pytest.raises(InputError):
        apply_step(cc.CompactPass(cc.Config(multiplier=0), CTX), model)
