"""The per-op rules of the residual-stream walk (_hidden_stream.py): which ops carry a set of
last-axis channels, join two sets, index a constant by one, or pin it (with the reason).
`StreamRules` is a mix-in of `StreamGraph`, which owns the union-find and the result."""

from __future__ import annotations

_UNARY = {"Relu", "Gelu", "Erf", "Tanh", "Sigmoid", "LeakyRelu", "Softplus", "Elu", "Selu",
          "Neg", "Abs", "Sqrt", "Exp", "Reciprocal", "HardSigmoid", "HardSwish", "Identity",
          "Mish", "Celu", "Cast", "Dropout", "Clip", "FastGelu", "QuickGelu", "Log"}
_BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"}
_REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceSumSquare"}


def _rank(v):
    return None if v is None or v.shape is None else len(v.shape)


def _last(v):
    if v is None or v.shape is None or len(v.shape) == 0:
        return None
    d = v.shape[-1]
    return int(d) if isinstance(d, int) else None


def _users(node) -> list:
    """The nodes reading `node`'s first output."""
    return [u.node for u in node.outputs[0].uses()]


def _const(v):
    """A constant's array (initializer, not a graph input), else None."""
    from onnx_ir import convenience

    if v is None or v.is_graph_input():
        return None
    t = convenience.get_const_tensor(v)
    return None if t is None else t.numpy()


def _axes(node, rank):
    """A reduction's/Squeeze's axes, normalized; [] for 'all' (absent), None if not constant."""
    if "axes" in node.attributes:
        axes = list(node.attributes["axes"].as_ints())
    elif len(node.inputs) > 1 and node.inputs[1] is not None:
        c = _const(node.inputs[1])
        if c is None:
            return None
        axes = [int(a) for a in c.reshape(-1)]
    else:
        return []
    return None if rank is None else sorted(a % rank for a in axes)


