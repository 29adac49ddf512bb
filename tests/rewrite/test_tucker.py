import numpy as np
import pytest
from _compress_models import (CTX, conv_relu_net, full_check, image, load, op_types, rel_err,
                              run)
from onnx import numpy_helper

from deploykit.errors import InputError
from deploykit.rewrite import apply_step, tucker as lc


def _tucker_weight(rng, o=32, i=24, ro=8, ri=6):
    core = rng.standard_normal((ro, ri, 3, 3))
    return np.einsum("rskl,or,is->oikl", core, rng.standard_normal((o, ro)),
                     rng.standard_normal((i, ri)))


def test_exact_on_a_tucker_rank_weight():
    model = conv_relu_net(_tucker_weight(np.random.default_rng(0)))
    res = apply_step(lc.TuckerPass(lc.Config(energy=0.9999999), CTX), model)
    full_check(res.model)
    assert op_types(res.model) == {"Conv": 3, "Relu": 1}
    layer = res.details["layers"][0]
    assert layer["ranks"] == [8, 6] and layer["macs_after"] < layer["macs_before"] / 4
    x = image(0, (1, 24, 16, 16))
    assert rel_err(run(model, x), run(res.model, x)) < 1e-5


def _reconstructed_parent(parent, out):
    """The parent with each factorized conv weight replaced by its Tucker-2 reconstruction."""
    new = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    for t in parent.graph.initializer:
        if f"{t.name}_tucker_core" in new:
            u_in = new[f"{t.name}_tucker_in"][:, :, 0, 0]
            u_out = new[f"{t.name}_tucker_out"][:, :, 0, 0]
            w = np.einsum("rskl,or,si->oikl", new[f"{t.name}_tucker_core"], u_out, u_in,
                          optimize=True)
            t.CopyFrom(numpy_helper.from_array(w.astype(np.float32), t.name))
    return parent


def test_tinyresnet_matches_its_reconstruction_and_reports_real_error():
    model = load("tinyresnet")
    res = apply_step(lc.TuckerPass(lc.Config(ratio=0.5), CTX), model)
    full_check(res.model)
    fired = res.details["fired"]
    assert fired == 8 and op_types(res.model)["Conv"] == op_types(model)["Conv"] + 2 * fired
    # the 3-channel stem is too small; the strided 1x1 shortcuts would cost more MACs
    assert {why.split(" ")[0] for why in res.details["refused"].values()} == {"3->32", "ranks"}
    x = image()
    ref = _reconstructed_parent(load("tinyresnet"), res.model)
    assert rel_err(run(ref, x), run(res.model, x)) < 1e-4
    orig = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    recon = {t.name: numpy_helper.to_array(t) for t in ref.graph.initializer}
    for layer in res.details["layers"]:
        name = layer["initializer"]
        real = np.linalg.norm(recon[name] - orig[name]) / np.linalg.norm(orig[name])
        assert layer["rel_frobenius_error"] == pytest.approx(real, rel=1e-3, abs=1e-6)


def test_refusals_and_bad_config():
    model = conv_relu_net(np.random.default_rng(0).standard_normal((4, 4, 3, 3)))
    res = apply_step(lc.TuckerPass(lc.Config(), CTX), model)
    assert res.model is None and "min_channels" in res.skipped
    with pytest.raises(InputError):
        apply_step(lc.TuckerPass(lc.Config(ratio=0.0), CTX), model)
    with pytest.raises(InputError):
        apply_step(lc.TuckerPass(lc.Config(energy=2.0), CTX), model)
