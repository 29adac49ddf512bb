"""Models and checks shared by the pruning / low-rank / compact-filter rewrite tests."""

from __future__ import annotations

import collections
import functools
import io

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from deploykit.rewrite import StepContext

CTX = StepContext(feeds={})


def conv_relu_net(w: np.ndarray, seed: int = 0, **conv_attrs) -> onnx.ModelProto:
    """Conv(W, seeded bias; stride 2, pad 1, `conv_attrs`) -> Relu on a 1 x I x 16 x 16 input."""
    o, i = w.shape[:2]
    b = np.random.default_rng(seed).standard_normal(o).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "W", "b"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1],
                          name="conv", **conv_attrs),
         helper.make_node("Relu", ["y"], ["out"], name="relu")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, i, 16, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, o, 8, 8])],
        [numpy_helper.from_array(w.astype(np.float32), "W"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def op_types(model: onnx.ModelProto) -> collections.Counter:
    """Compute ops only: a Constant node lifted to an initializer is the same graph."""
    return collections.Counter(n.op_type for n in model.graph.node if n.op_type != "Constant")


def params(model: onnx.ModelProto) -> int:
    return int(sum(np.prod(t.dims) for t in model.graph.initializer))


def full_check(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


def export(module, shape) -> onnx.ModelProto:
    import torch

    f = io.BytesIO()
    torch.manual_seed(0)
    torch.onnx.export(module, (torch.randn(*shape),), f, dynamo=False)
    return onnx.load_from_string(f.getvalue())


@functools.lru_cache(maxsize=None)
def exported(name: str) -> bytes:
    """Exported zoo/example nets (BN folded by the exporter), cached across tests."""
    from deploykit.examples import zoo
    from deploykit.examples import tinyresnet

    if name == "tinyresnet":
        m = export(tinyresnet.build(), (1, 3, 64, 64))
    elif name == "resnet50":
        m = export(zoo.resnet50_like(width=16, num_classes=10), (1, 3, 64, 64))
    else:
        m = export(zoo.mobilenetv2_like(width_mult=0.35, num_classes=10), (1, 3, 64, 64))
    return m.SerializeToString()


def load(name: str) -> onnx.ModelProto:
    return onnx.load_from_string(exported(name))


def image(seed: int = 0, shape=(1, 3, 64, 64)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def bn_concat_net(seed: int = 0) -> onnx.ModelProto:
    """Unfolded BatchNorm, two branches joined by Concat, a depthwise conv over the concat, a
    per-channel Mul constant, and Flatten with 4x4 spatial positions into a Gemm."""
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(f(8, 3, 3, 3), "w0"),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "g"),
             numpy_helper.from_array(f(8) * 0.1, "beta"),
             numpy_helper.from_array(f(8) * 0.1, "mean"),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "var"),
             numpy_helper.from_array(f(6, 8, 3, 3), "wa"), numpy_helper.from_array(f(6), "ba"),
             numpy_helper.from_array(f(4, 8, 1, 1), "wb"),
             numpy_helper.from_array(f(10, 1, 3, 3), "wd"), numpy_helper.from_array(f(10), "bd"),
             numpy_helper.from_array(f(1, 10, 1, 1), "scale"),
             numpy_helper.from_array(f(5, 160) * 0.1, "fc_w"),
             numpy_helper.from_array(f(5), "fc_b")]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1], strides=[2, 2],
                         name="conv0"),
        helper.make_node("BatchNormalization", ["c0", "g", "beta", "mean", "var"], ["n0"],
                         name="bn0"),
        helper.make_node("Relu", ["n0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "wa", "ba"], ["ca"], pads=[1, 1, 1, 1], name="conva"),
        helper.make_node("Conv", ["r0", "wb"], ["cb"], name="convb"),
        helper.make_node("Concat", ["ca", "cb"], ["cat"], axis=1, name="cat"),
        helper.make_node("Conv", ["cat", "wd", "bd"], ["d"], group=10, pads=[1, 1, 1, 1],
                         strides=[2, 2], name="dw"),
        helper.make_node("Mul", ["d", "scale"], ["ds"], name="mul"),
        helper.make_node("Relu", ["ds"], ["dr"], name="relu1"),
        helper.make_node("Flatten", ["dr"], ["fl"], name="flatten"),
        helper.make_node("Gemm", ["fl", "fc_w", "fc_b"], ["y"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "bn_concat_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    full_check(model)
    return model


def zeroed_parent(model: onnx.ModelProto, keep: dict, cg) -> onnx.ModelProto:
    """The parent with the weights that READ the pruned channels set to zero: pruning must then
    be exact, whatever BatchNorm shifts or biases the dropped channels carried."""
    z = onnx.ModelProto()
    z.CopyFrom(model)
    inits = {t.name: t for t in z.graph.initializer}
    for p in cg.consumers:
        arr = numpy_helper.to_array(inits[p.value.name]).copy()
        dropped = np.setdiff1d(np.arange(arr.shape[p.axis]), cg.indices(p.segs, keep, p.spatial))
        index = [slice(None)] * arr.ndim
        index[p.axis] = dropped
        arr[tuple(index)] = 0
        inits[p.value.name].CopyFrom(numpy_helper.from_array(arr, p.value.name))
    return z
