"""How each ONNX op carries channels, for `ChannelGraph` (_channel_graph.py) to group them.

One visitor per op family: Conv makes a new channel set (or, depthwise, keeps its input's), BN and
element-wise ops with broadcast constants keep it, Add/Mul join two sets into one, Concat lays sets
side by side, ReduceMean/Flatten/Reshape/Squeeze turn channels into 2-D features that a Gemm or
MatMul head reads. An op a visitor does not accept pins the channels it touches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_UNARY = {"Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
          "Elu", "Selu", "Softplus", "Identity", "Dropout", "MaxPool", "AveragePool",
          "GlobalAveragePool", "GlobalMaxPool", "Neg", "Abs", "Gelu", "Mish", "LpPool"}
_BINARY = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum"}


@dataclass
class _Seg:
    space: int
    size: int
    shuffle: int = 1  # g of a channel shuffle this tensor went through (1: none); see `_shuffle`


@dataclass
class _Param:
    """A constant whose `axis` indexes the channels of `segs` (each `spatial` times, if flat)."""

    value: object  # ir.Value (an initializer)
    axis: int
    segs: list
    spatial: int = 1


class ChannelRules:
    """The per-op visitors of `ChannelGraph` (which holds the union-find and the records)."""

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
            return self._visit_grouped(node, xs, ins, w, b, group)
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
            if op == "Dropout":
                from ._dropout import identity_reason

                if (why := identity_reason(node)) is not None:  # pinned, still followed so
                    self._block(xs, why)  # the group it belongs to reports why
                    self.segs[out] = xs
                    return True
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
        if op == "Reshape" and self._shuffle(node, xs):
            return True
        if op in ("Flatten", "Reshape", "Squeeze"):
            return self._visit_flatten(node, xs)
        return False

    def _visit_grouped(self, node, xs, ins, w, b, group: int) -> bool:
        """A grouped Conv (ShuffleNet's 1x1 group convs): its output is `group` equal groups of
        filters, its input `group` equal groups of channels; the weight's axis 1 indexes the
        channel within a group, shared by all groups. Pruned exactly when every group keeps the
        same count at the same positions: the output set and the input set get a tiling (the
        keep set repeats in each tile, _channel_graph.py) aligned with the groups. An input made
        of several sets (a Concat) cannot promise that and is pinned."""
        out = node.outputs[0]
        o = w.shape[0]
        if o % group:
            self._block(xs, f"grouped Conv '{node.name}' with {o} filters in {group} groups")
            self.segs[out] = self._new(o, f"grouped Conv '{node.name}'")
            return True
        if xs and len(xs) == 1 and xs[0].size % (group * xs[0].shuffle) == 0 \
                and xs[0].size // group == w.shape[1]:
            self._tile(xs[0].space, group * xs[0].shuffle)
            self.grouped.append((ins[1], xs, group))
        elif xs:
            self._block(xs, f"grouped Conv '{node.name}' reads channels of several groups "
                            "(a Concat): its groups could not stay equal" if len(xs) > 1 else
                        f"grouped Conv '{node.name}': {xs[0].size} channels in {group} groups "
                        f"after a shuffle by {xs[0].shuffle}")
        self.segs[out] = self._new(o)
        self._tile(self.segs[out][0].space, group)
        self.producers.append((self.segs[out][0].space, ins[1]))
        if b is not None:
            self.params.append(_Param(ins[2], 0, self.segs[out]))
        return True

    def _shuffle(self, node, xs) -> bool:
        """A channel shuffle Reshape [N,C,H,W] -> [N,g,C/g,H,W] -> Transpose(0,2,1,3,4) ->
        Reshape [N,C,H,W]: channel gi*(C/g)+k moves to k*g+gi. The result keeps the channel
        set, marked shuffled by g; the set is tiled by g (each of the g input groups keeps the
        same positions), so the kept channels stay in order after the shuffle and its shape
        constants get the new counts (_channel_graph.py). Anything else pins it."""
        from onnx_ir import convenience

        x = list(node.inputs)[0]
        if not xs or len(xs) != 1 or xs[0].shuffle != 1 or _rank(x) != 4:
            return False
        n, _, h, w = x.shape
        shape = convenience.get_const_tensor(list(node.inputs)[1])
        c = xs[0].size
        if shape is None or shape.numpy().shape != (5,) or not isinstance(h, int) \
                or not isinstance(w, int):
            return False
        s1 = [int(d) for d in shape.numpy()]
        g = s1[1]
        batch = (0, n) if isinstance(n, int) else (0,)
        # [N (or 0: copied), g, C/g (or -1), H, W]: only the channel axis is split
        if g < 2 or c % g or s1[3:] != [h, w] or not (
                (s1[0] in batch and s1[2] in (c // g, -1)) or (s1[0] == -1 and s1[2] == c // g)):
            return False
        users = [u.node for u in node.outputs[0].uses()]
        if len(users) != 1 or users[0].op_type != "Transpose" or node.outputs[0].is_graph_output():
            return False
        tr = users[0]
        if "perm" not in tr.attributes or list(tr.attributes["perm"].as_ints()) != [0, 2, 1, 3, 4]:
            return False
        users = [u.node for u in tr.outputs[0].uses()]
        if len(users) != 1 or users[0].op_type != "Reshape" or tr.outputs[0].is_graph_output():
            return False
        back = users[0]
        s2 = convenience.get_const_tensor(list(back.inputs)[1])
        if s2 is None or s2.numpy().shape != (4,):
            return False
        s2 = [int(d) for d in s2.numpy()]
        if s2[2:] != [h, w] or not ((s2[0] in batch and s2[1] in (c, -1)) or
                                    (s2[0] == -1 and s2[1] == c)):
            return False
        self._tile(xs[0].space, g)
        self.shuffles.append((node, back, xs, g))
        self.segs[back.outputs[0]] = [_Seg(xs[0].space, c, g)]
        return True

    def _visit_binary(self, node, xs, ins) -> bool:
        out = node.outputs[0]
        rank = _rank(ins[0])
        for v in ins[1:]:
            if v in self.segs:
                other = self.segs[v]
                if [(s.size, s.shuffle) for s in other] != [(s.size, s.shuffle) for s in xs]:
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
