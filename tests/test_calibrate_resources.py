"""tools/calibrate_resources.py's planted models: the output is unchanged (ORT), the memory plant
really holds its constant, the cold-start plant is folded away at session creation."""

import numpy as np
import onnx

from _tools import load_tool


def test_planted_models_keep_the_output(tmp_path):
    import onnxruntime as ort

    cal = load_tool("calibrate_resources")
    base = cal.make_mlp(tmp_path / "base.onnx", width=64, depth=2)
    mem = cal.plant_memory(base, tmp_path / "mem.onnx", 1.0)
    init = cal.plant_cold_start(base, tmp_path / "init.onnx", steps=4, n=32)
    x = {"x": np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)}
    want = ort.InferenceSession(str(base)).run(None, x)[0]
    for p in (mem, init):
        got = ort.InferenceSession(str(p)).run(None, x)[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)  # float32 rounding
    big = [t for t in onnx.load(str(mem)).graph.initializer if t.name == "plant_big"][0]
    assert np.prod(big.dims) * 4 == 2**20  # the 1 MiB constant, [4096, 1, 64]
    assert sum(n.op_type == "MatMul" for n in onnx.load(str(init)).graph.node) == 2 + 4
