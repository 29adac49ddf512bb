"""Per-op rows named by the user's layers: the nodes a runtime profiles (after its graph
optimizations: fused, renamed, e.g. ORT's `relu_1_nchwc` or a Conv that swallowed its Relu) mapped
back to the model's own node names, and for models deploykit exported, to the torch module path.

How: an optimized node usually still produces a tensor of the original graph (a fused Conv+Relu
writes the Relu's output; an NCHWc Conv keeps the Conv's output until a reorder node), so the
original node that produced the same tensor names it. Nodes that write only new tensors (layout
reorders) fall back to the longest original node name their own name starts with. The module
path comes from the node metadata `deploykit.module` that `deploykit export` writes (see
export/exporter.py), else from the "module/OpType" form of the node name.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Mapping, Sequence

from ..core import OpTime
from ..onnxio import MODULE_KEY



def module_of(node) -> str:
    """The torch module path a node of a deploykit export came from ("" when unknown)."""
    for p in node.metadata_props:
        if p.key == MODULE_KEY:
            return p.value
    return ""


def name_map(original, optimized) -> dict[str, tuple[str, str]]:
    """{optimized node name: (original node name, module path)} for every optimized node that
    can be traced back (the identity for nodes that were not touched)."""
    producer = {}
    for n in original.graph.node:
        for o in n.output:
            if o:
                producer[o] = n
    by_name = {n.name: n for n in original.graph.node if n.name}
    names_longest_first = sorted(by_name, key=len, reverse=True)
    out: dict[str, tuple[str, str]] = {}
    for n in optimized.graph.node:
        src = by_name.get(n.name)
        if src is None:
            src = next((producer[o] for o in n.output if o in producer), None)
        if src is None:  # ORT's layout pass names a node after the tensor it replaces ("r0_nchwc")
            base = n.name[:-len("_nchwc")] if n.name.endswith("_nchwc") else None
            src = producer.get(base) if base else None
        if src is None:
            src = next((by_name[k] for k in names_longest_first if n.name.startswith(k)), None)
        if src is None:
            continue
        head = _fused_head(src, n.op_type, producer)
        label = src.name if head is src else f"{head.name} + {src.name}"
        out[n.name] = (label, module_of(head) or _module_from_name(head.name))
    return out


def _fused_head(src, op_type: str, producer, depth: int = 3):
    """The node of `op_type` a fused node starts from: a Conv that swallowed its Relu writes
    the Relu's output, so walk up (first inputs) from the Relu to the Conv; `src` when none."""
    node = src
    for _ in range(depth):
        if node.op_type == op_type:
            return node
        node = producer.get(node.input[0]) if node.input else None
        if node is None:
            break
    return src


def _module_from_name(name: str) -> str:
    return name.rsplit("/", 1)[0] if "/" in name else ""


def name_ops(ops: Sequence[OpTime], names: Mapping[str, tuple[str, str]]) -> list[OpTime]:
    """The rows with `layer` and `module` filled in from `names` (unknown rows keep theirs)."""
    out = []
    for o in ops:
        layer, module = names.get(o.name, ("", ""))
        out.append(replace(o, layer=layer or o.layer, module=module or o.module))
    return out


def name_trace_events(events: Iterable[dict], names: Mapping[str, tuple[str, str]]) -> list[dict]:
    """ORT's Chrome trace events with args.model_node / args.module added to the node events."""
    out = []
    for e in events:
        if e.get("cat") == "Node" and isinstance(e.get("args"), dict):
            node = _node_of_event(e.get("name", ""))
            if node in names:
                e = {**e, "args": {**e["args"], "model_node": names[node][0],
                                   "module": names[node][1]}}
        out.append(e)
    return out


def _node_of_event(name: str) -> str:
    for suffix in ("_kernel_time", "_fence_before", "_fence_after"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
