import numpy as np
import onnx
import pytest

from _quant_models import conv_bn_net, mlp
from deploykit.errors import InputError
from deploykit.recipe import make_step
from deploykit.rewrite import StepContext
from deploykit.rewrite.quantize_dynamic import step
from deploykit.verify import compare, run_ort


def _cfg(**kw):
    return make_step("quantize-dynamic", kw).config


def test_dynamic_trio_matmul(tmp_path):
    model = mlp()
    ctx = StepContext(feeds={"x": np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)},
                      workdir=tmp_path)
    res = step(model, _cfg(), ctx)
    ops = [n.op_type for n in res.model.graph.node]
    assert ops.count("MatMulInteger") == 2 and "MatMul" not in ops
    assert res.details["ops"]["MatMulInteger"] == 2
    fid = compare(run_ort(model, ctx.feeds), run_ort(res.model, ctx.feeds))
    assert 0 < fid.max_rel and fid.cosine > 0.999
    onnx.checker.check_model(res.model, full_check=True)


def test_dynamic_leaves_conv_alone_unless_asked(tmp_path):
    ctx = StepContext(feeds={"x": np.ones((1, 3, 16, 16), np.float32)}, workdir=tmp_path)
    res = step(conv_bn_net(), _cfg(), ctx)
    ops = [n.op_type for n in res.model.graph.node]
    assert "Conv" in ops and "ConvInteger" not in ops and not res.notes
    res = step(conv_bn_net(), _cfg(include_conv="true"), ctx)
    assert "ConvInteger" in [n.op_type for n in res.model.graph.node]
    assert any("ConvInteger" in n and "quantize-static" in n for n in res.notes)


def test_dynamic_skips_already_quantized(tmp_path):
    ctx = StepContext(feeds={"x": np.ones((4, 64), np.float32)}, workdir=tmp_path)
    q = step(mlp(), _cfg(), ctx).model
    res = step(q, _cfg(), ctx)
    assert res.model is None and "already quantized" in res.skipped


def test_dynamic_bad_weight_type():
    with pytest.raises(InputError, match="weight_type"):
        _cfg(weight_type="fp8")
