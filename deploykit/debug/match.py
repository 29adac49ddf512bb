"""Pair the tensors of a reference graph with those of a candidate made from it (or the same file
on another runtime), and cut each candidate layer out as a graph of its own.

Three rules, in order:
1. QDQ: a reference tensor T that the candidate quantizes (T -> QuantizeLinear -> DequantizeLinear)
   is compared with the DequantizeLinear output, the value the candidate's consumers really see
   (unless the reference quantizes T too: then it is the same graph and names decide).
2. Name: deploykit's rewrites and ORT's quantizer keep tensor names.
3. Position: tensors renamed or fused away are paired by producer op type along the topological
   order (difflib alignment of the op-type sequences, Q/DQ/Constant/Identity left out).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..fidelity import QDQ_OPS

_SKELETON_SKIP = QDQ_OPS | {"Constant", "Identity"}
_FLOAT_TYPES = frozenset({1, 10, 11, 16})  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


@dataclass(frozen=True)
class Pair:
    """One reference tensor and the candidate tensor that stands for it."""

    ref: str
    cand: str
    how: str  # "name" | "qdq" | "position"
    op_type: str  # the reference producer's op type
    ref_node: str
    cand_node: str  # the candidate node computing it: the layer, by the name `exclude=` takes
    depth: int  # index along the reference's topological order


@dataclass(frozen=True)
class Layer:
    """A candidate layer cut out: `nodes` compute `output` from `inputs` (candidate tensors that
    are paired with reference tensors, or graph inputs) and constants."""

    pair: Pair
    nodes: tuple[Any, ...]  # onnx.NodeProto, topological order
    inputs: tuple[str, ...]


def value_infos(model) -> dict[str, Any]:
    """tensor name -> ValueInfoProto (type and shape), from shape inference where it works."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # inference is a help here, never a requirement
        inferred = model
    g = inferred.graph
    return {v.name: v for v in [*g.value_info, *g.input, *g.output]
            if v.type.HasField("tensor_type")}


def _elem_types(infos: Mapping[str, Any]) -> dict[str, int]:
    return {k: v.type.tensor_type.elem_type for k, v in infos.items()}


def _producers(model) -> dict[str, Any]:
    return {o: n for n in model.graph.node for o in n.output if o}


def _consumers(model) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _dequantized(name: str, consumers: Mapping[str, list[Any]]) -> str | None:
    """The DequantizeLinear output standing for `name` when the graph quantizes it."""
    for q in consumers.get(name, ()):
        if q.op_type == "QuantizeLinear" and q.input[0] == name:
            for dq in consumers.get(q.output[0], ()):
                if dq.op_type == "DequantizeLinear":
                    return dq.output[0]
    return None


def layer_node(name: str, producers: Mapping[str, Any]):
    """The node that computes `name`, looking through Q/DQ (the node a user would exclude)."""
    node = producers.get(name)
    while node is not None and node.op_type in QDQ_OPS and node.input:
        node = producers.get(node.input[0])
    return node


def match(ref, cand, ref_infos: Mapping[str, Any] | None = None,
          cand_infos: Mapping[str, Any] | None = None) -> list[Pair]:
    """Pairs in the reference's topological order; only float tensors computed by nodes.
    `*_infos`: value_infos() of each model when the caller has them already."""
    ref_types = _elem_types(value_infos(ref) if ref_infos is None else ref_infos)
    cand_types = _elem_types(value_infos(cand) if cand_infos is None else cand_infos)
    ref_cons, cand_cons = _consumers(ref), _consumers(cand)
    cand_prod = _producers(cand)
    inits = {i.name for i in cand.graph.initializer}

    def is_float(name: str, types: Mapping[str, int]) -> bool:
        return types.get(name, 1) in _FLOAT_TYPES

    def cand_value(name: str, ref_quantizes: bool) -> tuple[str, str] | None:
        if not ref_quantizes:
            dq = _dequantized(name, cand_cons)
            if dq:
                return dq, "qdq"
        if name in cand_prod and name not in inits:
            return name, "name"
        return None

    pairs: dict[str, Pair] = {}
    used: set[str] = set()
    ref_nodes = [n for n in ref.graph.node if n.op_type != "Constant"]
    for depth, n in enumerate(ref_nodes):
        for out in n.output:
            if not out or not is_float(out, ref_types):
                continue
            got = cand_value(out, _dequantized(out, ref_cons) is not None)
            if got and got[0] not in used and is_float(got[0], cand_types):
                cn = layer_node(got[0], cand_prod)
                pairs[out] = Pair(out, got[0], got[1], n.op_type, n.name, cn.name if cn else "",
                                  depth)
                used.add(got[0])
    # position: align the op-type sequences and pair first outputs left unpaired
    rs = [(d, n) for d, n in enumerate(ref_nodes) if n.op_type not in _SKELETON_SKIP]
    cs = [n for n in cand.graph.node if n.op_type not in _SKELETON_SKIP]
    sm = difflib.SequenceMatcher(None, [n.op_type for _, n in rs], [n.op_type for n in cs],
                                 autojunk=False)
    for block in sm.get_matching_blocks():
        for k in range(block.size):
            depth, rn = rs[block.a + k]
            cn = cs[block.b + k]
            if not rn.output or not cn.output or rn.output[0] in pairs:
                continue
            if not is_float(rn.output[0], ref_types):
                continue
            got = cand_value(cn.output[0], _dequantized(rn.output[0], ref_cons) is not None)
            if got and got[0] not in used and is_float(got[0], cand_types):
                pairs[rn.output[0]] = Pair(rn.output[0], got[0], "position", rn.op_type, rn.name,
                                           cn.name, depth)
                used.add(got[0])
    return sorted(pairs.values(), key=lambda p: (p.depth, p.ref))


def cut_layers(cand, pairs: Sequence[Pair], max_nodes: int = 64) -> dict[str, Layer]:
    """For each pair, the candidate nodes between its tensor and the nearest paired tensors (or
    graph inputs) upstream: the layer alone, to be fed the reference's values. A walk that passes
    `max_nodes` nodes is dropped (no introduced error for that pair)."""
    producers = _producers(cand)
    stops = {p.cand for p in pairs} | {i.name for i in cand.graph.input}
    inits = {i.name for i in cand.graph.initializer}
    order = {id(n): i for i, n in enumerate(cand.graph.node)}
    layers: dict[str, Layer] = {}
    for p in pairs:
        nodes: dict[int, Any] = {}
        inputs: list[str] = []
        todo, seen = [p.cand], set()
        ok = True
        while todo:
            t = todo.pop()
            if t in seen or not t:
                continue
            seen.add(t)
            if t != p.cand and t in stops:
                inputs.append(t)
                continue
            if t in inits:
                continue
            node = producers.get(t)
            if node is None:  # a graph input that is not paired, or a dangling name
                ok = False
                break
            nodes[id(node)] = node
            if len(nodes) > max_nodes or any(a.g.node or a.graphs for a in node.attribute):
                ok = False  # too far to call it one layer, or a subgraph op (If/Loop/Scan)
                break
            todo.extend(node.input)
        if ok and nodes:
            layers[p.ref] = Layer(p, tuple(sorted(nodes.values(), key=lambda n: order[id(n)])),
                                  tuple(sorted(inputs)))
    return layers
