"""FLOPs and MACs of one ONNX node from its input/output shapes (measure/facts.py sums them).

Conventions: a MAC is one multiply-accumulate; FLOPs = 2 x MACs for Conv/Gemm/MatMul/Einsum/
Attention/RNNs, plus one FLOP per output element for a bias; elementwise and normalisation ops
count a rough number of FLOPs per element (table below); data movement (Reshape, Transpose,
Gather, ...) counts zero. Integer ops (MatMulInteger, ConvInteger, QLinear*) are counted like their
float versions.
"""

from __future__ import annotations

import math
from collections import Counter

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


def _numel(shape) -> int | None:
    if shape is None or any(d is None for d in shape):
        return None
    return math.prod(shape)


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
