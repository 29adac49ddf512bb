"""Layers as units for the per-layer latency table (layer_table.py): a model partitioned into
units, each cut out as a tiny ONNX model with its real input values, and keyed by its shape
signature, so the thousands of layers that candidates share are timed once.

A "unit" is one compute op (Conv, MatMul, Gemm, their integer / QLinear forms) with its constant
inputs (weights, their DequantizeLinear), the DequantizeLinear of its activation and the
single-consumer ops that follow it (BatchNorm, Relu, QuantizeLinear): what a runtime fuses into one
kernel. Every other op is a unit of its own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

ANCHORS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "MatMulInteger", "QLinearConv",
    "QLinearMatMul", "FusedConv", "FusedMatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
    "Attention", "MultiHeadAttention", "LSTM", "GRU", "RNN", "Einsum"})
_SMALL = 64  # int32/int64 constants (shapes, axes) up to this size count by value in a signature


@dataclass(frozen=True)
class Unit:
    nodes: tuple[int, ...]  # indices into graph.node, in graph order
    inputs: tuple[str, ...]  # non-constant tensors entering the unit
    outputs: tuple[str, ...]  # tensors leaving it (consumed elsewhere or graph outputs)
    label: str  # "Conv /layers.0/conv1/Conv"
    op_type: str  # the anchor's (or single op's) type


def _constant_tensors(model) -> set[str]:
    """Initializers, Constant outputs and everything computed only from them."""
    g = model.graph
    const = {t.name for t in g.initializer} | {""}
    for node in g.node:  # graph order is topological
        if node.op_type == "Constant" or (node.input and all(i in const for i in node.input)):
            const.update(node.output)
    return const - {""}


def partition(model) -> list[Unit]:
    """Split a (topologically sorted) graph into units; every non-constant node lands in one.

    A DequantizeLinear feeding an anchor is copied into the anchor's unit (the anchor then reads the
    quantized tensor, as the runtime's fused kernel does); it keeps a unit of its own only while it
    also feeds other ops."""
    g = model.graph
    const = _constant_tensors(model)
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(g.node):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    graph_outputs = {o.name for o in g.output}
    groups: dict[int, list[int]] = {}  # unit id -> member node indices (own)
    shared: dict[int, list[int]] = {}  # unit id -> DequantizeLinear nodes copied in
    producer: dict[str, int] = {}  # tensor -> unit id
    is_const = [bool(n.output) and all(o in const for o in n.output) for n in g.node]

    def single_use(t: str) -> bool:
        return len(consumers.get(t, ())) == 1 and t not in graph_outputs

    for i, node in enumerate(g.node):
        if is_const[i]:
            continue
        dyn = [t for t in node.input if t and t not in const]
        uid = None
        if node.op_type in ANCHORS:
            uid = i
            groups[uid], shared[uid] = [i], []
            for t in dyn:
                u = producer.get(t)
                if u is None or len(groups.get(u, ())) != 1:
                    continue
                p = groups[u][0]
                if g.node[p].op_type != "DequantizeLinear" or u == uid:
                    continue
                if single_use(t):
                    groups[uid].insert(0, p)
                    del groups[u]
                else:
                    shared[uid].append(p)
        elif node.op_type != "DequantizeLinear" and len(dyn) == 1 and dyn[0] in producer \
                and single_use(dyn[0]) and producer[dyn[0]] in groups:
            uid = producer[dyn[0]]
            groups[uid].append(i)
        if uid is None:
            uid = i
            groups[uid], shared[uid] = [i], []
        for o in node.output:
            producer[o] = uid

    units = []
    for uid, own in groups.items():
        members = set(own) | set(shared.get(uid, ()))
        own_out = {o for m in own for o in g.node[m].output}
        produced = {o for m in members for o in g.node[m].output}
        inputs, outputs = [], []
        for m in sorted(members):
            for t in g.node[m].input:
                if t and t not in const and t not in produced and t not in inputs:
                    inputs.append(t)
        for m in sorted(own):
            for o in g.node[m].output:
                if o in own_out and (o in graph_outputs or any(c not in members
                                                               for c in consumers.get(o, ()))):
                    outputs.append(o)
        if not outputs:
            continue  # dead code: contributes nothing to latency
        nodes = [g.node[m] for m in sorted(members)]
        anchor = next((n for n in nodes if n.op_type in ANCHORS), g.node[own[0]])
        units.append(Unit(tuple(sorted(members)), tuple(inputs), tuple(outputs),
                          f"{anchor.op_type} {anchor.name}".strip(), anchor.op_type))
    return units


def capture_values(model, feeds: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Values of intermediate tensors for one input batch (ORT, optimizations off so every
    tensor still exists)."""
    import onnx
    import onnxruntime as ort

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type for v in list(inferred.graph.value_info) + list(inferred.graph.output)
             + list(inferred.graph.input)}
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    wanted = [n for n in names if n not in have and n not in feeds]
    for n in wanted:
        if n not in types:
            from ..errors import DeployKitError

            raise DeployKitError(f"cannot type intermediate tensor '{n}' for the layer table")
        vi = m.graph.output.add()
        vi.name = n
        vi.type.CopyFrom(types[n])
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in sess.get_outputs()]
    values = dict(zip(out_names, sess.run(None, dict(feeds))))
    values.update(feeds)
    return values


