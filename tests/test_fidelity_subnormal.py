"""Subnormal outputs are compared as zeros (fidelity.py): an untrained deep net whose activations
decay below fp32's normal range (MobileViT in the zoo) is not refused on rounding noise, while an
error of the same relative size on normal values still fails."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from deploykit.fidelity import compare, judge, subnormal_outputs

TINY = float(np.finfo(np.float32).tiny)


def test_subnormal_noise_passes_the_fp32_tolerance():
    rng = np.random.default_rng(0)
    ref = (rng.standard_normal((1, 64)) * 1e-40).astype(np.float32)
    got = (ref.astype(np.float64) * 1.13).astype(np.float32)  # 13% off: MobileViT's torch vs ORT
    fid = compare([ref], [got])
    assert judge(fid, "fp32") is None and fid.max_rel == 0.0 and fid.cosine == 1.0
    assert subnormal_outputs(["y"], [ref]) == ["y"]
    # a runtime that flushed them to zero agrees too
    assert judge(compare([ref], [np.zeros_like(ref)]), "fp32") is None


def test_the_same_relative_error_on_normal_values_fails():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((1, 64)).astype(np.float32)
    assert "max rel error" in judge(compare([ref], [ref * np.float32(1.13)]), "fp32")
    # ... and on values just above the normal range (no blanket absolute tolerance)
    small = (ref * 1e-36).astype(np.float32)
    assert "max rel error" in judge(compare([small], [small * np.float32(1.001)]), "fp32")
    assert subnormal_outputs(["y"], [small]) == []
    assert subnormal_outputs(["z"], [np.zeros(3, np.float32)]) == []  # zeros are just zeros


def test_a_subnormal_entry_beside_normal_ones_may_be_flushed():
    ref = np.array([1.0, -2.0, 3e-39], np.float32)
    got = np.array([1.0, -2.0, 0.0], np.float32)
    assert compare([ref], [got]).max_abs == 0.0
    assert judge(compare([ref], [got * np.float32(1.01)]), "fp32") is not None


def test_nan_is_still_broken():
    ref = np.full(4, 1e-40, np.float32)
    assert judge(compare([ref], [np.full(4, np.nan, np.float32)]), "fp32") == \
        "outputs contain NaN or inf"


DECAY = textwrap.dedent('''
    import torch

    def build():
        """16 small-weight convs: activations fall from ~1 to ~1e-44, the last layers compute in
        subnormals, where torch and ONNX Runtime round differently (percent-level)."""
        torch.manual_seed(0)
        layers = []
        for _ in range(16):
            c = torch.nn.Conv2d(16, 16, 3, padding=1)
            torch.nn.init.normal_(c.weight, std=3e-4)
            torch.nn.init.zeros_(c.bias)
            layers += [c, torch.nn.GELU()]
        return torch.nn.Sequential(*layers).eval()

    def example_inputs():
        return (torch.randn(1, 16, 16, 16),)
''')


def test_export_of_a_net_with_subnormal_outputs_passes_with_a_warning(tmp_path):
    from deploykit.export.exporter import export_model

    src = tmp_path / "decay.py"
    src.write_text(DECAY)
    r = export_model(f"{src}:build", tmp_path / "decay.onnx")
    assert r.exporter == "dynamo" and all(c.ok for c in r.checks)
    assert any("entirely subnormal" in w and "not verified" in w for w in r.warnings)


@pytest.mark.parametrize("scale,floor", [(1e-40, TINY), (2.0, 2.0 * 1e-4)])
def test_bundle_golden_atol_has_the_subnormal_floor(scale, floor):
    from deploykit.bundle.package import tolerances

    tol = tolerances([("y", np.full(3, scale, np.float32))], "fp32", None)["y"]
    assert tol["atol"] == pytest.approx(floor)


def test_compress_notes_that_subnormal_outputs_are_not_judged(tmp_path):
    """A step on a model whose output is all subnormal passes (compared as zeros) and says that
    its figures do not judge that output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from deploykit.core import ModelRef
    from deploykit.rewrite import StepContext
    from deploykit.rewrite.recipe import parse_recipe, run_recipe

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((8, 32)) * 1e-21).astype(np.float32)
    w2 = (rng.standard_normal((32, 8)) * 1e-21).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "W2"], ["y"])], "decayed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(w2, "W2")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    feeds = {"x": np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)}
    res = run_recipe(ModelRef.from_path(path), parse_recipe("prune-ffn:ratio=0.5"),
                     StepContext(feeds=feeds, workdir=tmp_path / "w"))
    [rec] = res.steps
    assert rec.skipped is None and any("entirely subnormal" in n for n in rec.notes)
