"""Shared fixtures: the bundled demo model exported once per session, and a tiny MLP as ONNX."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TINYRESNET = REPO / "deploykit" / "examples" / "tinyresnet.py"


@pytest.fixture(scope="session")
def tinyresnet_export(tmp_path_factory):
    """ExportResult of deploykit/examples/tinyresnet.py:build with a dynamic batch dim."""
    from deploykit.export import export_model

    out = tmp_path_factory.mktemp("tinyresnet") / "tinyresnet.onnx"
    return export_model(f"{TINYRESNET}:build", out, dynamic_batch=True)


@pytest.fixture(scope="session")
def tinyresnet_onnx(tinyresnet_export) -> Path:
    """Path of the exported tinyresnet (input x[batch,3,176,176] -> output[batch,100])."""
    return Path(tinyresnet_export.model.path)


def make_mlp(path, seed: int = 0, sizes=(16, 32, 4)) -> Path:
    """x[batch,16] -> MatMul+Add -> Relu -> MatMul+Add -> y[batch,4], seeded weights."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes, prev = [], [], "x"
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        inits += [numpy_helper.from_array(rng.standard_normal((a, b)).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(rng.standard_normal(b).astype(np.float32), f"b{i}")]
        last = i == len(sizes) - 2
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"], name=f"matmul{i}"),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], ["y" if last else f"a{i}"],
                                   name=f"add{i}")]
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"relu{i}"))
            prev = f"r{i}"
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", sizes[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return Path(path)


@pytest.fixture(scope="session")
def mlp_onnx(tmp_path_factory) -> Path:
    """A tiny MLP ONNX file (x[batch,16] -> y[batch,4]) built without any exporter."""
    return make_mlp(tmp_path_factory.mktemp("mlp") / "mlp.onnx")
