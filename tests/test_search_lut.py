"""The per-layer latency table: graph partition, unit models, signatures, caching, predictor."""

from pathlib import Path

import numpy as np
import onnx
import pytest

from deploykit.search import layer_table as L, units as U

from _search_models import residual_cnn


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> Path:
    return residual_cnn(tmp_path_factory.mktemp("lut") / "cnn.onnx")


@pytest.fixture(scope="module")
def cnn_int8(cnn, tmp_path_factory) -> Path:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from deploykit.rewrite.calibration import data_reader

    out = tmp_path_factory.mktemp("lut") / "cnn_int8.onnx"
    rng = np.random.default_rng(0)
    batches = [{"x": rng.standard_normal((1, 3, 24, 24)).astype(np.float32)} for _ in range(2)]
    quantize_static(str(cnn), str(out), data_reader(batches), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return out


def _feeds():
    return {"x": np.random.default_rng(1).standard_normal((1, 3, 24, 24)).astype(np.float32)}


@pytest.mark.parametrize("which", ["cnn", "cnn_int8"])
def test_units_cover_graph_and_reproduce_values(which, request):
    import onnxruntime as ort

    model = onnx.load(str(request.getfixturevalue(which)))
    units = L.partition(model)
    const = U._constant_tensors(model)
    dynamic = {i for i, n in enumerate(model.graph.node)
               if not all(o in const for o in n.output)}
    assert dynamic == set(i for u in units for i in u.nodes)
    anchors = [u for u in units if u.op_type in ("Conv", "Gemm")]
    assert len(anchors) == 6  # stem, conv1, conv2, skip, fc1, fc2
    values = L.capture_values(model, _feeds(),
                              sorted({t for u in units for t in u.inputs + u.outputs}))
    if which == "cnn_int8":  # activation and weight DequantizeLinear go with their Conv/Gemm
        for u in anchors:
            ops = [n.op_type for n in L.unit_model(model, u, values).graph.node]
            assert ops.count("DequantizeLinear") >= 2 and ops[-1] == "QuantizeLinear", ops
            assert model.graph.node[u.nodes[0]].op_type == "DequantizeLinear"
    for u in units:
        tiny = L.unit_model(model, u, values)
        onnx.checker.check_model(tiny, full_check=True)
        sess = ort.InferenceSession(tiny.SerializeToString(), providers=["CPUExecutionProvider"])
        out = sess.run(None, {n: values[n] for n in u.inputs})
        for name, got in zip(u.outputs, out):
            np.testing.assert_allclose(got.astype(np.float64), values[name].astype(np.float64),
                                       rtol=1e-4, atol=1e-4)


def test_signature_ignores_weight_values_but_not_shapes(tmp_path):
    a = onnx.load(str(residual_cnn(tmp_path / "a.onnx", seed=0)))
    b = onnx.load(str(residual_cnn(tmp_path / "b.onnx", seed=1)))
    c = onnx.load(str(residual_cnn(tmp_path / "c.onnx", seed=0, c=8)))

    def sigs(m):
        units = L.partition(m)
        vals = L.capture_values(m, _feeds(), sorted({t for u in units for t in u.inputs + u.outputs}))
        return [L.signature(L.unit_model(m, u, vals)) for u in units]

    assert sigs(a) == sigs(b)
    assert sigs(a)[0] != sigs(c)[0]  # stem: 16 vs 8 output channels


def test_layer_table_times_each_shape_once_and_reuses_the_store(cnn, tmp_path):
    store: dict[str, float] = {}
    timed: list[str] = []

    def measure(sig, path, feeds):
        m = onnx.load(str(path))
        assert set(feeds) == {i.name for i in m.graph.input}
        timed.append(sig)
        ms = 0.1 * len(m.graph.node)  # synthetic: cost = node count
        store[sig] = ms
        return ms

    model = onnx.load(str(cnn))
    t1 = L.LayerTable(measure, store.get, tmp_path)
    est = t1.estimate(model, _feeds())
    assert len(timed) == len(set(timed)) == est.new_units
    assert est.total_ms == pytest.approx(sum(u.ms for u in est.units))
    units = L.partition(model)
    vals = L.capture_values(model, _feeds(), sorted({t for u in units for t in u.inputs + u.outputs}))
    assert est.total_ms == pytest.approx(0.1 * sum(
        len(L.unit_model(model, u, vals).graph.node) for u in units))
    again = t1.estimate(model, _feeds())
    assert again.new_units == 0 and again.total_ms == est.total_ms
    t2 = L.LayerTable(measure, store.get, tmp_path)  # a restarted search: all from the store
    n = len(timed)
    assert t2.estimate(model, _feeds()).total_ms == est.total_ms
    assert len(timed) == n and t2.reused == len(set(timed))
    assert not list(tmp_path.glob("unit-*.onnx"))  # unit files do not pile up


def test_predictor_on_synthetic_table():
    # whole = 1.3 x table (the whole model adds per-run overhead the isolated units do not see)
    table = np.array([10.0, 4.0, 7.0, 2.5, 5.5])
    whole = 1.3 * table
    p1 = L.Predictor(((table[0], whole[0]),))
    assert p1.predict(5.0) == pytest.approx(6.5)  # the baseline's ratio alone
    p = L.Predictor(tuple(zip(table[:3], whole[:3])))
    for x, y in zip(table[3:], whole[3:]):
        assert p.predict(x) == pytest.approx(y)
    # one measurement taken under foreign load (3x) does not move the scale
    noisy = L.Predictor(tuple(zip(table, whole * np.array([1.0, 3.0, 1.02, 0.99, 1.01]))))
    assert noisy.scale() == pytest.approx(1.3, rel=0.02)
    # clustered points that a fitted line would extrapolate below zero stay positive
    clustered = L.Predictor(((9.77, 58.9), (9.67, 33.2), (11.99, 95.2)))
    assert clustered.predict(3.24) == pytest.approx(3.24 * 58.9 / 9.77)
    with pytest.raises(ValueError):
        L.Predictor(()).scale()
