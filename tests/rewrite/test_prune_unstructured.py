import numpy as np
import pytest
from _compress_models import CTX, bn_concat_net, full_check, image, op_types, rel_err, run
from onnx import numpy_helper

from deploykit.errors import InputError
from deploykit.rewrite import apply_step, prune_unstructured as pu

WEIGHTS = ("w0", "wa", "wb", "wd", "fc_w")  # Conv/Gemm weights of >= 16 elements


def _inits(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _reference(model, masks):
    ref = bn_concat_net()
    for t in ref.graph.initializer:
        if t.name in masks:
            t.CopyFrom(numpy_helper.from_array(
                np.where(masks[t.name], numpy_helper.to_array(t), 0).astype(np.float32), t.name))
    return ref


def test_per_layer_zeroes_smallest_magnitudes_exactly():
    model = bn_concat_net()
    res = apply_step(pu.PruneUnstructuredPass(pu.Config(ratio=0.5, min_size=16), CTX), model)
    full_check(res.model)
    assert op_types(res.model) == op_types(model)
    before, after = _inits(model), _inits(res.model)
    masks = {}
    for name in WEIGHTS:
        a = np.abs(before[name])
        masks[name] = a > np.sort(a.reshape(-1))[int(round(0.5 * a.size)) - 1]
        assert (after[name] == 0).mean() == pytest.approx(0.5, abs=1 / a.size)
    for name in ("g", "beta", "ba", "bd", "fc_b", "scale"):  # BN, biases, constants untouched
        np.testing.assert_array_equal(after[name], before[name])
    x = image(0, (1, 3, 16, 16))
    assert rel_err(run(_reference(model, masks), x), run(res.model, x)) < 1e-6
    assert res.details["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert any("no speedup" in n for n in res.notes)
    assert res.details["expected_speedup_on_dense_kernels"] is False


def test_global_threshold_is_shared_across_layers():
    model = bn_concat_net()
    res = apply_step(pu.PruneUnstructuredPass(pu.Config(ratio=0.6, scope="global", min_size=16),
                                              CTX), model)
    before, after = _inits(model), _inits(res.model)
    names = [layer["weight"] for layer in res.details["layers"]]
    allw = np.concatenate([np.abs(before[n]).reshape(-1) for n in names])
    cut = np.sort(allw)[int(round(0.6 * allw.size)) - 1]
    for n in names:
        np.testing.assert_array_equal(after[n], np.where(np.abs(before[n]) > cut, before[n], 0))
    sparsities = {layer["weight"]: layer["sparsity"] for layer in res.details["layers"]}
    assert len(set(sparsities.values())) > 1  # layers differ, unlike per-layer pruning


def test_nothing_big_enough_is_skipped_and_bad_ratio_refused():
    res = apply_step(pu.PruneUnstructuredPass(pu.Config(min_size=10**6), CTX), bn_concat_net())
    assert res.model is None and "no constant" in res.skipped
    with pytest.raises(InputError):
        apply_step(pu.PruneUnstructuredPass(pu.Config(ratio=1.0), CTX), bn_concat_net())
    with pytest.raises(InputError):
        apply_step(pu.PruneUnstructuredPass(pu.Config(scope="net"), CTX), bn_concat_net())
