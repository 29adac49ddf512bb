"""What a model costs, read from its ONNX graph: parameters, weight bytes, MACs/FLOPs per node.

Counting from the graph (not from torch hooks) means the figures describe exactly the file that
gets compiled, including what export and rewrites did to it. Shapes come from ONNX shape
inference after symbolic input dims are pinned (default 1, e.g. batch=1).

Per-node costs and their conventions are measure/op_cost.py's (a MAC is one multiply-accumulate,
FLOPs = 2 x MACs for the contracting ops). Integer ops (MatMulInteger, ConvInteger, QLinear*) are
flagged `int8`, as are Conv/Gemm/MatMul whose two operands both come out of
DequantizeLinear (QDQ models, which runtimes fuse into int8 kernels), so a roofline can use the
int8 ceiling for them.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

from .op_cost import node_cost

INT_OPS = {"MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul"}
# In a QDQ model these run as int8 kernels when both operands come out of DequantizeLinear.
QDQ_FUSABLE = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
SUBGRAPH_OPS = {"If", "Loop", "Scan"}

# Tensor types that hold indices/shapes rather than weights.
_INDEX_TYPES = {6, 7, 12, 13}  # int32, int64, uint32, uint64
_BOOL_STRING = {8, 9}  # string, bool


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
