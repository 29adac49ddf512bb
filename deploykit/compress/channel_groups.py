"""Channel groups of a torch module, found by torch.fx: which convs' filters must be pruned
together, and which layers read those channels.

The torch twin of rewrite/_channel_graph.py (the ONNX side's coupling). Every tensor traced is
given a channel space; a Conv2d makes a new one (its filters), BatchNorm, activations, pooling
and dropout pass theirs through, and an Add joins its operands' spaces into one (a residual
stream: every block's last conv, the downsample conv and the stage's input conv write the same
channels, so they must keep the same indices). A Conv2d reading a space, or a Linear reading it
after a flatten, consumes it. Anything else that touches a space (a concat, a reshape, a
channel-wise multiply by a tensor, the model output, the model input) blocks it: its channels
stay whole. Nothing is hard-coded to a block class: the coupling comes from the traced graph.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

from ..errors import InputError
from ..rewrite._union_find import find_root

PASS_MODULES = ("ReLU", "ReLU6", "LeakyReLU", "SiLU", "GELU", "Hardswish", "Sigmoid", "Tanh",
                "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "Dropout",
                "Dropout2d", "Identity")
PASS_FUNCS = ("relu", "relu_", "relu6", "leaky_relu", "silu", "gelu", "hardswish", "sigmoid",
              "tanh", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d",
              "dropout")
_ADDS = (operator.add, operator.iadd)
_ADD_NAMES = ("add", "add_")


@dataclass
class Group:
    """One set of channels pruned as a whole."""

    size: int
    producers: list[str] = field(default_factory=list)  # Conv2d names writing the channels
    # BatchNorm2d name -> the conv whose output it normalises ("" when not right after one)
    bns: dict[str, str] = field(default_factory=dict)
    convs_reading: list[str] = field(default_factory=list)  # Conv2d names reading them
    linears_reading: list[str] = field(default_factory=list)  # Linear names, after a flatten
    joined: bool = False  # an Add joins more than one producer (a residual stream)
    blocked: str | None = None  # why these channels cannot be pruned


class _Spaces:
    """Union-find over channel spaces, each root holding its Group."""

    def __init__(self):
        self.parent: list[int] = []
        self.groups: list[Group] = []

    def new(self, size: int, blocked: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.groups.append(Group(size, blocked=blocked))
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        return find_root(self.parent, s)

    def group(self, s: int) -> Group:
        return self.groups[self.find(s)]

    def block(self, s: int, why: str) -> None:
        g = self.group(s)
        g.blocked = g.blocked or why

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        ga, gb = self.groups[ra], self.groups[rb]
        self.parent[rb] = ra
        if ga.size != gb.size:
            ga.blocked = ga.blocked or "an Add of different channel counts (broadcast)"
        ga.producers += gb.producers
        ga.bns.update(gb.bns)
        ga.convs_reading += gb.convs_reading
        ga.linears_reading += gb.linears_reading
        ga.blocked = ga.blocked or gb.blocked
        ga.joined = True
        return ra


def channel_groups(model) -> tuple[list[Group], dict[str, Group]]:
    """The groups of `model` (traced with torch.fx), and the group of every Conv2d's output
    (by module name). Raises InputError when the model cannot be traced."""
    groups, of_conv, _, _ = trace_spaces(model)
    return groups, of_conv


def trace_spaces(model):
    """channel_groups' trace itself: (groups, the group of every Conv2d's output, the
    torch.fx GraphModule, the group of every fx node with a (N, C, ...) output in a tracked
    channel space, by node name). Feature distillation (compress/hints.py) taps those nodes."""
    import torch.fx
    from torch import nn

    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - fx refuses data-dependent control flow
        raise InputError(f"cannot trace the model for filter pruning: {str(e).splitlines()[0]}")
    mods = dict(gm.named_modules())
    sp = _Spaces()
    space: dict = {}  # fx node -> channel space of its (N, C, ...) output
    flat: dict = {}  # fx node -> channel space flattened (start_dim=1) into its features
    conv_of: dict = {}  # fx node -> the Conv2d name whose raw output it is
    out_space: dict[str, int] = {}
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1

    def tracked(args) -> list:
        found = []
        torch.fx.node.map_arg(args, lambda a: found.append(a) if a in space or a in flat
                              else None)
        return found

    def block_inputs(node, why: str) -> None:
        for a in tracked((node.args, node.kwargs)):
            sp.block(space[a] if a in space else flat[a], why)

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            continue  # the input's channels are the user's: nothing reads them as prunable
        if node.op == "output":
            block_inputs(node, "they reach the model output")
            continue
        first = node.args[0] if node.args else None
        if node.op == "call_module":
            mod = mods[node.target]
            kind = type(mod).__name__
            shared = calls[node.target] > 1
            if isinstance(mod, nn.Conv2d):
                if first in space:
                    if mod.groups != 1 or shared:
                        sp.block(space[first], f"read by {node.target} (grouped or shared)")
                    else:
                        sp.group(space[first]).convs_reading.append(node.target)
                elif first in flat:
                    sp.block(flat[first], f"flattened into {node.target}")
                s = sp.new(mod.out_channels, blocked="grouped or shared conv"
                           if mod.groups != 1 or shared else None)
                if mod.groups == 1 and not shared:
                    sp.groups[s].producers.append(node.target)
                    out_space[node.target] = s
                    conv_of[node] = node.target
                space[node] = s
                continue
            if isinstance(mod, nn.BatchNorm2d) and first in space:
                if shared:
                    sp.block(space[first], f"{node.target} is called more than once")
                else:  # per channel: sliced with the group ("" when not right after a conv)
                    sp.group(space[first]).bns[node.target] = conv_of.get(first, "")
                space[node] = space[first]
                continue
            if kind in PASS_MODULES and first in space:
                space[node] = space[first]
                continue
            if kind in PASS_MODULES and first in flat:
                flat[node] = flat[first]
                continue
            if kind == "Flatten" and first in space and mod.start_dim == 1:
                flat[node] = space[first]
                continue
            if isinstance(mod, nn.Linear) and first in flat and not shared:
                sp.group(flat[first]).linears_reading.append(node.target)
                continue
            block_inputs(node, f"read by {node.target} ({kind})")
            continue
        if node.op in ("call_function", "call_method"):
            name = node.target if isinstance(node.target, str) else \
                getattr(node.target, "__name__", str(node.target))
            ops = tracked(node.args)
            if (node.target in _ADDS or name in _ADD_NAMES) and len(node.args) == 2 \
                    and not node.kwargs and all(a in space for a in ops) and ops:
                # a residual Add (x + y) joins the spaces; a tensor + a scalar keeps its own
                s = space[ops[0]]
                for a in ops[1:]:
                    s = sp.union(s, space[a])
                if len(ops) == 1 and any(isinstance(a, torch.fx.Node) and a not in space
                                         for a in node.args):
                    sp.block(s, f"added to an untracked tensor ({node.name})")
                space[node] = s
                continue
            if name in PASS_FUNCS and first in space and len(ops) == 1:
                space[node] = space[first]
                continue
            if name == "flatten" and first in space and len(ops) == 1 and \
                    (node.args[1:2] == (1,) or node.kwargs.get("start_dim") == 1):
                flat[node] = space[first]
                continue
            if name in PASS_FUNCS and first in flat and len(ops) == 1:
                flat[node] = flat[first]
                continue
        block_inputs(node, f"used by {node.op} {node.name}")
    roots = sorted({sp.find(s) for s in range(len(sp.parent))})
    groups = [sp.groups[r] for r in roots]
    for g in groups:
        g.joined = g.joined and len(g.producers) > 1
    return groups, {name: sp.group(s) for name, s in out_space.items()}, gm, \
        {n.name: sp.group(s) for n, s in space.items()}


def has_residual_streams(model) -> bool:
    """Whether `model` has a residual stream prunable coupled (prune_filters(residual=True)
    would cut more than without); False when it cannot be traced."""
    try:
        groups, _ = channel_groups(model)
    except InputError:
        return False
    return any(g.joined and not g.blocked for g in groups)
