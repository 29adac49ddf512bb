"""Every recipe step is an onnx-ir pass whose `modified` flag tells the truth: False (and the
model untouched, byte for byte) on a model the step cannot change, True (and a different graph)
on one it can."""

import importlib.util

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from _compress_models import bn_concat_net
from _quant_models import conv_bn_net, messy, mlp
from onnx import TensorProto, helper, numpy_helper

from deploykit.onnxio import io_specs, make_feeds
from deploykit.rewrite import StepContext, StepPass, StepReport, recipe
from onnx_models import conv_relu_gemm, tiny_attention, tiny_encoder


def _unnamed(model):
    """The same graph with every node name cleared (the factorization rules name the nodes
    they check: only when they apply)."""
    for n in model.graph.node:
        n.name = ""
    return model


def _relu_only():
    return helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])]),
        opset_imports=[helper.make_opsetid("", 17)])


def _bn_on_input():
    """A BatchNormalization with no Conv/Gemm before it: fold-bn's rules run and none fires."""
    c = 4
    inits = [numpy_helper.from_array(np.full(c, v, np.float32), n)
             for n, v in (("g", 1.5), ("b", 0.1), ("m", 0.2), ("v", 0.9))]
    return helper.make_model(helper.make_graph(
        [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], name="bn")],
        "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 2, 2])], inits),
        opset_imports=[helper.make_opsetid("", 17)])


def _conv_relu_gemm(tmp_path):
    """3 -> 8 channels: below the factorization steps' min_channels."""
    return onnx.load(conv_relu_gemm(tmp_path / "crg.onnx"))


def _dead_channel():
    """bn_concat_net with concat channel 8 zero through the depthwise conv: remove-zero-channels
    removes it."""
    model = bn_concat_net()
    for t in model.graph.initializer:
        if t.name in ("wb", "bd"):
            arr = numpy_helper.to_array(t).copy()
            arr[2 if t.name == "wb" else 8] = 0
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
    return model


def _attention(tmp_path):
    return onnx.load(str(tiny_attention(tmp_path / "attn.onnx")))


# step -> (config fields, a model it changes, a model it cannot change); each model built by
# a function of tmp_path
CASES = {
    "cleanup": ({}, lambda p: messy(), lambda p: mlp()),
    "fold-bn": ({}, lambda p: conv_bn_net(), lambda p: _bn_on_input()),
    "prune-unstructured": ({"min_size": "16"}, lambda p: mlp(), lambda p: messy()),
    "prune-channels": ({}, lambda p: bn_concat_net(), lambda p: mlp()),
    "prune-ffn": ({}, lambda p: mlp(), lambda p: conv_bn_net()),
    "prune-heads": ({}, _attention, lambda p: mlp()),
    "prune-hidden": ({"output_width": "pad", "round_to": "4"},
                     lambda p: onnx.load(str(tiny_encoder(p / "enc.onnx"))), lambda p: mlp()),
    "remove-zero-channels": ({}, lambda p: _dead_channel(), lambda p: bn_concat_net()),
    "lowrank": ({}, lambda p: mlp(), lambda p: _unnamed(conv_bn_net())),
    "tucker": ({}, lambda p: conv_bn_net(), lambda p: _unnamed(_conv_relu_gemm(p))),
    "compact": ({}, lambda p: conv_bn_net(), lambda p: _unnamed(_conv_relu_gemm(p))),
    "quantize-static": ({}, lambda p: conv_bn_net(), lambda p: messy()),
    "quantize-dynamic": ({}, lambda p: mlp(), lambda p: messy()),
    "nncf-int8": ({}, lambda p: conv_bn_net(), lambda p: messy()),
    "nncf-weights": ({}, lambda p: mlp(), lambda p: messy()),
    "fp16": ({}, lambda p: conv_bn_net(), lambda p: _relu_only()),
}


def test_every_registered_step_is_an_onnx_ir_pass_with_a_truthfulness_case():
    assert set(CASES) == set(recipe.STEPS)
    for name in recipe.STEPS:
        cls = recipe.pass_class(name)
        assert issubclass(cls, ir.passes.PassBase) and issubclass(cls, StepPass), name
        assert cls.__name__ == recipe.pass_name(name) and cls.fidelity_kind in (
            "fp32", "fp16", "int8", "lossy"), name


def _run(name, model, tmp_path):
    """(input IR model, its bytes before, PassResult, the pass) of step `name` on `model`."""
    feeds = make_feeds(io_specs(model)[0], seed=0)
    ctx = StepContext(feeds=feeds, calibration=(feeds,), workdir=tmp_path)
    step_pass = recipe.pass_class(name)(recipe.make_step(name, CASES[name][0]).config, ctx)
    irm = ir.from_proto(model)
    before = ir.to_proto(irm).SerializeToString(deterministic=True)
    result = step_pass(irm)
    assert isinstance(result, ir.passes.PassResult) and isinstance(step_pass.report, StepReport)
    assert (result.model is irm) == step_pass.in_place  # in place, or a new model
    return irm, before, result, step_pass


def _bytes(model) -> bytes:
    return ir.to_proto(model).SerializeToString(deterministic=True)


@pytest.mark.parametrize("name", sorted(CASES))
def test_modified_is_truthful(name, tmp_path):
    if name.startswith("nncf") and importlib.util.find_spec("nncf") is None:
        pytest.skip("nncf not installed: pip install 'deploykit[openvino]'")
    _, changes, cannot = CASES[name]

    irm, before, result, step_pass = _run(name, cannot(tmp_path), tmp_path)
    assert result.modified is False and step_pass.report.skipped, name
    assert _bytes(irm) == before  # untouched, whether in place or functional
    assert _bytes(result.model) == before

    irm, before, result, step_pass = _run(name, changes(tmp_path), tmp_path)
    assert result.modified is True and step_pass.report.skipped is None, step_pass.report
    out = ir.to_proto(result.model)
    assert out.graph.SerializeToString(deterministic=True) != \
        onnx.load_from_string(before).graph.SerializeToString(deterministic=True)
    onnx.checker.check_model(out, full_check=True)
    if not step_pass.in_place:
        assert _bytes(irm) == before  # a functional pass never touches its input
