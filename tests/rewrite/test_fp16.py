import numpy as np
import onnx

from _quant_models import conv_bn_net
from deploykit.rewrite.recipe import make_step
from deploykit.rewrite import StepContext, apply_step
from deploykit.rewrite.fp16 import Fp16Pass
from deploykit.fidelity import compare, judge, run_ort


def test_fp16_trio_keeps_fp32_io(tmp_path):
    model = conv_bn_net()
    ctx = StepContext(feeds={"x": np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)},
                      workdir=tmp_path, target="ort-cpu")
    res = apply_step(Fp16Pass(make_step("fp16", {}).config, ctx), model)
    conv_w = next(t for t in res.model.graph.initializer if t.name == "w1")
    assert conv_w.data_type == onnx.TensorProto.FLOAT16
    assert res.model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert "Cast" in {n.op_type for n in res.model.graph.node}
    fid = compare(run_ort(model, ctx.feeds), run_ort(res.model, ctx.feeds))
    assert fid.max_abs > 0 and judge(fid, "fp16") is None
    onnx.checker.check_model(res.model, full_check=True)
    assert any("fp16" in n for n in res.notes)  # a CPU target is warned


def test_fp16_skips_quantized(tmp_path):
    from deploykit.rewrite.quantize_dynamic import Config, QuantizeDynamicPass
    from _quant_models import mlp

    ctx = StepContext(feeds={"x": np.ones((4, 64), np.float32)}, workdir=tmp_path)
    q = apply_step(QuantizeDynamicPass(Config(), ctx), mlp()).model
    res = apply_step(Fp16Pass(make_step("fp16", {}).config, ctx), q)
    assert res.model is None and "quantized" in res.skipped
