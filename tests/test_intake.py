"""Model intake on models shaped like the onnx package's zoo files: IR 3, opset 9, weights built by
ConstantOfShape from initializers that are also graph inputs."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deploykit.cli import main
from deploykit.errors import InputError
from deploykit.intake import OpsetNeed, intake
from deploykit.fidelity import run_ort


def zoo_like(path: Path) -> Path:
    """x[1,3,16,16] -> Conv(8) -> Relu -> Conv(8) -> GlobalAveragePool -> Flatten -> Gemm(4) ->
    Softmax, every weight = ConstantOfShape(shape initializer that is also an input) * a random
    per-channel scale, opset 9 / IR 3."""
    rng = np.random.default_rng(0)
    inits, inputs, nodes = [], [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                [1, 3, 16, 16])], []

    def weight(name, shape):
        shp = np.array(shape, np.int64)
        inits.append(numpy_helper.from_array(shp, f"{name}__SHAPE"))
        inputs.append(helper.make_tensor_value_info(f"{name}__SHAPE", TensorProto.INT64,
                                                    [len(shape)]))
        nodes.append(helper.make_node("ConstantOfShape", [f"{name}__SHAPE"], [f"{name}_c"],
                                      value=numpy_helper.from_array(np.array([0.05], np.float32))))
        scale = rng.uniform(0.5, 1.5, (shape[0],) + (1,) * (len(shape) - 1)).astype(np.float32)
        inits.append(numpy_helper.from_array(scale, f"{name}_s"))
        inputs.append(helper.make_tensor_value_info(f"{name}_s", TensorProto.FLOAT, scale.shape))
        nodes.append(helper.make_node("Mul", [f"{name}_c", f"{name}_s"], [name]))
        return name

    nodes_tail = [
        helper.make_node("Conv", ["x", weight("w1", [8, 3, 3, 3]), weight("b1", [8])], ["c1"],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", weight("w2", [8, 8, 3, 3])], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", weight("fc", [4, 8]), weight("fcb", [4])], ["logits"],
                         transB=1),
        helper.make_node("Softmax", ["logits"], ["y"]),
    ]
    graph = helper.make_graph(nodes + nodes_tail, "zoo_like", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_intake_normalizes_and_verifies(tmp_path):
    src = zoo_like(tmp_path / "zoo.onnx")
    res = intake(src, tmp_path / "work", need=OpsetNeed(13, "a test needs it"))
    assert res.changed and res.path != src and res.opset == 13
    model = onnx.load(str(res.path))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["x"]
    assert "ConstantOfShape" not in {n.op_type for n in model.graph.node}
    weights = {t.name for t in model.graph.initializer}
    assert all(n.input[1] in weights for n in model.graph.node if n.op_type in ("Conv", "Gemm"))
    text = " ".join(res.notes)
    assert "10 initializer(s) were also graph inputs" in text
    assert "upgraded opset 9 -> 13" in text and "a test needs it" in text
    assert res.max_rel is not None and res.max_rel <= 1e-6
    x = {"x": np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)}
    np.testing.assert_allclose(run_ort(str(res.path), x)[0], run_ort(str(src), x)[0], rtol=1e-5)


def test_intake_passes_a_normal_model_through_untouched(tmp_path, mlp_onnx):
    res = intake(mlp_onnx, tmp_path)
    assert not res.changed and res.path == mlp_onnx and res.notes == ()
    assert not list(tmp_path.iterdir())


def test_intake_refuses_a_broken_file_in_one_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a valid ONNX model"):
        intake(bad, tmp_path / "w")


def test_compress_zoo_like_model_int8_and_pruning(tmp_path, capsys):
    src = zoo_like(tmp_path / "zoo.onnx")
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    rc = main(["compress", str(src), "-r", "prune-channels:ratio=0.5; quantize-static", "-o",
               str(out), "--no-measure", "--no-store", "--json", str(report)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "upgraded opset 9 -> 13" in cap.err and "per_channel" in cap.err
    assert "treated as constants" in cap.err
    data = json.loads(report.read_text())
    assert data["intake"]["changed"] and data["intake"]["opset"] == 13
    assert [s["skipped"] for s in data["recipe"]["steps"]] == [None, None]
    q = onnx.load(str(out))
    onnx.checker.check_model(q, full_check=True)
    ops = {n.op_type for n in q.graph.node}
    assert "DequantizeLinear" in ops and "ConstantOfShape" not in ops
    # the output Softmax stays fp32: its int8 range [0, 1] would flatten the probabilities
    assert any(n.op_type == "Softmax" for n in q.graph.node)


def _zoo_file(name: str) -> Path:
    import onnx as onnx_pkg

    path = Path(onnx_pkg.__file__).parent / "backend/test/data/light" / name
    assert path.is_file(), "the onnx wheel ships its light zoo models"
    return path


def test_compress_real_zoo_file_int8_and_pruning(tmp_path, capsys):
    src = _zoo_file("light_squeezenet.onnx")  # the fewest weights: IR 3, opset 9, 39 computed
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    rc = main(["compress", str(src), "-r", "prune-channels:ratio=0.5; quantize-static", "-o",
               str(out), "--no-measure", "--no-store", "--json", str(report)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "folded the constant subgraphs producing 39 weight(s)" in cap.err
    steps = json.loads(report.read_text())["recipe"]["steps"]
    assert [s["skipped"] for s in steps] == [None, None]
    assert steps[0]["details"]["params_after"] < 0.4 * steps[0]["details"]["params_before"]
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
