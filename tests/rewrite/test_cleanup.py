import numpy as np
import onnx

from _quant_models import messy, mlp
from deploykit.rewrite.recipe import make_step
from deploykit.rewrite import StepContext, apply_step
from deploykit.rewrite.cleanup import CleanupPass
from deploykit.fidelity import run_ort


def _ctx(tmp_path, shape):
    return StepContext(feeds={"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)},
                       workdir=tmp_path)


def test_cleanup_trio(tmp_path):
    model, ctx = messy(), _ctx(tmp_path, (4, 8))
    res = apply_step(CleanupPass(make_step("cleanup", {}).config, ctx), model)
    assert [n.op_type for n in res.model.graph.node] == ["Mul"]
    assert len(res.model.graph.initializer) == 1  # folded c1 + c2; 'unused' gone
    assert res.details["nodes"] == [4, 1] and res.details["constants_folded"]
    np.testing.assert_allclose(run_ort(res.model, ctx.feeds)[0], run_ort(model, ctx.feeds)[0],
                               rtol=1e-6)
    onnx.checker.check_model(res.model, full_check=True)


def test_cleanup_without_folding_keeps_constant_add(tmp_path):
    res = apply_step(CleanupPass(make_step("cleanup", {"fold_constants": "false"}).config,
                                 _ctx(tmp_path, (4, 8))), messy())
    assert sorted(n.op_type for n in res.model.graph.node) == ["Add", "Mul"]


def test_cleanup_skips_clean_model(tmp_path):
    res = apply_step(CleanupPass(make_step("cleanup", {}).config, _ctx(tmp_path, (4, 64))), mlp())
    assert res.model is None and res.skipped.startswith("nothing to clean")
