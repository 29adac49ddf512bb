"""Channel groups of an ONNX graph: which tensors share one channel set, and every constant
indexed by it (moved out of prune_channels.py, which only decides which channels go).

Channels are coupled: all tensors joined by an Add/Mul (residuals, squeeze-excite) share one
channel set, BatchNorm and depthwise convs follow their producer, Concat maps channels by offset,
and a Flatten/GlobalAveragePool -> Gemm/MatMul head drops the matching weight rows.
`ChannelGraph` finds these groups once (each op's rule is in _channel_rules.py) and slices the
kept channels; `prune-channels`, `remove-zero-channels` and the transformer pruning steps share it
and the onnx-ir load/save helpers below.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ._channel_rules import ChannelRules, _Param, _Seg
from ._union_find import find_root


class ChannelGraph(ChannelRules):
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
        # grouped convs reading a set: (weight, segs, groups); axis 1 is the in-group position
        self.grouped: list[tuple[object, list[_Seg], int]] = []
        self.shuffles: list[tuple[object, object, list[_Seg], int]] = []  # (Reshape, Reshape, segs, g)
        self.tiles: dict[int, int] = {}  # space -> tiles its keep set must repeat in (groups)
        self._walk()

    # union-find over channel spaces
    def _new(self, n: int, blocked: str | None = None) -> list[_Seg]:
        self.parent.append(len(self.parent))
        self.size.append(n)
        if blocked:
            self.blocked[len(self.parent) - 1] = blocked
        return [_Seg(len(self.parent) - 1, n)]

    def find(self, s: int) -> int:
        return find_root(self.parent, s)

    def _union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            if rb in self.blocked:
                self.blocked.setdefault(ra, self.blocked[rb])
            if rb in self.tiles:
                self._tile(ra, self.tiles.pop(rb))

    def _tile(self, space: int, t: int) -> None:
        """The set's keep set must repeat in `t` equal contiguous tiles (with the tilings asked
        before: their least common multiple)."""
        import math

        r = self.find(space)
        self.tiles[r] = math.lcm(self.tiles.get(r, 1), t)

    def tiling(self, root: int) -> int:
        return self.tiles.get(self.find(root), 1)

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
        for r, t in list(self.tiles.items()):
            if self.size[r] % t:
                self.blocked.setdefault(r, f"its grouped convs and channel shuffles ask for "
                                           f"{t} equal tiles of {self.size[r]} channels")

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
            if s.shuffle > 1:  # channel gi*(C/g)+j now sits at j*g+gi; tiled keep: in order
                per = s.size // s.shuffle
                k = np.sort((k % per) * s.shuffle + k // per)
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
        for w, segs, groups in self.grouped:
            idx = self.indices(segs, keep).reshape(groups, -1)
            per = sum(s.size for s in segs) // groups
            within = idx - per * np.arange(groups)[:, None]
            if not (within == within[0]).all():  # the tiling guarantees it: a bug otherwise
                raise AssertionError(f"grouped conv weight {w.name}: groups keep unequal sets")
            arr = np.take(w.const_value.numpy(), within[0], axis=1)
            w.const_value = ir.tensor(np.ascontiguousarray(arr), name=w.name)
            w.shape = ir.Shape(arr.shape)
        for first, back, segs, g in self.shuffles:
            n = len(self.indices(segs, keep))
            for node, pos, value in ((first, 2, n // g), (back, 1, n)):
                set_shape_entry(self.model.graph, node, pos, value)
        graph = self.model.graph
        io = set(graph.inputs) | set(graph.outputs)
        for node in graph:
            for v in node.outputs:
                if v not in io:
                    v.shape = None


def set_shape_entry(graph, node, pos: int, value: int) -> None:
    """Give a Reshape (or Expand) its own int64 shape constant, its current one with entry `pos`
    set to `value` (an entry of -1 is inferred and stays): exporters and onnxsim share one shape
    constant between layers that a pruning step may leave at different widths. The old constant
    goes once nothing uses it."""
    from onnx_ir import convenience

    old = list(node.inputs)[1]
    arr = convenience.get_const_tensor(old).numpy().copy()
    if arr[pos] == -1:
        return
    arr[pos] = value
    name = f"{node.outputs[0].name}_shape"
    while name in graph.initializers:
        name += "_"
    new = ir.Value(name=name, shape=ir.Shape(arr.shape), type=ir.TensorType(ir.DataType.INT64),
                   const_value=ir.tensor(arr, name=name))
    graph.register_initializer(new)
    node.replace_input_with(1, new)
    if old.is_initializer() and not old.uses() and not old.is_graph_input():
        graph.initializers.pop(old.name)


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

