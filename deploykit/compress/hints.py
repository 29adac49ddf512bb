"""Feature-map hints for distilling a pruned student: where its feature maps are compared with
its teacher's, and at which of the teacher's channels.

Output-only distillation gives a deeply pruned network one signal for all its layers, from the
far end; it recovers slowly, and layers far from the output hardly at all. Matching intermediate
feature maps as well (FitNets' hints, Romero et al. 2015; the layer-wise reconstruction of
ThiNet, Luo et al. 2017, and He et al. 2017's channel pruning) gives every block a target of its
own. A filter-pruned student needs no learned regressor for it: each pruned tensor keeps a known
subset of the teacher's channels (prune_filters' channel map), so its feature map is compared
with the teacher's at those channels; a tensor whose channels were not pruned is compared whole.

Where: found from the torch.fx trace (channel_groups.trace_spaces), nothing named by class. A
hint point is a feature map at the end of its run of per-channel ops (BatchNorm, activation,
pooling) that a weighted layer or a join reads — not one only added into a residual stream. When
the model has residual streams (Adds join channel spaces), the hints are the stream's tensors
(the block boundaries: the stem's output, each block's output); a block's inner tensors are
left free, as the block as a whole is what has to match. Without streams (a plain chain of
convs), every layer's output is a hint.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from .channel_groups import PASS_FUNCS, PASS_MODULES, trace_spaces


@dataclass(frozen=True)
class Hint:
    node: str  # torch.fx node name: the same in the pruned copy (modules replaced, graph kept)
    producer: str | None  # a Conv2d writing these channels: its channel map indexes the teacher
    channels: int  # the teacher's channel count here


def hint_points(model, inner: bool = False) -> list[Hint]:
    """The hint points of `model` (the unpruned teacher), in graph order; [] when it has none
    (or cannot be traced: then the caller distills on the outputs alone)."""
    from ..errors import InputError

    try:
        _, _, gm, group_of = trace_spaces(model)
    except InputError:
        return []
    mods = dict(gm.named_modules())

    def per_channel(user) -> bool:  # a BatchNorm / activation / pooling on this tensor alone
        if user.op == "call_module":
            return type(mods[user.target]).__name__ in PASS_MODULES + ("BatchNorm2d",)
        name = user.target if isinstance(user.target, str) else \
            getattr(user.target, "__name__", "")
        return user.op in ("call_function", "call_method") and name in PASS_FUNCS

    def is_add(user) -> bool:
        name = user.target if isinstance(user.target, str) else \
            getattr(user.target, "__name__", "")
        return name in ("add", "add_", "iadd")

    found = []
    for node in gm.graph.nodes:
        g = group_of.get(node.name)
        if g is None:
            continue
        readers = [u for u in node.users if not per_channel(u) and not is_add(u)]
        if readers:  # the end of its per-channel run, read by a weighted layer (or the like)
            found.append((node, g))
    if not inner and any(g.joined for _, g in found):
        found = [(n, g) for n, g in found if g.joined]
    return [Hint(n.name, g.producers[0] if g.producers else None, g.size) for n, g in found]


def tapped(model, hints: list[Hint], clone: bool = False):
    """A torch.fx GraphModule of `model` returning (its output, [the hint tensors]). It shares
    `model`'s parameters (training it trains `model`); `clone` traces a copy instead (for a
    teacher that must not be touched). In-place activations are turned off in what is traced, so
    a tapped tensor is not overwritten later in the forward pass (the same values either way)."""
    import torch.fx

    if clone:
        model = copy.deepcopy(model)
    for m in model.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False
    gm = torch.fx.symbolic_trace(model)
    nodes = {n.name: n for n in gm.graph.nodes}
    missing = [h.node for h in hints if h.node not in nodes]
    if missing:
        raise ValueError(f"hint points not in the traced graph: {', '.join(missing)}")
    out = next(n for n in gm.graph.nodes if n.op == "output")
    out.args = ((out.args[0], tuple(nodes[h.node] for h in hints)),)
    gm.recompile()
    return gm


def hint_loss(student_feats, teacher_feats, hints: list[Hint], kept: dict):
    """Mean over the hints of the relative squared error ||s - t[kept]||^2 / ||t[kept]||^2:
    each feature map on its own scale, so no block dominates by the size of its activations."""
    import torch

    total = 0.0
    for s, t, h in zip(student_feats, teacher_feats, hints):
        idx = kept.get(h.producer) if h.producer else None
        if idx is not None:
            t = t.index_select(1, idx)
        total = total + ((s - t) ** 2).sum() / ((t ** 2).sum() + 1e-8)
    return total / max(len(hints), 1) if hints else torch.zeros(())
