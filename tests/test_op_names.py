"""Per-op rows named by the user's layers (backends/op_names.py): ORT's fused and NCHWc-renamed
nodes mapped back to the model's node names, and for deploykit exports to the torch module, in
the rows, the JSON and the Chrome trace."""

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deploykit.backends import registry
from deploykit.core import LatencyReport, ModelRef, OpTime
from deploykit.onnxio import make_feeds


def _conv_relu(path):
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(2):
        w = (rng.standard_normal((16, 16 if i else 3, 3, 3)) * 0.1).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"block{i}.conv/Conv",
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"block{i}.act/Relu")]
        x = f"r{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["y"], name="pool/GlobalAveragePool"))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     [1, 3, 32, 32])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 1, 1])],
                          inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _per_op(path, trace=None):
    art = registry.get("ort-cpu").compile(ModelRef.from_path(path))
    return art.per_op(make_feeds(list(art.inputs), 0, {}, None), runs=3, trace_path=trace)


def test_fused_conv_relu_rows_carry_the_model_names(tmp_path):
    trace = tmp_path / "trace.json"
    ops = _per_op(_conv_relu(tmp_path / "m.onnx"), str(trace))
    convs = {o.name: o for o in ops if o.op_type == "Conv"}
    assert convs and all(o.name != o.layer for o in convs.values())  # ORT renamed them
    assert {o.layer for o in convs.values()} == {"block0.conv/Conv + block0.act/Relu",
                                                 "block1.conv/Conv + block1.act/Relu"}
    assert {o.module for o in convs.values()} == {"block0.conv", "block1.conv"}
    events = [e for e in json.loads(trace.read_text()) if e.get("cat") == "Node"]
    assert {e["args"]["model_node"] for e in events} >= {o.layer for o in convs.values()}
    # JSON round trip keeps them; an old report's rows without them still load
    rep = LatencyReport(samples_ms=(1.0,), target="ort-cpu", target_config={}, artifact_id="a",
                        model_sha256="0", model_path="m", env={}, stop_reason="time-cap",
                        per_op=tuple(ops))
    back = LatencyReport.from_dict(json.loads(rep.to_json()))
    assert back.per_op == tuple(ops)
    assert OpTime(**{"name": "n", "op_type": "Conv", "total_ms": 1.0, "share": 1.0}).layer == ""


def test_exported_models_name_rows_by_torch_module(tinyresnet_onnx):
    model = onnx.load(str(tinyresnet_onnx))
    meta = {p.value for n in model.graph.node for p in n.metadata_props
            if p.key == "deploykit.module"}
    assert {"stem", "layers.1.down", "fc"} <= meta  # kept through onnxsim
    ops = _per_op(tinyresnet_onnx)
    assert {o.module for o in ops} >= {"stem", "fc"}
    assert all(o.layer for o in ops if o.op_type in ("Conv", "Gemm", "FusedConv"))
