"""The residual stream of a transformer graph: every tensor whose last axis is the model width d,
and every constant indexed by it (prune_hidden.py decides which channels go and slices).

Like `ChannelGraph` (_channel_graph.py) this is a union-find over channel sets, but over the LAST
axis, with a transformer's rules rather than a CNN's (which is why it is not one more visitor in
_channel_rules.py, whose sets live on axis 1):

- an embedding lookup `Gather(table [V, d], ids)` starts a set (the table's columns);
- a MatMul/Gemm with a constant 2-D weight starts a set for its output (the weight's output
  columns, its bias) and, when its input is in a set, indexes that set by the weight's rows;
- element-wise ops join the sets of their operands (residual Adds); broadcast constants with a
  last axis of d (biases, position embeddings, norm gamma/beta) are indexed by the set; operands
  whose last axis is 1 (a mask, a norm's mean or variance) broadcast over it;
- LayerNormalization and reductions over the last axis (the exporters' decomposed LayerNorm and
  RMSNorm, an L2 normalisation of a pooled embedding) read the set as a whole: allowed, but
  counted, since their statistics change when channels go (the step is lossy);
- Gather/Slice/Squeeze/Unsqueeze/Transpose/Reshape that keep the last axis carry the set (a
  Reshape's constant shape ending in d gets the new width); a Shape of the stream is allowed
  where the width it reports is used only to restore the stream's own shape, and an Expand of
  a per-row value to the width (F.normalize's norm) gets the new width.

Anything else that touches a set pins it with the reason. A stream is a set that starts at an
embedding table (a model fed embeddings or patches from outside has none the step can trace).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._hidden_rules import StreamRules, _last
from ._union_find import find_root


@dataclass
class Param:
    """A constant whose `axis` is indexed by the channels of set `space`; `kind` says what it
    is for importance: 'emb' (table columns), 'in' (weight rows a projection reads), 'out'
    (weight columns a projection writes), 'vec' (bias, gamma, position embedding)."""

    value: object  # ir.Value (an initializer)
    axis: int
    space: int
    kind: str
    node: object  # the ir.Node whose use of `value` this is


@dataclass
class Stream:
    """One prunable set: its width, constants, Reshape shapes, and what reads it lossily."""

    root: int
    width: int
    params: list = field(default_factory=list)  # [Param]
    reshapes: list = field(default_factory=list)  # ir.Nodes whose shape constant ends in width
    values: list = field(default_factory=list)  # ir.Values of the set (shapes reset)
    norms: list = field(default_factory=list)  # names of the norm-like nodes reading it
    outputs: list = field(default_factory=list)  # graph outputs in the set


class StreamGraph(StreamRules):
    """Last-axis channel sets of an onnx_ir model (shape-inferred, constants lifted: `load_ir`)."""

    def __init__(self, model):
        self.model = model
        self.parent: list[int] = []
        self.size: list[int] = []
        self.blocked: dict[int, str] = {}
        self.space: dict[object, int] = {}
        self.params: list[Param] = []
        self.reshapes: list[tuple[object, int]] = []
        self.norms: list[tuple[int, str]] = []
        self.shape_of: dict[object, int] = {}  # Shape outputs reporting a set's width
        self.same: list[tuple[int, int, str]] = []  # sets that must end up joined
        self.expanded: dict[object, object] = {}  # Expand outputs of a last-axis-1 tensor
        self._walk()

    # union-find
    def _new(self, n: int) -> int:
        self.parent.append(len(self.parent))
        self.size.append(n)
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        return find_root(self.parent, s)

    def _union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            if rb in self.blocked:
                self.blocked.setdefault(ra, self.blocked[rb])
        return ra

    def _block(self, s: int, reason: str) -> None:
        self.blocked.setdefault(self.find(s), reason)

    def _param(self, v, axis: int, s: int, kind: str, node) -> None:
        self.params.append(Param(v, axis, s, kind, node))

    # walk
    def _walk(self) -> None:
        graph = self.model.graph
        for node in graph:
            ok = node.domain in ("", "ai.onnx") and self._visit(node)
            if not ok:
                for v in node.inputs:
                    if v is not None and v in self.space:
                        self._block(self.space[v], f"read by unsupported {node.op_type} "
                                                   f"'{node.name}'")
                    if v is not None and v in self.shape_of:
                        self._block(self.shape_of[v], f"its Shape is used by {node.op_type} "
                                                      f"'{node.name}'")
        for a, b, why in self.same:
            if self.find(a) != self.find(b):
                self._block(a, why)
                self._block(b, why)

    def _out(self, node, s: int) -> bool:
        out = node.outputs[0]
        if _last(out) is not None and _last(out) != self.size[self.find(s)]:
            self._block(s, f"{node.op_type} '{node.name}' changes the width")
            return False
        self.space[out] = s
        return True

    # the result
    def streams(self) -> tuple[list[Stream], list[str]]:
        """Unpinned sets that start at an embedding table and are read by a projection (the
        residual streams), and why pinned ones were not taken."""
        normed: dict[int, list[str]] = {}
        for s, name in self.norms:
            normed.setdefault(self.find(s), []).append(name)
        roots = dict.fromkeys(self.find(p.space) for p in self.params if p.kind == "emb")
        out, reasons = [], []
        graph_outputs = set(self.model.graph.outputs)
        for root in roots:
            if root in self.blocked:
                if root in normed:  # a set the norms read: a residual stream, not a lookup table
                    reasons.append(f"hidden stream of width {self.size[root]}: "
                                   f"{self.blocked[root]}")
                continue
            st = Stream(root, self.size[root], norms=normed.get(root, []))
            st.params = [p for p in self.params if self.find(p.space) == root]
            st.reshapes = [n for n, s in self.reshapes if self.find(s) == root]
            st.values = [v for v, s in self.space.items() if self.find(s) == root]
            st.outputs = [v for v in st.values if v in graph_outputs]
            if not any(p.kind == "in" for p in st.params) and not st.outputs:
                continue  # an embedding nothing projects: not a transformer's stream
            out.append(st)
        return out, reasons


def channel_norms(stream: Stream) -> np.ndarray:
    """Magnitude importance: for every constant indexed by the stream, the L2 norm of each
    channel's slice, divided by its mean (so a large table and a small bias weigh alike),
    summed over constants."""
    total = np.zeros(stream.width)
    for p in stream.params:
        arr = np.asarray(p.value.const_value.numpy(), dtype=np.float64)
        rows = np.moveaxis(arr, p.axis, 0).reshape(stream.width, -1)
        n = np.linalg.norm(rows, axis=1)
        total += n / max(float(n.mean()), 1e-12)
    return total / max(len(stream.params), 1)
