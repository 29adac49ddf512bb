"""Blocks that apply the same weights (layers sharing them, as in ALBERT), for the transformer
pruning steps (prune-ffn, prune-heads): grouped so that each shared weight is sliced once, with
one kept set for all its applications.

A block lists its constants as roles: (value, role, node, input index) at its own use of each.
Blocks whose role values are the same initializers form a group. A group is prunable only when
every use of each of its weights is that role in a block of the group: a use anywhere else (a
look-alike that is not a valid block, a foreign op, another role) would see the slicing, so the
group is pinned with the reason. Biases are exempt: exporters merge equal constants (the zero
biases of unrelated layers), and `own_copy` gives the group a copy of its own before slicing.
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

import numpy as np
import onnx_ir as ir

B = TypeVar("B")
Roles = Callable[[object], list]  # block -> [(value, role, node, input index)]


def group(blocks: Sequence[B], roles: Roles, what: str) -> tuple[list[list[B]], list[str]]:
    """([members of each prunable group, in graph order], [why each pinned group is pinned]);
    `what` names a block in the reasons ("a feed-forward block")."""
    groups: dict[tuple, list] = {}
    for b in blocks:
        groups.setdefault(tuple(id(v) for v, *_ in roles(b)), []).append(b)
    out, reasons = [], []
    for members in groups.values():
        head = roles(members[0])
        owned = {(id(v), role, id(node), i) for b in members for v, role, node, i in roles(b)}
        values = {id(v): (v, role) for v, role, *_ in head}
        why = "one constant plays two roles in the block" if len(values) < len(head) else None
        for v, role in values.values():
            if why is not None or role.endswith("bias"):
                continue
            stray = next((u for u in v.uses() if (id(v), role, id(u.node), u.idx) not in owned),
                         None)
            if stray is not None:
                why = (f"{role} '{v.name}' is shared by {len(v.uses())} nodes and "
                       f"{stray.node.op_type} '{stray.node.name}' does not use it as the {role} "
                       f"of {what} with the same weights")
        if why is None:
            out.append(members)
        else:
            reasons.append(f"{head[0][0].name}: {why}")
    return out, reasons


def bias_user(node, bias):
    """The node that adds `bias` to `node`'s output: a Gemm itself, else the Add reading it."""
    if node.op_type == "Gemm" or bias is None:
        return node
    return node.outputs[0].uses()[0].node


def own_copy(graph, value, users: set[int], suffix: str):
    """`value`, or, when nodes other than `users` (ids) use it, a copy that `users` now read."""
    if all(id(u.node) in users for u in value.uses()) and not value.is_graph_output():
        return value
    name = f"{value.name}_{suffix}"
    while name in graph.initializers:
        name += "_"
    copy = ir.Value(name=name, shape=value.shape, type=value.type,
                    const_value=ir.tensor(np.array(value.const_value.numpy()), name=name))
    graph.register_initializer(copy)
    for u in list(value.uses()):
        if id(u.node) in users:
            u.node.replace_input_with(u.idx, copy)
    return copy
