"""quantize-static's calibration options: `method=entropy` (a real KL threshold search, not the
minmax range ORT's own call gives) and `bias_correction`."""

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from _quant_models import conv_bn_net
from deploykit.errors import InputError
from deploykit.fidelity import run_ort
from deploykit.rewrite import StepContext, apply_step
from deploykit.rewrite.quantize_static import QuantizeStaticPass
from deploykit.rewrite.recipe import make_step


def _batches(n, seed, outliers=False):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
        if outliers:  # a few pixels far out in the tail: what minmax wastes its levels on
            x.flat[rng.integers(0, x.size, 3)] = 40.0
        out.append({"x": x})
    return out


def _quantize(tmp_path, model, batches, **kw):
    tmp_path.mkdir()
    ctx = StepContext(feeds=batches[0], calibration=tuple(batches),
                      calibration_is_synthetic=False, workdir=tmp_path)
    return apply_step(QuantizeStaticPass(make_step("quantize-static", kw).config, ctx), model)


def _activation_scales(model):
    """Scale of each activation QuantizeLinear, by the tensor it quantizes."""
    inits = {t.name: t for t in model.graph.initializer}
    return {n.input[0]: float(numpy_helper.to_array(inits[n.input[1]]))
            for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits}


def test_entropy_clips_outliers_where_minmax_keeps_them(tmp_path):
    model, batches = conv_bn_net(), _batches(4, 0, outliers=True)
    minmax = _activation_scales(_quantize(tmp_path / "mm", model, batches).model)
    res = _quantize(tmp_path / "kl", model, batches, method="entropy", entropy_bins="1024")
    entropy = _activation_scales(res.model)
    assert res.details["method"] == "entropy" and set(entropy) == set(minmax)
    # the input's range is set by the outliers (40 vs a standard normal): KL clips it
    assert entropy["x"] < 0.5 * minmax["x"]
    assert entropy != minmax  # ORT's own entropy call gave exactly the minmax scales


def test_bias_correction_removes_the_mean_shift_of_coarse_weights(tmp_path):
    model = conv_bn_net()
    w1 = next(t for t in model.graph.initializer if t.name == "w1")
    w = numpy_helper.to_array(w1).copy()
    w[0] *= 30.0  # one huge channel: per-tensor int8 leaves the others a few levels
    w1.CopyFrom(numpy_helper.from_array(w, "w1"))
    calib, held = _batches(8, 1), _batches(8, 2)
    kw = dict(per_channel="false")
    plain = _quantize(tmp_path / "plain", model, calib, **kw)
    fixed = _quantize(tmp_path / "bc", model, calib, bias_correction="true", **kw)
    assert fixed.details["bias_corrected_layers"] == 3  # conv1, conv2, fc

    def shift(q):  # mean output error over unseen batches: the bias int8 weights leave
        d = [run_ort(q, b)[0] - run_ort(model, b)[0] for b in held]
        return float(np.abs(np.mean(d, axis=0)).mean())

    before, after = shift(plain.model), shift(fixed.model)
    assert after < 0.5 * before, (before, after)
    biases = lambda m: [numpy_helper.to_array(t) for t in m.graph.initializer  # noqa: E731
                        if t.data_type == onnx.TensorProto.INT32]
    assert any(not np.array_equal(a, b) for a, b in zip(biases(plain.model), biases(fixed.model)))


@pytest.mark.parametrize("kw", [{"entropy_bins": "128"}, {"bias_correction": "maybe"}])
def test_calibration_options_bad_values(kw):
    with pytest.raises(InputError, match="entropy_bins|true/false"):
        make_step("quantize-static", kw)


@pytest.mark.parametrize("seed", [0, 1])
def test_kl_threshold_matches_onnxruntime(seed):
    """The vectorised search chooses ORT's own threshold (its slow Python loop, same histogram)."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    from deploykit.rewrite._entropy_calib import kl_threshold

    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.standard_normal(20000), rng.standard_normal(50) * 12]).astype(np.float32)
    t = np.float32(np.abs(x).max())
    hist, edges = np.histogram(x, 512, range=(-t, t))
    edges = edges.astype(np.float32)
    ort = HistogramCollector("entropy", False, 512, 128, None, None)
    want = ort.get_entropy_threshold((hist, edges, x.min(), x.max()), 128)
    got = kl_threshold(hist, edges, x.min(), x.max())
    assert float(got[0]) == float(want[0]) and float(got[1]) == float(want[1])
    assert float(got[1]) < 0.9 * float(x.max())  # it clipped the tail


def test_bias_correction_says_when_there_is_nothing_to_correct(tmp_path):
    from _quant_models import mlp

    rng = np.random.default_rng(3)
    batches = [{"x": rng.standard_normal((4, 64)).astype(np.float32)} for _ in range(2)]
    # without quant_pre_process the MatMul+Add pairs stay apart (it would fuse them into Gemm)
    res = _quantize(tmp_path / "mlp", mlp(), batches, bias_correction="true", preprocess="false")
    assert res.details["bias_corrected_layers"] == 0
    assert any("nothing" in n or "no int8 Conv/Gemm" in n for n in res.notes)