class StreamRules:
    """`_visit(node) -> bool`: False pins every set the node reads (unsupported use)."""

    def _visit(self, node) -> bool:  # noqa: C901 - one branch per supported op family
        op, ins = node.op_type, list(node.inputs)
        spaced = [v for v in ins if v is not None and v in self.space]
        if any(v is not None and v in self.shape_of for v in ins):
            return self._visit_shape_user(node)
        if op == "Gather":
            return self._visit_gather(node, spaced)
        if op in ("MatMul", "Gemm"):
            return self._visit_matmul(node, spaced)
        if op == "Expand" and not spaced and _last(ins[0]) == 1 and len(_users(node)) == 1:
            shape = _const(ins[1])
            if shape is not None and shape.ndim == 1 and int(shape[-1]) > 1:
                self.expanded[node.outputs[0]] = node  # a per-row value broadcast to a width
            return True
        if not spaced:
            return True
        x = spaced[0]
        s, rank = self.space[x], _rank(x)
        if op in _UNARY and len(node.outputs) >= 1:
            if x is not ins[0] or any(
                    v is not None and (v in self.space or _const(v) is None or _const(v).size != 1)
                    for v in ins[1:]):
                return False
            if op == "Dropout":
                from ._dropout import identity_reason

                if (why := identity_reason(node)) is not None:  # pinned, still followed so
                    self._block(s, why)  # the stream it belongs to reports why
                    return self._out(node, s)
            return self._out(node, s)
        if op in _BINARY:
            return self._visit_binary(node, ins)
        if op == "LayerNormalization" or op == "RMSNormalization":
            axis = node.attributes.get_int("axis", -1)
            if rank is None or axis % rank != rank - 1 or x is not ins[0]:
                return False
            if any(o.uses() for o in node.outputs[1:]):
                return False
            for v in ins[1:]:
                if v is None:
                    continue
                c = _const(v)
                if c is None or c.ndim != 1 or c.shape[0] != self.size[self.find(s)]:
                    return False
                self._param(v, 0, s, "vec", node)
            self.norms.append((s, node.name or op))
            return self._out(node, s)
        if op in _REDUCE:
            axes = _axes(node, rank)
            if axes is None or x is not ins[0]:
                return False
            if not axes or rank - 1 in axes:  # reads the whole width: a norm's statistic
                self.norms.append((s, node.name or op))
                return True
            return self._out(node, s)
        if op in ("Squeeze", "Unsqueeze"):
            axes = _axes(node, rank if op == "Squeeze" else _rank(node.outputs[0]))
            if not axes or x is not ins[0]:
                return False
            last = (rank if op == "Squeeze" else _rank(node.outputs[0])) - 1
            return last not in axes and self._out(node, s)
        if op == "Slice":
            if x is not ins[0] or len(ins) < 4 or ins[3] is None:
                return False
            axes = _const(ins[3])
            if axes is None or rank is None or rank - 1 in [int(a) % rank for a in axes]:
                return False
            return self._out(node, s)
        if op == "Transpose":
            perm = list(node.attributes["perm"].as_ints()) if "perm" in node.attributes else None
            return perm is not None and perm[-1] == len(perm) - 1 and self._out(node, s)
        if op == "Reshape":
            return self._visit_reshape(node, x, s)
        if op == "Shape":
            if "end" in node.attributes and rank is not None:
                end = node.attributes.get_int("end")
                if (end + rank if end < 0 else end) <= rank - 1:
                    return True  # reports leading dims only
            self.shape_of[node.outputs[0]] = s
            return True
        if op == "Concat":
            if rank is None or node.attributes.get_int("axis", 0) % rank == rank - 1:
                return False
            for v in ins:
                if v in self.space:
                    s = self._union(s, self.space[v])
                elif (c := _const(v)) is not None and c.ndim == rank:
                    self._param(v, rank - 1, s, "vec", node)
                else:
                    return False
            return self._out(node, s)
        return False

    def _visit_gather(self, node, spaced) -> bool:
        ins = list(node.inputs)
        axis = node.attributes.get_int("axis", 0)
        data, idx = ins[0], ins[1]
        if idx in self.space:
            return False
        if data in self.space:  # e.g. the [CLS] token: any axis but the last
            rank = _rank(data)
            return rank is not None and axis % rank != rank - 1 and \
                self._out(node, self.space[data])
        table = _const(data)
        if table is not None and table.ndim == 2 and axis == 0 and table.shape[1] > 1 \
                and not spaced:
            s = self._new(int(table.shape[1]))
            self._param(data, 1, s, "emb", node)
            self.space[node.outputs[0]] = s
        return True

    def _visit_matmul(self, node, spaced) -> bool:
        ins = list(node.inputs)
        x, w = ins[0], ins[1]
        if w in self.space or (node.op_type == "Gemm" and node.attributes.get_int("transA", 0)
                               and spaced):
            return False
        arr = _const(w)
        if arr is None or arr.ndim != 2:
            return not spaced
        trans = node.op_type == "Gemm" and node.attributes.get_int("transB", 0)
        k_axis, n_axis = (1, 0) if trans else (0, 1)
        if x in self.space:
            if self.size[self.find(self.space[x])] != arr.shape[k_axis]:
                return False
            self._param(w, k_axis, self.space[x], "in", node)
        n = int(arr.shape[n_axis])
        if n <= 1:
            return True
        s = self._new(n)
        self._param(w, n_axis, s, "out", node)
        if node.op_type == "Gemm" and len(ins) > 2 and ins[2] is not None:
            c = _const(ins[2])
            if c is None:
                self._block(s, f"Gemm '{node.name}' has a non-constant bias")
            elif c.shape and c.shape[-1] == n:
                self._param(ins[2], c.ndim - 1, s, "vec", node)
        self.space[node.outputs[0]] = s
        return True

    def _visit_binary(self, node, ins) -> bool:
        out = node.outputs[0]
        rank, width = _rank(out), _last(out)
        spaced = [v for v in ins if v in self.space]
        if rank is None or width is None or any(
                _last(v) != width or self.size[self.find(self.space[v])] != width
                for v in spaced):
            return False
        s = self.space[spaced[0]]
        for v in spaced[1:]:
            s = self._union(s, self.space[v])
        for v in ins:
            if v in self.space:
                continue
            if v in self.expanded and _last(v) == width:  # F.normalize's Expand of the norm
                self.reshapes.append((self.expanded[v], s))
                continue
            c = _const(v)
            if c is not None:
                if c.ndim > rank:
                    return False
                if c.ndim and c.shape[-1] == width:
                    self._param(v, c.ndim - 1, s, "vec", node)
                elif c.ndim and c.shape[-1] != 1:
                    return False
                continue
            if _last(v) != 1:  # a tensor of unknown origin as wide as the stream
                self._block(s, f"{node.op_type} '{node.name}' mixes in '{v.name}', a tensor "
                               "the step cannot trace")
                self.space[out] = s
                return True
        return self._out(node, s)

    def _visit_reshape(self, node, x, s) -> bool:
        ins = list(node.inputs)
        if x is not ins[0] or _last(x) is None:
            return False
        target = ins[1]
        if target in self.shape_of:  # reshaped to another stream value's own shape
            return self._visit_shape_user(node)
        shape = _const(target)
        if shape is None or shape.ndim != 1 or int(shape[-1]) != _last(x):
            return False
        self.reshapes.append((node, s))
        return self._out(node, s)

    def _visit_shape_user(self, node) -> bool:
        """Uses of a Shape of the stream that stay right when the width changes: a Reshape of a
        stream value of the same set to it, or Gather/Slice of leading entries only."""
        ins = list(node.inputs)
        op = node.op_type
        if op == "Reshape" and ins[1] in self.shape_of and ins[0] in self.space:
            src = self.shape_of[ins[1]]
            self.same.append((src, self.space[ins[0]], f"Reshape '{node.name}' to the shape of "
                                                      "another tensor"))
            self.space[node.outputs[0]] = self.space[ins[0]]
            return True
        s = self.shape_of.get(ins[0])
        if s is None:
            return False
        n = ins[0].shape[0] if ins[0].shape is not None else None
        if not isinstance(n, int):
            return False
        if op == "Gather":
            idx = _const(ins[1])
            return idx is not None and (n - 1) not in [int(i) % n for i in idx.reshape(-1)]
        if op == "Slice":
            starts, ends = _const(ins[1]), _const(ins[2])
            if starts is None or ends is None:
                return False
            end = int(ends.reshape(-1)[0])
            end = min(n, end if end >= 0 else end + n)
            return end <= n - 1
        return False