def unit_model(model, unit: Unit, values: Mapping[str, np.ndarray]):
    """The unit as a standalone ONNX model with its own initializers."""
    from onnx import helper

    g = model.graph
    init_names = {t.name for t in g.initializer}
    made_by = {o: i for i, n in enumerate(g.node) for o in n.output}
    keep, todo = set(unit.nodes), list(unit.nodes)
    while todo:  # constant producers (Constant, weight DequantizeLinear, shape arithmetic)
        for t in g.node[todo.pop()].input:
            p = made_by.get(t)
            if t and t not in init_names and t not in unit.inputs and p is not None and p not in keep:
                keep.add(p)
                todo.append(p)
    nodes = [g.node[i] for i in sorted(keep)]
    used = {t for n in nodes for t in n.input}
    inits = [t for t in g.initializer if t.name in used]

    def vi(name):
        a = np.asarray(values[name])
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)

    graph = helper.make_graph(nodes, "unit", [vi(n) for n in unit.inputs],
                              [vi(n) for n in unit.outputs], initializer=inits)
    m = helper.make_model(graph, opset_imports=list(model.opset_import))
    m.ir_version = model.ir_version
    return m


def _value_key(a: np.ndarray):
    return a.tolist() if a.dtype.kind in "iu" and a.dtype.itemsize >= 4 and a.size <= _SMALL \
        else None


def signature(tiny) -> str:
    """Shape signature of a unit model: ops, attributes, wiring, tensor shapes and dtypes, and the
    values of small integer constants (reshape targets, axes); weights, biases and quantization
    parameters only by shape and dtype, since dense kernels do not run faster on other values."""
    from onnx import numpy_helper

    ids: dict[str, int] = {}

    def tid(name: str) -> int | None:
        return None if not name else ids.setdefault(name, len(ids))

    parts: list[Any] = []
    for v in tiny.graph.input:
        dims = [d.dim_value for d in v.type.tensor_type.shape.dim]
        parts.append(("in", tid(v.name), v.type.tensor_type.elem_type, dims))
    for t in tiny.graph.initializer:
        a = numpy_helper.to_array(t)
        parts.append(("init", tid(t.name), str(a.dtype), list(a.shape), _value_key(a)))
    for n in tiny.graph.node:
        attrs = []
        for a in n.attribute:
            if a.HasField("t"):
                arr = numpy_helper.to_array(a.t)
                attrs.append((a.name, str(arr.dtype), list(arr.shape), _value_key(arr)))
            else:
                attrs.append((a.name, str(a).replace(f'name: "{a.name}"', "")))
        parts.append((n.domain, n.op_type, [tid(i) for i in n.input], [tid(o) for o in n.output],
                      sorted(attrs, key=lambda x: x[0])))
    for v in tiny.graph.output:
        parts.append(("out", tid(v.name)))
    parts.append(sorted((o.domain, o.version) for o in tiny.opset_import))
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:24]
