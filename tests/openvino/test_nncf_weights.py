"""nncf-weights: int8 MatMul/Gemm weights behind DequantizeLinear (Conv left alone), a valid ORT
model, run by OpenVINO with run-time activation quantization, close to fp32; honest skips."""

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("nncf")

from deploykit.backends import registry as targets
from deploykit.core import ModelRef  # noqa: E402
from deploykit.errors import InputError  # noqa: E402
from deploykit.rewrite.recipe import parse_recipe, run_recipe
from deploykit.rewrite import StepContext, apply_step  # noqa: E402
from deploykit.rewrite import nncf_weights as cw
from deploykit.fidelity import compare, run_ort
from ov_models import attention, small_cnn  # noqa: E402


def _feeds(shape, seed):
    return {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


@pytest.mark.parametrize("mode", ["int8_asym", "int8_sym"])
def test_transformer_weights_int8_close_to_fp32_on_ort_and_openvino(tmp_path, mode):
    path = attention(tmp_path / "attn.onnx")
    model = onnx.load(path)
    feeds = _feeds((1, 16, 32), 3)
    res = apply_step(cw.NncfWeightsPass(cw.Config(mode=mode), StepContext(feeds=feeds)), model)
    assert res.skipped is None and res.fidelity_kind == "int8"
    weights = sum(n.op_type in ("MatMul", "Gemm") and n.input[1] in
                  {t.name for t in model.graph.initializer} for n in model.graph.node)
    assert res.details == {"mode": mode, "compressed_weights": weights} and weights >= 2
    inits = {t.name: t for t in res.model.graph.initializer}
    dq = [n for n in res.model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == weights and all(inits[n.input[0]].data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
               for n in dq)  # the weights are stored as int8 in the file
    assert ("QuantizeLinear" in {n.op_type for n in res.model.graph.node}) is False  # weights only
    onnx.checker.check_model(res.model, full_check=True)
    qpath = tmp_path / "attn_w8.onnx"
    onnx.save(res.model, str(qpath))
    assert qpath.stat().st_size < 0.5 * Path(path).stat().st_size  # int8 weights on disk
    ref = run_ort(path, feeds)
    assert compare(ref, run_ort(qpath, feeds)).cosine >= 0.999  # ORT: dequantized weights
    art = targets.get("ov-cpu").compile(ModelRef.from_path(qpath))
    assert compare(ref, art.run(feeds)).cosine >= 0.99  # OpenVINO: int8 activations too
    # the plugin keeps the weights int8 inside its MatMul kernels (not decompressed to f32 when
    # it compiles) and has run-time activation quantization on (the pinned OpenVINO reports it)
    fcs = [op.get_rt_info()["runtimePrecision"].astype(str)
           for op in art.compiled.get_runtime_model().get_ordered_ops()
           if op.get_rt_info()["layerType"].astype(str) == "FullyConnected"]
    assert fcs == [{"int8_asym": "u8", "int8_sym": "i8"}[mode]] * weights, fcs
    assert art.env["ov_dynamic_quantization_group_size"] > 0


def test_conv_weights_are_left_alone_and_the_file_stays_valid_for_ort(tmp_path):
    path = small_cnn(tmp_path / "cnn.onnx")
    feeds = _feeds((1, 3, 32, 32), 0)
    steps = parse_recipe("nncf-weights:mode=int8_sym")
    res = run_recipe(ModelRef.from_path(path), steps, StepContext(feeds=feeds, workdir=tmp_path))
    out = onnx.load(str(res.final.path))
    dq = [n for n in out.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 1 and "fc" in dq[0].input[0]  # the Gemm head only
    assert {n.input[1] for n in out.graph.node if n.op_type == "Conv"} <= \
        {t.name for t in out.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    assert res.fidelity.cosine >= 0.999


def test_skips_what_it_cannot_or_need_not_compress(tmp_path):
    path = attention(tmp_path / "attn.onnx")
    feeds = _feeds((1, 16, 32), 3)
    done = apply_step(cw.NncfWeightsPass(cw.Config(), StepContext(feeds=feeds)),
                      onnx.load(path)).model
    again = apply_step(cw.NncfWeightsPass(cw.Config(), StepContext(feeds=feeds)), done)
    assert again.model is None and "already quantized" in again.skipped
    relu = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "relu",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])]))
    nothing = apply_step(cw.NncfWeightsPass(cw.Config(), StepContext(feeds={})), relu)
    assert nothing.model is None and "no MatMul/Gemm with a constant weight" in nothing.skipped


def test_missing_nncf_is_a_skip_with_install_command(monkeypatch, tmp_path):
    path = attention(tmp_path / "attn.onnx")
    monkeypatch.setitem(sys.modules, "nncf", None)
    res = apply_step(cw.NncfWeightsPass(cw.Config(), StepContext(feeds={})), onnx.load(path))
    assert res.model is None and "pip install 'deploykit[openvino]'" in res.skipped


def test_bad_mode_is_input_error():
    with pytest.raises(InputError, match="nncf-weights: mode must be one of int8_asym, int8_sym"):
        parse_recipe("nncf-weights:mode=int4_sym")


def test_cli_bad_mode_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    from deploykit.cli import main

    path = attention(tmp_path / "attn.onnx")
    out = tmp_path / "attn.w8.onnx"
    assert main(["compress", str(path), "-r", "nncf-weights:mode=int4_sym", "-o", str(out),
                 "--no-measure", "--no-store"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nncf-weights: mode must be one of int8_asym, int8_sym" in err[0]
    assert not out.exists()
