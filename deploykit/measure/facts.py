"""What a model costs, read from its ONNX graph: parameters, weight bytes, MACs/FLOPs per node.

Counting from the graph (not from torch hooks) means the figures describe exactly the file that
gets compiled, including what export and rewrites did to it. Shapes come from ONNX shape
inference after symbolic input dims are pinned (default 1, e.g. batch=1).

Conventions: a MAC is one multiply-accumulate; FLOPs = 2 x MACs for Conv/Gemm/MatMul/Einsum/
Attention/RNNs, plus one FLOP per output element for a bias; elementwise and normalisation ops
count a rough number of FLOPs per element (table below); data movement (Reshape, Transpose,
Gather, ...) counts zero. Integer ops (MatMulInteger, ConvInteger, QLinear*) are counted like their
float versions and flagged `int8`, as are Conv/Gemm/MatMul whose two operands both come out of
DequantizeLinear (QDQ models, which runtimes fuse into int8 kernels), so a roofline can use the
int8 ceiling for them.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

# Approximate FLOPs per output element of elementwise / normalisation ops.
ELEMENTWISE_COST = {
    **dict.fromkeys(
        ["Add", "Sub", "Mul", "Div", "Neg", "Abs", "Relu", "Max", "Min", "Sum", "Mean", "Clip",
         "LeakyRelu", "PRelu", "Sqrt", "Reciprocal", "Pow", "Exp", "Log", "Floor", "Ceil",
         "Round", "Sign", "Where", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual",
         "Not", "And", "Or", "Xor", "Mod", "IsNaN", "IsInf", "Elu", "Selu", "Celu",
         "ThresholdedRelu", "DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear"], 1),
    **dict.fromkeys(["Sigmoid", "Tanh", "Erf", "HardSigmoid", "HardSwish", "Softplus",
                     "Softsign", "Sin", "Cos", "Gelu", "Mish", "FastGelu"], 4),
    "BatchNormalization": 2,
    **dict.fromkeys(["LayerNormalization", "InstanceNormalization", "GroupNormalization",
                     "SimplifiedLayerNormalization", "RMSNormalization",
                     "LpNormalization", "MeanVarianceNormalization"], 5),
    **dict.fromkeys(["Softmax", "LogSoftmax"], 5),
}
# Reductions cost one FLOP per *input* element.
REDUCTIONS = {"ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
              "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
              "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "ArgMax", "ArgMin"}
INT_OPS = {"MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul"}
# In a QDQ model these run as int8 kernels when both operands come out of DequantizeLinear.
QDQ_FUSABLE = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
SUBGRAPH_OPS = {"If", "Loop", "Scan"}

# Tensor types that hold indices/shapes rather than weights.
_INDEX_TYPES = {6, 7, 12, 13}  # int32, int64, uint32, uint64
_BOOL_STRING = {8, 9}  # string, bool


def _numel(shape) -> int | None:
    if shape is None or any(d is None for d in shape):
        return None
    return math.prod(shape)


def _elem_bits(data_type: int) -> int:
    import onnx

    if data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return 4
    return onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize * 8


def _weights(model) -> tuple[int, int]:
    """(parameter count, bytes): initializers and Constant tensors that hold weights.

    Index/shape tensors (int32/int64) and scalars (eps, quantization scales) are not weights."""
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            tensors += [a.t for a in node.attribute if a.name == "value"]
    params = nbytes = 0
    for t in tensors:
        n = math.prod(t.dims) if t.dims else 1
        if n <= 1 or t.data_type in _INDEX_TYPES or t.data_type in _BOOL_STRING:
            continue
        params += n
        nbytes += n * _elem_bits(t.data_type) // 8
    return params, nbytes


def file_bytes(path: str | os.PathLike) -> int:
    """Size on disk of an ONNX file plus the external-data files it references."""
    import onnx

    p = Path(path)
    total = p.stat().st_size
    model = onnx.load(str(p), load_external_data=False)
    seen = set()
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location" and e.value not in seen:
                seen.add(e.value)
                f = p.parent / e.value
                total += f.stat().st_size if f.exists() else 0
    return total


def infer_shapes(model, dim_values: Mapping[str, int] | None = None
                 ) -> tuple[dict[str, tuple[int | None, ...]], dict[str, int]]:
    """name -> shape for every value shape inference can resolve, with symbolic input dims pinned
    (`dim_values`, else 1). Also returns the pins that were applied."""
    import onnx

    dim_values = dict(dim_values or {})
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]
    for vi in m.graph.output:  # declared symbolic dims would shadow the inferred ones
        vi.type.tensor_type.ClearField("shape")
    assumed: dict[str, int] = {}
    inits = {i.name for i in m.graph.initializer}
    for vi in m.graph.input:
        if vi.name in inits:
            continue
        for d in vi.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                key = d.dim_param or "?"
                v = int(dim_values.get(key, 1))
                assumed[key] = v
                d.Clear()
                d.dim_value = v
    try:
        m = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - partial shapes are still useful; unknowns get reported
        pass
    shapes = _known_shapes(m)
    if any(_unknown(shapes.get(o)) for n in m.graph.node for o in n.output if o):
        shapes.update({k: v for k, v in _shapes_by_folding(m).items() if not _unknown(v)})
    return shapes, assumed


def _unknown(shape) -> bool:
    return shape is None or None in shape


def _known_shapes(m) -> dict[str, tuple[int | None, ...]]:
    shapes: dict[str, tuple[int | None, ...]] = {}
    for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                    for d in t.shape.dim)
    for t in m.graph.initializer:
        shapes[t.name] = tuple(t.dims)
    for node in m.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    shapes[node.output[0]] = tuple(a.t.dims)
    return shapes


def _shapes_by_folding(m) -> dict[str, tuple[int | None, ...]]:
    """Shapes that need values to infer (Range over a Shape, as in exported attention masks):
    onnxsim constant-folds the shape computations of the pinned model. Tensor names survive
    folding, so the shapes apply to the original nodes."""
    import onnx
    import onnxsim

    from ..onnxio import quiet

    light = onnx.ModelProto()
    light.CopyFrom(m)
    big = [t for t in light.graph.initializer if math.prod(t.dims) > 4096]
    for t in big:  # weights become typed inputs: shapes stay known, nothing heavy gets folded
        light.graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims))
        light.graph.initializer.remove(t)
    try:
        with quiet():
            folded, _ = onnxsim.simplify(light, perform_optimization=False)
    except Exception:  # noqa: BLE001 - e.g. > 2 GB or an op onnxsim cannot run
        return {}
    return _known_shapes(folded)


def _attr(node, name: str, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _shape(shapes, node, i):
    if i >= len(node.input) or not node.input[i]:
        return None
    return shapes.get(node.input[i])


def _has_input(node, i: int) -> bool:
    return i < len(node.input) and bool(node.input[i])


def _einsum_macs(node, shapes, out_numel: int) -> int | None:
    """MACs = output elements x product of the contracted index sizes."""
    eq = _attr(node, "equation").decode() if isinstance(_attr(node, "equation"), bytes) \
        else _attr(node, "equation")
    eq = eq.replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    sizes: dict[str, int] = {}
    for i, term in enumerate(terms):
        shape = _shape(shapes, node, i)
        if shape is None or any(d is None for d in shape):
            return None
        head, ell, tail = term.partition("...")
        for letter, dim in zip(head, shape):
            sizes[letter] = dim
        if tail:
            for letter, dim in zip(tail, shape[len(shape) - len(tail):]):
                sizes[letter] = dim
    if not rhs and "->" not in eq:  # implicit mode: letters seen once are kept, sorted
        counts = Counter("".join(terms).replace(".", ""))
        rhs = "".join(sorted(c for c, n in counts.items() if n == 1))
    contracted = set(sizes) - set(rhs.replace(".", ""))
    return out_numel * math.prod(sizes[c] for c in contracted)


def node_cost(node, shapes) -> tuple[int, int] | None:
    """(FLOPs, MACs) of one node, or None when its shapes are unknown."""
    op = node.op_type
    out = shapes.get(node.output[0]) if node.output else None
    out_n = _numel(out)
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w_i, b_i = {"Conv": (1, 2), "ConvInteger": (1, None), "QLinearConv": (3, 8)}[op]
        w = _shape(shapes, node, w_i)
        if out_n is None or _numel(w) is None:
            return None
        macs = out_n * math.prod(w[1:])
        bias = out_n if b_i is not None and _has_input(node, b_i) else 0
        return 2 * macs + bias, macs
    if op == "ConvTranspose":
        x, w = _shape(shapes, node, 0), _shape(shapes, node, 1)
        if _numel(x) is None or _numel(w) is None or out_n is None:
            return None
        macs = _numel(x) * math.prod(w[1:])
        return 2 * macs + (out_n if _has_input(node, 2) else 0), macs
    if op == "Gemm":
        a = _shape(shapes, node, 0)
        if out_n is None or a is None or None in a:
            return None
        k = a[0] if _attr(node, "transA", 0) else a[1]
        macs = out_n * k
        return 2 * macs + (out_n if _has_input(node, 2) else 0), macs
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul"):
        a = _shape(shapes, node, 0)
        if out_n is None or not a or a[-1] is None:
            return None
        macs = out_n * a[-1]
        return 2 * macs, macs
    if op == "Einsum":
        if out_n is None:
            return None
        macs = _einsum_macs(node, shapes, out_n)
        return None if macs is None else (2 * macs, macs)
    if op == "Attention":
        return _attention_cost(node, shapes)
    if op in ("LSTM", "GRU", "RNN"):
        x, r = _shape(shapes, node, 0), _shape(shapes, node, 2)
        if _numel(x) is None or _numel(r) is None:
            return None
        seq, batch = (x[1], x[0]) if _attr(node, "layout", 0) else (x[0], x[1])
        dirs, gh, hidden = r
        macs = seq * batch * dirs * gh * (x[2] + hidden)
        return 2 * macs, macs
    if op in ("MaxPool", "AveragePool", "LpPool"):
        k = _attr(node, "kernel_shape")
        return None if out_n is None or not k else (out_n * math.prod(k), 0)
    if op in REDUCTIONS:
        n = _numel(_shape(shapes, node, 0))
        return None if n is None else (n, 0)
    if op in ELEMENTWISE_COST:
        return None if out_n is None else (out_n * ELEMENTWISE_COST[op], 0)
    return 0, 0


def _attention_cost(node, shapes) -> tuple[int, int] | None:
    """ONNX Attention (opset 23): QK^T and softmax(.)V; 4-D [B,H,S,E] or 3-D [B,S,H*E] inputs."""
    q, k, v = (_shape(shapes, node, i) for i in range(3))
    if any(s is None or None in s for s in (q, k, v)):
        return None
    if len(q) == 4:
        b, h, s, e = q
        kv_len, ev = k[2], v[3]
    else:
        h = _attr(node, "q_num_heads")
        kv_heads = _attr(node, "kv_num_heads")
        if not h or not kv_heads:
            return None
        b, s, e = q[0], q[1], q[2] // h
        kv_len, ev = k[1], v[2] // kv_heads
    macs = b * h * s * kv_len * (e + ev)
    return 2 * macs + ELEMENTWISE_COST["Softmax"] * b * h * s * kv_len, macs


def model_facts(model, *, dim_values: Mapping[str, int] | None = None,
                path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Parameters, weight bytes, file size and per-node / total FLOPs and MACs of an ONNX model."""
    shapes, assumed = infer_shapes(model, dim_values)
    per_node, uncounted = [], []
    flops = macs = int8_flops = int8_macs = 0
    by_type: Counter[str] = Counter()
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    for i, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        cost = None if node.op_type in SUBGRAPH_OPS else node_cost(node, shapes)
        if cost is None:
            uncounted.append(name)
            continue
        f, m = cost
        if f == 0 and m == 0:
            continue
        is_int = node.op_type in INT_OPS or (
            node.op_type in QDQ_FUSABLE and len(node.input) > 1
            and all(producer.get(x) == "DequantizeLinear" for x in node.input[:2]))
        per_node.append({"name": name, "op_type": node.op_type, "flops": f, "macs": m,
                         "int8": is_int})
        flops += f
        macs += m
        if is_int:
            int8_flops += f
            int8_macs += m
        by_type[node.op_type] += f
    params, weight_bytes = _weights(model)
    return {
        "parameters": params,
        "weight_bytes": weight_bytes,
        "file_bytes": file_bytes(path) if path is not None else model.ByteSize(),
        "flops": flops,
        "macs": macs,
        "int8_flops": int8_flops,  # part of `flops` done by integer ops (int8 roofline)
        "int8_macs": int8_macs,
        "nodes": len(model.graph.node),
        "op_types": dict(Counter(n.op_type for n in model.graph.node).most_common()),
        "flops_by_op_type": dict(by_type.most_common()),
        "per_node": per_node,
        "uncounted_nodes": uncounted,
        "assumed_dims": assumed,
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
    }
