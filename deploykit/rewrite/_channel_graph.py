"""Channel groups of an ONNX graph: which tensors share one channel set, and every constant
indexed by it (moved out of prune_channels.py, which only decides which channels go).

Channels are coupled: all tensors joined by an Add/Mul (residuals, squeeze-excite) share one
channel set, BatchNorm and depthwise convs follow their producer, Concat maps channels by offset,
and a Flatten/GlobalAveragePool -> Gemm/MatMul head drops the matching weight rows.
`ChannelGraph` finds these groups once; `prune-channels`, `remove-zero-channels` and the
transformer pruning steps share it and the onnx-ir load/save helpers below.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

_UNARY = {"Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
          "Elu", "Selu", "Softplus", "Identity", "Dropout", "MaxPool", "AveragePool",
          "GlobalAveragePool", "GlobalMaxPool", "Neg", "Abs", "Gelu", "Mish", "LpPool"}
_BINARY = {"Add", "Sub", "Mul", "Div", "Max", "Min"}


@dataclass
class _Seg:
    space: int
    size: int


@dataclass
class _Param:
    """A constant whose `axis` indexes the channels of `segs` (each `spatial` times, if flat)."""

    value: object  # ir.Value (an initializer)
    axis: int
    segs: list
    spatial: int = 1


class ChannelGraph:
    """Channel groups ("spaces") of an onnx_ir model and every constant indexed by them."""

    def __init__(self, model):
        self.model = model
        self.parent: list[int] = []
        self.size: list[int] = []
        self.blocked: dict[int, str] = {}
        self.segs: dict[object, list[_Seg]] = {}  # value -> channel segments along axis 1
        self.flat: dict[object, tuple[list[_Seg], int]] = {}  # 2-D features: segs, spatial size
        self.producers: list[tuple[int, object]] = []  # (space, Conv weight value)
        self.params: list[_Param] = []  # sliced along the channels of their segs
        self.consumers: list[_Param] = []  # weights reading the channels (Conv in, Gemm rows)
        self.groups_attr: list[tuple[object, list[_Seg]]] = []  # depthwise convs: group = channels
        self.reshapes: list[tuple[object, list[_Seg], int]] = []  # shape constants to shrink
        self._walk()

    # union-find over channel spaces
    def _new(self, n: int, blocked: str | None = None) -> list[_Seg]:
        self.parent.append(len(self.parent))
        self.size.append(n)
        if blocked:
            self.blocked[len(self.parent) - 1] = blocked
        return [_Seg(len(self.parent) - 1, n)]

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def _union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            if rb in self.blocked:
                self.blocked.setdefault(ra, self.blocked[rb])

    def _block(self, segs, reason: str) -> None:
        for s in segs or ():
            self.blocked.setdefault(self.find(s.space), reason)

    def _block_value(self, v, reason: str) -> None:
        self._block(self.segs.get(v), reason)
        if v in self.flat:
            self._block(self.flat[v][0], reason)

    # graph walk
    def _const(self, v):
        """The initializer's array if `v` is an initializer used by one node only, else None."""
        if v is None or not v.is_initializer() or v.const_value is None or v.is_graph_input():
            return None
        return v.const_value.numpy() if len(v.uses()) == 1 else None

    def _walk(self) -> None:
        graph = self.model.graph
        for node in graph:
            handled = node.domain in ("", "ai.onnx") and self._visit(node)
            if not handled:
                for v in node.inputs:
                    if v is not None:
                        self._block_value(v, f"used by unsupported {node.op_type} '{node.name}'")
        for v in graph.outputs:
            self._block_value(v, "reaches a graph output")

    def _visit(self, node) -> bool:  # noqa: C901 - one branch per supported op
        op, ins, out = node.op_type, list(node.inputs), node.outputs[0]
        x = ins[0] if ins else None
        xs = self.segs.get(x)
        if op == "Conv":
            w = self._const(ins[1])
            b = self._const(ins[2]) if len(ins) > 2 and ins[2] is not None else None
            bias_ok = len(ins) < 3 or ins[2] is None or b is not None
            group = node.attributes.get_int("group", 1)
            if w is None or not bias_ok:
                self._block(xs, f"Conv '{node.name}' has a shared or non-constant weight")
                if (n := _channels(out)) is not None:
                    self.segs[out] = self._new(n, "Conv with shared or non-constant weights")
                return True
            if group == 1:
                if xs:
                    self.consumers.append(_Param(ins[1], 1, xs))
                self.segs[out] = self._new(w.shape[0])
                self.producers.append((self.segs[out][0].space, ins[1]))
                if b is not None:
                    self.params.append(_Param(ins[2], 0, self.segs[out]))
                return True
            if xs and group == sum(s.size for s in xs) == w.shape[0] and w.shape[1] == 1:
                self.segs[out] = xs  # depthwise: channel i in -> channel i out
                self.params.append(_Param(ins[1], 0, xs))
                if b is not None:
                    self.params.append(_Param(ins[2], 0, xs))
                self.groups_attr.append((node, xs))
                return True
            self._block(xs, f"grouped Conv '{node.name}'")
            self.segs[out] = self._new(w.shape[0], f"grouped Conv '{node.name}'")
            return True
        if op in _BINARY and xs is None:  # Add(const, x): the channel tensor may come second
            ins = [v for v in ins if v in self.segs] + [v for v in ins if v not in self.segs]
            xs = self.segs.get(ins[0])
            if xs is not None:
                return self._visit_binary(node, xs, ins)
        if xs is None and x not in self.flat:
            return all(v not in self.segs and v not in self.flat for v in ins)
        if x in self.flat:
            return self._visit_flat(node)
        if op == "BatchNormalization" and len(node.outputs) == 1:
            if any(self._const(v) is None for v in ins[1:]):
                return False
            self.params.extend(_Param(v, 0, xs) for v in ins[1:])
            self.segs[out] = xs
            return True
        if op in _UNARY and len(node.outputs) >= 1:
            if op == "PRelu":
                slope = self._const(ins[1])
                if slope is None or not self._const_param(ins[1], slope, xs, _rank(x)):
                    return False
            elif any(v in self.segs or v in self.flat or self._scalar(v) is None
                     for v in ins[1:] if v is not None):
                return False
            self.segs[out] = xs
            return True
        if op in ("ReduceMean", "ReduceMax") and (axes := _axes(node)) is not None:
            rank = _rank(x)
            if rank is None or 1 in [a % rank for a in axes]:
                return False
            if node.attributes.get_int("keepdims", 1):
                self.segs[out] = xs
                return True
            if sorted(a % rank for a in axes) == list(range(2, rank)):
                self.flat[out] = (xs, 1)
                return True
            return False
        if op in _BINARY:
            return self._visit_binary(node, xs, ins)
        if op == "Concat":
            rank = _rank(x)
            if rank is None or node.attributes.get_int("axis", 0) % rank != 1:
                return False
            segs = []
            for v in ins:
                if v in self.segs:
                    segs.extend(self.segs[v])
                else:
                    n = _channels(v)
                    if n is None:
                        return False
                    segs.extend(self._new(n, "concatenated with a tensor of unknown origin"))
            self.segs[out] = segs
            return True
        if op in ("Flatten", "Reshape", "Squeeze"):
            return self._visit_flatten(node, xs)
        return False

    def _visit_binary(self, node, xs, ins) -> bool:
        out = node.outputs[0]
        rank = _rank(ins[0])
        for v in ins[1:]:
            if v in self.segs:
                other = self.segs[v]
                if [s.size for s in other] != [s.size for s in xs]:
                    self._block(other + xs, f"{node.op_type} '{node.name}' of unaligned concats")
                else:
                    for a, b in zip(xs, other):
                        self._union(a.space, b.space)
            else:
                c = self._const(v) if v.is_initializer() else None
                if c is None and self._scalar(v) is None:
                    return False
                if c is not None and not self._const_param(v, c, xs, rank):
                    return False
        if rank is None or rank != _rank(out):
            return False
        self.segs[out] = xs
        return True

    def _const_param(self, v, c, xs, rank) -> bool:
        """Record a broadcast constant ([C,1,1], [1,C,1,1], scalar) of an elementwise op."""
        if rank is None or c.ndim > rank:
            return False
        axis = 1 - (rank - c.ndim)
        if axis >= 0 and c.shape[axis] != 1:
            if c.shape[axis] != sum(s.size for s in xs):
                return False
            self.params.append(_Param(v, axis, xs))
        return all(d == 1 for i, d in enumerate(c.shape) if i != axis)

    def _scalar(self, v):
        """A scalar constant's value; 0.0 for an absent optional input; None otherwise."""
        if v is None:
            return 0.0
        from onnx_ir import convenience

        t = convenience.get_const_tensor(v)
        return None if t is None or t.numpy().size != 1 else float(t.numpy().reshape(()))

    def _visit_flatten(self, node, xs) -> bool:
        ins, out = list(node.inputs), node.outputs[0]
        x = ins[0]
        if x.shape is None or not x.shape.is_static() or len(x.shape) < 2:
            return False
        dims = [int(d) for d in x.shape]
        spatial = int(np.prod(dims[2:]))
        if node.op_type == "Flatten":
            if node.attributes.get_int("axis", 1) != 1:
                return False
        elif node.op_type == "Squeeze":
            axes = _axes(node)
            if spatial != 1 or axes is None or sorted(a % len(dims) for a in axes) != list(
                    range(2, len(dims))):
                return False
        else:
            shape = self._const(ins[1])
            if shape is None or shape.shape != (2,) or shape[1] not in (-1, dims[1] * spatial):
                return False
            if shape[1] != -1:
                self.reshapes.append((ins[1], xs, spatial))
        self.flat[out] = (xs, spatial)
        return True

    def _visit_flat(self, node) -> bool:
        ins = list(node.inputs)
        xs, spatial = self.flat[ins[0]]
        if any(v in self.segs or v in self.flat for v in ins[1:]):
            return False
        if node.op_type == "Gemm" and not node.attributes.get_int("transA", 0):
            w = self._const(ins[1])
            if w is None:
                return False
            axis = 1 if node.attributes.get_int("transB", 0) else 0
            self.consumers.append(_Param(ins[1], axis, xs, spatial))
            return True
        if node.op_type == "MatMul" and (w := self._const(ins[1])) is not None and w.ndim == 2:
            self.consumers.append(_Param(ins[1], 0, xs, spatial))
            return True
        return False

    # planning helpers
    def prunable(self) -> list[int]:
        """Root spaces with at least one group-1 Conv producer and nothing that pins them."""
        roots = {self.find(s) for s, _ in self.producers}
        return sorted(r for r in roots if r not in self.blocked)

    def l1_importance(self, root: int) -> np.ndarray:
        """Per-channel L1 norm of all producing filters of the group, summed."""
        total = np.zeros(self.size[root])
        for s, w in self.producers:
            if self.find(s) == root:
                arr = w.const_value.numpy()
                total += np.abs(arr.reshape(arr.shape[0], -1)).sum(axis=1)
        return total

    def producer_names(self, root: int) -> list[str]:
        return [w.name for s, w in self.producers if self.find(s) == root]

    def indices(self, segs, keep: dict[int, np.ndarray], spatial: int = 1) -> np.ndarray:
        """Kept positions along a tensor made of `segs` (each channel repeated `spatial` times)."""
        out, offset = [], 0
        for s in segs:
            root = self.find(s.space)
            k = keep.get(root, np.arange(s.size))
            if spatial > 1:
                k = (k[:, None] * spatial + np.arange(spatial)[None, :]).reshape(-1)
            out.append(offset + k)
            offset += s.size * spatial
        return np.concatenate(out).astype(np.int64)

    def apply(self, keep: dict[int, np.ndarray]) -> None:
        """Slice every weight, BN/constant parameter and shape for the kept channels, in place."""

        def take(v, axis, segs, spatial=1):
            arr = v.const_value.numpy()
            new = np.take(arr, self.indices(segs, keep, spatial), axis=axis)
            v.const_value = ir.tensor(np.ascontiguousarray(new), name=v.name)
            v.shape = ir.Shape(new.shape)

        for space, w in self.producers:
            root = self.find(space)
            if root in keep:
                take(w, 0, [_Seg(space, self.size[space])])
        for p in self.params + self.consumers:
            take(p.value, p.axis, p.segs, p.spatial)
        for node, segs in self.groups_attr:
            node.attributes["group"] = ir.AttrInt64("group", len(self.indices(segs, keep)))
        for v, segs, spatial in self.reshapes:
            arr = v.const_value.numpy().copy()
            arr[1] = len(self.indices(segs, keep)) * spatial
            v.const_value = ir.tensor(arr, name=v.name)
        graph = self.model.graph
        io = set(graph.inputs) | set(graph.outputs)
        for node in graph:
            for v in node.outputs:
                if v not in io:
                    v.shape = None


def _rank(v):
    return None if v is None or v.shape is None else len(v.shape)


def _channels(v):
    if v is None or v.shape is None or len(v.shape) < 2 or not isinstance(v.shape[1], int):
        return None
    return int(v.shape[1])


def _axes(node):
    if "axes" in node.attributes:
        return list(node.attributes["axes"].as_ints())
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        from onnx_ir import convenience

        t = convenience.get_const_tensor(node.inputs[1])
        return None if t is None else [int(a) for a in t.numpy().reshape(-1)]
    return None


def load_ir(model):
    """onnx.ModelProto -> onnx_ir model with inferred shapes and constants as initializers."""
    import onnx
    from onnx_ir.passes.common import LiftConstantsToInitializersPass

    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    irm = ir.from_proto(inferred)
    LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(irm)
    return irm


def save_ir(irm):
    """onnx_ir model -> checked onnx.ModelProto with fresh shapes."""
    import onnx

    proto = ir.to_proto(irm)
    del proto.graph.value_info[:]
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def param_count(model) -> int:
    return int(sum(np.prod(t.dims) for t in model.graph.initializer))
