"""Structured pruning of attention heads, removing them from the ONNX graph.

The pattern is multi-head attention as torch's exporters write it:

    q/k/v = x @ W + b -> Reshape [.., H, d] -> Transpose (heads to axis 1)
    scores = q @ k -> element-wise (scale, + mask broadcast over heads) -> Softmax(-1) -> @ v
    -> Transpose (heads back to axis 2) -> Reshape [.., H*d] -> @ W_out

Each head is a column block of W_q, W_k, W_v (and their biases) and a row block of W_out; nothing
mixes heads between the projections and W_out, so dropping the same heads from all of them (and
rewriting the head count in the Reshape shape constants, each use given its own constant) is
exact on the heads kept; the residual width is untouched. Importance: |W_v head|_F * |W_out head|_F
(the size of what a head can add to the output).

Weights shared across layers (ALBERT): the attention blocks applying the same projections are one
group (_shared_weights.py), pruned once with one kept set of heads; a shared projection used
anywhere else pins the group with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from ..errors import InputError
from . import StepPass
from ._channel_graph import set_shape_entry
from ._ffn_blocks import _fc1, _init, _users

_SCORE_OPS = {"Mul", "Div", "Add", "Sub", "Where", "Identity", "Cast"}


@dataclass(frozen=True)
class Config:
    ratio: float = 0.5  # fraction of each attention block's heads removed
    min_heads: int = 1
    layers: tuple[str, ...] = ()  # "W_Q:RATIO" (the query weight, bias or node name) overrides


@dataclass
class Proj:
    node: object  # the MatMul/Gemm
    w: object
    axis: int  # output-feature axis of w
    b: object | None
    reshape: object  # the split Reshape node


@dataclass
class Attention:
    q: Proj
    k: Proj
    v: Proj
    merge: object  # the Reshape merging heads back
    out: object  # the output projection node
    w_out: object
    w_out_axis: int
    heads: int
    dk: int
    dv: int
    values: list  # values whose shapes change
    # the other applications of the same weights (layers sharing them), sliced with this one
    also: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.q.w.name

    def aliases(self) -> list[str]:
        return [n for n in (self.q.w.name, self.q.b.name if self.q.b is not None else None,
                            self.q.node.name) if n]


def _shape_const(node):
    from onnx_ir import convenience

    t = convenience.get_const_tensor(list(node.inputs)[1]) if len(node.inputs) > 1 else None
    return None if t is None else t.numpy()


def _single(v):
    users = _users(v)
    return users[0] if len(users) == 1 else None


def _perm(node):
    return list(node.attributes["perm"].as_ints()) if "perm" in node.attributes else None


def _head_branch(v):
    """Walk back from q/k/v (heads on axis 1) through one Transpose to the splitting Reshape and
    its projection: (Proj, heads, head size, values) or None."""
    t = v.producer()
    if t is None or t.op_type != "Transpose" or _perm(t) is None or len(_users(v)) != 1:
        return None
    perm = _perm(t)
    if len(perm) != 4 or perm[1] != 2:  # input axis 2 (heads after the split) -> axis 1
        return None
    r_out = list(t.inputs)[0]
    r = r_out.producer()
    if r is None or r.op_type != "Reshape" or len(_users(r_out)) != 1:
        return None
    shape = _shape_const(r)
    x = list(r.inputs)[0]
    if shape is None or shape.shape != (4,) or shape[3] <= 0 or not (
            shape[2] > 0 or (shape[2] == -1 and _keeps_lead(shape, x, 2))):
        return None
    p = x.producer()
    if p is None:
        return None
    if p.op_type == "Add":  # MatMul + bias Add
        mm = next((i.producer() for i in p.inputs if i is not None and i.producer() is not None
                   and i.producer().op_type == "MatMul"), None)
        p = mm if mm is not None else p
    fc = _fc1(p, shared=True) if p.op_type in ("MatMul", "Gemm") else None
    if fc is None or fc[3] is not x or len(_users(x)) != 1:
        return None
    w, axis, b, _ = fc
    features, d = w.const_value.numpy().shape[axis], int(shape[3])
    heads = int(shape[2]) if shape[2] > 0 else features // d  # [.., -1, d]: inferred
    if features != heads * d:
        return None
    return Proj(p, w, axis, b, r), heads, d, [x, r_out, v]


def _keeps_lead(shape, x, n: int) -> bool:
    """The first `n` entries of a Reshape's shape keep `x`'s leading dims (0 = copy, or the same
    static size), so an inferred (-1) entry after them splits or merges only the trailing axes."""
    dims = None if x.shape is None else list(x.shape)
    if dims is None or len(dims) < n + 1:
        return False
    return all(int(s) == 0 or (isinstance(dm, int) and int(s) == dm)
               for s, dm in zip(shape[:n], dims[:n]))


def _attention(softmax):
    """The attention block around a Softmax, or None."""
    if softmax.attributes.get_int("axis", -1) not in (-1, 3):
        return None
    pv = _single(softmax.outputs[0])
    if pv is None or pv.op_type != "MatMul" or list(pv.inputs)[0] is not softmax.outputs[0]:
        return None
    # scores: element-wise ops over MatMul(q, k); other operands must not vary over heads
    v, values = list(softmax.inputs)[0], []
    while True:
        values.append(v)
        node = v.producer()
        if node is None or len(_users(v)) != 1:
            return None
        if node.op_type == "MatMul":
            qk = node
            break
        if node.op_type not in _SCORE_OPS:
            return None
        chain = [i for i in node.inputs if i is not None and i.producer() is not None
                 and i.producer().op_type in _SCORE_OPS | {"MatMul"} and _on_path(i)]
        if len(chain) != 1:
            return None
        for other in node.inputs:
            if other is not None and other is not chain[0] and not _head_free(other):
                return None
        v = chain[0]
    q4, k4 = list(qk.inputs)
    v4 = list(pv.inputs)[1]
    branches = [_head_branch(x) for x in (q4, k4, v4)]
    if any(b is None for b in branches):
        return None
    (q, hq, dq, vq), (k, hk, dk, vk), (vv, hv, dv, vvv) = branches
    if not hq == hk == hv or dq != dk:
        return None
    # merge: Transpose (heads back to axis 2) -> Reshape [.., H*dv] -> output projection
    t = _single(pv.outputs[0])
    if t is None or t.op_type != "Transpose" or _perm(t) is None or len(_perm(t)) != 4 \
            or _perm(t)[2] != 1:
        return None
    merge = _single(t.outputs[0])
    shape = _shape_const(merge) if merge is not None and merge.op_type == "Reshape" else None
    if shape is None or shape.ndim != 1 or not (int(shape[-1]) == hv * dv or (
            int(shape[-1]) == -1 and len(shape) == 3 and _keeps_lead(shape, t.outputs[0], 2))):
        return None
    out = _single(merge.outputs[0])
    if out is None or out.op_type not in ("MatMul", "Gemm") or list(out.inputs)[0] is not \
            merge.outputs[0] or (out.op_type == "Gemm" and out.attributes.get_int("transA", 0)):
        return None
    w_out = list(out.inputs)[1]
    wo = _init(w_out)
    if wo is None or wo.ndim != 2:
        return None
    axis = 1 if out.op_type == "Gemm" and out.attributes.get_int("transB", 0) else 0
    if wo.shape[axis] != hv * dv:
        return None
    vals = values + [qk.outputs[0], softmax.outputs[0], pv.outputs[0], t.outputs[0],
                     merge.outputs[0]] + vq + vk + vvv
    return Attention(q, k, vv, merge, out, w_out, axis, hv, dk, dv, vals)


def _on_path(v) -> bool:
    """Scores descend from a MatMul of two non-constant tensors (q @ k)."""
    seen = 0
    while v is not None and seen < 16:
        node = v.producer()
        if node is None:
            return False
        if node.op_type == "MatMul":
            return all(i.const_value is None for i in node.inputs)
        ins = [i for i in node.inputs if i is not None and i.producer() is not None]
        v = ins[0] if len(ins) == 1 else next((i for i in ins if i.producer().op_type in
                                               _SCORE_OPS | {"MatMul"}), None)
        seen += 1
    return False


def _head_free(v) -> bool:
    """A mask or scale operand that broadcasts over the head axis (scalar, or axis 1 of size 1)."""
    if v.shape is None:
        from onnx_ir import convenience

        t = convenience.get_const_tensor(v)
        return t is not None and t.numpy().size == 1
    dims = list(v.shape)
    return len(dims) < 3 or (len(dims) == 4 and dims[1] == 1)


def _roles(a: Attention) -> list[tuple[object, str, object, int]]:
    """(value, role, node, input index) of every constant `a` slices, at its use in `a`."""
    from ._shared_weights import bias_user

    out = []
    for p, name in ((a.q, "query"), (a.k, "key"), (a.v, "value")):
        out.append((p.w, f"{name} weight", p.node, 1))
        if p.b is not None:
            user = bias_user(p.node, p.b)
            out.append((p.b, f"{name} bias", user, list(user.inputs).index(p.b)))
    return out + [(a.w_out, "output projection weight", a.out, 1)]


def find_attention(irm, reasons: list[str] | None = None) -> list[Attention]:
    """One block per group of attention blocks applying the same weights (the others in its
    `also`); why pinned groups are not taken is added to `reasons`."""
    from ._shared_weights import group

    found = [a for n in irm.graph if n.op_type == "Softmax" and (a := _attention(n)) is not None]
    groups, pinned = group(found, _roles, "an attention block")
    if reasons is not None:
        reasons += pinned
    for members in groups:
        members[0].also = members[1:]
    return [m[0] for m in groups]


def magnitude(a: Attention) -> np.ndarray:
    wv = np.moveaxis(a.v.w.const_value.numpy(), a.v.axis, 0).reshape(a.heads, -1)
    wo = np.moveaxis(a.w_out.const_value.numpy(), a.w_out_axis, 0).reshape(a.heads, -1)
    return np.linalg.norm(wv, axis=1) * np.linalg.norm(wo, axis=1)


def apply(graph, blocks: list[Attention], keep: dict[str, np.ndarray]) -> None:

    def take(v, axis, idx):
        arr = np.take(v.const_value.numpy(), idx, axis=axis)
        v.const_value = ir.tensor(np.ascontiguousarray(arr), name=v.name)
        v.shape = ir.Shape(arr.shape)

    def cols(heads, d):
        return (heads[:, None] * d + np.arange(d)[None, :]).reshape(-1)

    from ._shared_weights import bias_user, own_copy

    for a in blocks:
        if a.name not in keep:
            continue
        heads = keep[a.name]
        apps = (a, *a.also)
        for name, d in (("q", a.dk), ("k", a.dk), ("v", a.dv)):
            p = getattr(a, name)
            take(p.w, p.axis, cols(heads, d))
            if p.b is not None:  # exporters may have merged it with an equal constant
                users = {id(bias_user(getattr(x, name).node, p.b)) for x in apps}
                take(own_copy(graph, p.b, users, f"heads_{name}"),
                     p.b.const_value.numpy().ndim - 1, cols(heads, d))
        take(a.w_out, a.w_out_axis, cols(heads, a.dv))
        for x in apps:
            for p in (x.q, x.k, x.v):
                set_shape_entry(graph, p.reshape, 2, len(heads))
            set_shape_entry(graph, x.merge, -1, len(heads) * a.dv)
            for v in x.values:
                v.shape = None


class PruneHeadsPass(StepPass, ir.passes.FunctionalPass):
    """The least important attention heads of each block removed. Functional, like
    prune-channels: blocks are found on a copy shape-inferred by onnx (`load_ir` / `save_ir`, at
    this boundary)."""

    fidelity_kind = "lossy"

    def call(self, model):
        from . import per_layer, unknown_layers
        from ._channel_graph import load_ir, param_count, save_ir

        cfg = self.cfg
        if not 0.0 <= cfg.ratio < 1.0:
            raise InputError(f"prune-heads: ratio must be in [0, 1), got {cfg.ratio}")
        if cfg.min_heads < 1:
            raise InputError("prune-heads: min_heads must be >= 1")
        proto = ir.to_proto(model)
        irm = load_ir(proto)
        reasons: list[str] = []
        blocks = find_attention(irm, reasons)
        if not blocks:
            softmax = sum(1 for n in irm.graph if n.op_type == "Softmax")
            return self.skip(model, "no prunable attention block (Q/K/V projections -> head "
                             "split Reshape/Transpose -> Softmax -> head merge -> output "
                             "projection)"
                             + (f"; {'; '.join(reasons[:3])}" if reasons else
                                f"; {softmax} Softmax node(s) did not match" if softmax else ""))
        wanted = per_layer(cfg.layers, "prune-heads", 0.0, 1.0)
        alias = {n: a.name for a in blocks for n in a.aliases()}
        unknown_layers("prune-heads", wanted, alias)
        ratios = {alias[n]: r for n, r in wanted.items()}
        keep = {}
        for a in blocks:
            k = max(min(cfg.min_heads, a.heads),
                    a.heads - int(round(ratios.get(a.name, cfg.ratio) * a.heads)))
            if k < a.heads:
                keep[a.name] = np.sort(np.argsort(-magnitude(a), kind="stable")[:k])
        if not keep:
            return self.skip(model, f"ratio {cfg.ratio} removes no head from any block")
        details = [{"query": a.q.node.name, "weight": a.name, "heads": a.heads,
                    "kept": int(len(keep[a.name])) if a.name in keep else a.heads,
                    "applications": 1 + len(a.also),
                    "removed": sorted(set(range(a.heads))
                                      - set(keep.get(a.name, range(a.heads))))}
                   for a in blocks]
        apply(irm.graph, blocks, keep)
        out = save_ir(irm)
        before, after = param_count(proto), param_count(out)
        return self.done(ir.from_proto(out), details={
            "blocks": details, "not_prunable": reasons[:10], "params_before": before,
            "params_after": after,
            "compression": round(before / max(after, 1), 3)})


def prunable_layers(model) -> list[tuple[str, int, list[str], list[str]]]:
    """(name for `layers`, heads, [W_q, W_k, W_v], [W_out]) per attention block: a search's
    moves."""
    from ._channel_graph import load_ir

    return [(a.name, a.heads, [a.q.w.name, a.k.w.name, a.v.w.name], [a.w_out.name])
            for a in find_attention(load_ir(model))]
