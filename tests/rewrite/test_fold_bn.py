import numpy as np
import onnx
import pytest

from _quant_models import conv_bn_net, mlp
from deploykit.rewrite.recipe import make_step
from deploykit.rewrite import StepContext, apply_step
from deploykit.rewrite.fold_bn import FoldBnPass
from deploykit.fidelity import run_ort


@pytest.fixture
def ctx(tmp_path):
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    return StepContext(feeds={"x": x}, workdir=tmp_path)


def test_fold_bn_trio(ctx):
    model = conv_bn_net()
    res = apply_step(FoldBnPass(make_step("fold-bn", {}).config, ctx), model)
    ops = [n.op_type for n in res.model.graph.node]
    assert "BatchNormalization" not in ops and ops.count("Conv") == 2
    assert res.details["fired"] == 2 and res.fidelity_kind == "fp32"
    ref, got = run_ort(model, ctx.feeds), run_ort(res.model, ctx.feeds)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-4, atol=1e-5 * np.abs(ref[0]).max())
    onnx.checker.check_model(res.model, full_check=True)
    assert {i.name for i in res.model.graph.initializer}.isdisjoint({"g1", "m1", "v2"})


def test_fold_bn_skips_without_batchnorm(ctx):
    res = apply_step(FoldBnPass(make_step("fold-bn", {}).config, ctx), mlp())
    assert res.model is None and "no BatchNormalization" in res.skipped


def test_fold_bn_refuses_non_constant_statistics(ctx):
    model = conv_bn_net()
    stats = next(i for i in model.graph.initializer if i.name == "m1")
    model.graph.input.append(onnx.helper.make_tensor_value_info("m1", onnx.TensorProto.FLOAT, [16]))
    model.graph.initializer.remove(stats)
    res = apply_step(FoldBnPass(make_step("fold-bn", {}).config, ctx), model)
    ops = [n.op_type for n in res.model.graph.node]
    assert res.details["fired"] == 1 and ops.count("BatchNormalization") == 1
