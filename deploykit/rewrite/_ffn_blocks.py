"""Finding transformer feed-forward blocks in an onnx_ir graph (prune_ffn.py decides and slices).

A block is fc1 (MatMul [+ bias Add] or Gemm) -> an element-wise activation region -> fc2 (MatMul
or Gemm), where every value between fc1 and fc2 carries one entry per neuron on its last axis and
every op there is element-wise with scalar constants, so neuron j only ever meets neuron j. A gated
block (SwiGLU, GeGLU) has several fc1s reading one input, whose activations meet element-wise.
`find_blocks` returns each block with the constants sliced along its neurons, and why FFN
look-alikes are not blocks; prune_heads.py reuses the fc1 matcher for attention projections.

Weights shared across layers (ALBERT applies one layer's weights at every depth): the blocks
whose fc1/fc2 weights, gates and biases are the same initializers form one group, pruned once
with one kept-neuron set (`Block.also` holds the group's other applications). A shared weight is
prunable only when every one of its uses is the same role in a block of that group (each use of
fc1 followed by an element-wise activation and then the shared fc2); otherwise the group is
pinned with the reason. A bias that exporters merged with an equal unrelated constant (zeros) is
given its own copy instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._dropout import identity_reason

# element-wise ops allowed between fc1 and fc2 (other operands must be scalar constants)
_ELEMENTWISE = {"Relu", "Gelu", "Erf", "Tanh", "Sigmoid", "Add", "Sub", "Mul", "Div", "Pow",
                "LeakyRelu", "Softplus", "Elu", "Selu", "Neg", "Abs", "Sqrt", "Exp", "Clip",
                "HardSigmoid", "HardSwish", "Identity", "Mish", "Celu", "ThresholdedRelu",
                "FastGelu", "QuickGelu"}

_ARITHMETIC = {"Add", "Sub", "Mul", "Div", "Pow", "Neg", "Abs", "Sqrt", "Exp", "Identity", "Clip",
               "Dropout"}



@dataclass
class Block:
    """One feed-forward block: the constants sliced along its neurons."""

    fc1: object  # ir.Node (MatMul or Gemm)
    w1: object  # ir.Value: fc1 weight
    w1_axis: int  # neuron axis of w1
    b1: object | None  # ir.Value: bias on the neuron axis (last), or None
    fc2: object  # ir.Node
    w2: object
    w2_axis: int
    region: list  # ir.Values between fc1 and fc2 (shapes reset after slicing)
    exit: object  # ir.Value: fc2's input
    neurons: int
    reshapes: list  # ir.Nodes: Reshapes in the region whose target shape ends in `neurons`
    # the other fc1s of a gated block: (node, weight, neuron axis, bias or None) each
    gates: tuple = ()
    # the other applications of the same weights (layers sharing them): their own fc1/fc2 nodes,
    # regions, exits and Reshapes; the weights are sliced once, for all of them
    also: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.w1.name


def _init(v):
    """An initializer (not a graph input), as an array, however many nodes use it; else None."""
    if v is None or not v.is_initializer() or v.const_value is None or v.is_graph_input():
        return None
    return v.const_value.numpy()


def _const(v):
    """An initializer used by exactly one node, as an array; None otherwise."""
    return _init(v) if v is not None and len(v.uses()) == 1 else None


def _scalar(v) -> bool:
    from onnx_ir import convenience

    if v is None:
        return True
    t = convenience.get_const_tensor(v)
    return t is not None and t.numpy().size == 1


def _users(v) -> list:
    return [u.node for u in v.uses()]


def _fc1(node, shared: bool = False):
    """(weight, neuron axis, bias value or None, output value after bias) of an fc1 candidate;
    with `shared`, weights and biases other nodes also use qualify (find_blocks checks them)."""
    get = _init if shared else _const
    ins = list(node.inputs)
    if node.op_type == "MatMul":
        w = get(ins[1])
        if w is None or w.ndim != 2:
            return None
        out, bias = node.outputs[0], None
        users = _users(out)
        if len(users) == 1 and users[0].op_type == "Add":
            add = users[0]
            other = [v for v in add.inputs if v is not out]
            b = get(other[0]) if len(other) == 1 else None
            if b is not None and b.shape[-1:] == (w.shape[1],) and b.size == w.shape[1]:
                bias, out = other[0], add.outputs[0]
        return ins[1], 1, bias, out
    if node.op_type == "Gemm" and not node.attributes.get_int("transA", 0):
        w = get(ins[1])
        if w is None:
            return None
        axis = 0 if node.attributes.get_int("transB", 0) else 1
        bias = ins[2] if len(ins) > 2 and ins[2] is not None else None
        if bias is not None:
            b = get(bias)
            if b is None:
                return None
            if b.size == 1:
                bias = None  # a broadcast scalar: nothing to slice
            elif b.shape[-1:] != (w.shape[axis],) or b.size != w.shape[axis]:
                return None
        return ins[1], axis, bias, node.outputs[0]
    return None


def _keeps_last_axis(node, v, neurons: int):
    """A Reshape of `v` whose constant target shape ends in `neurons` moves whole rows of neurons
    (row-major), so it is element-wise for pruning; its shape constant then needs the new count."""
    from onnx_ir import convenience

    if node.op_type != "Reshape" or list(node.inputs)[0] is not v:
        return False
    t = convenience.get_const_tensor(list(node.inputs)[1])
    return t is not None and t.numpy().ndim == 1 and int(t.numpy()[-1]) == neurons


def _activated(nodes) -> bool:
    return any(n.op_type not in _ARITHMETIC for n in nodes)


def _region(starts, graph_outputs, neurons: int):
    """Values reachable from `starts` (one fc1 output, or every fc1 output of a gated block)
    through element-wise ops whose other operands are scalar constants or region values (and
    Reshapes that keep the neuron axis last), and the single fc2 node reading them:
    (values, fc2, exit, reshapes), or (reason, whether an activation was on the way)."""
    region, frontier, fc2, exit_value = list(starts), list(starts), None, None
    seen, nodes, reshapes = {id(v) for v in starts}, [], []
    while frontier:
        v = frontier.pop()
        if v in graph_outputs:
            return "an activation is a graph output", _activated(nodes)
        for node in _users(v):
            if node.op_type in ("MatMul", "Gemm") and list(node.inputs)[0] is v:
                if fc2 is not None and fc2 is not node:
                    return "activations feed two matrix products", _activated(nodes)
                if node.op_type == "Gemm" and node.attributes.get_int("transA", 0):
                    return "fc2 is a Gemm with transA", _activated(nodes)
                fc2, exit_value = node, v
                continue
            if _keeps_last_axis(node, v, neurons):
                if node not in reshapes:
                    reshapes.append(node)
                    seen.add(id(node.outputs[0]))
                    region.append(node.outputs[0])
                    frontier.append(node.outputs[0])
                continue
            if node.op_type == "Dropout":  # inference Dropout: the identity (_dropout.py)
                why = identity_reason(node)
                if why is not None:
                    return why, _activated(nodes)
            elif node.op_type not in _ELEMENTWISE or len(node.outputs) != 1:
                return f"activation used by {node.op_type} '{node.name}'", _activated(nodes)
            if node not in nodes:
                nodes.append(node)
                out = node.outputs[0]
                seen.add(id(out))
                region.append(out)
                frontier.append(out)
    for node in nodes:
        for other in node.inputs:
            if other is not None and id(other) not in seen and not _scalar(other):
                return f"{node.op_type} '{node.name}' mixes in a non-scalar tensor", True
    if fc2 is None:
        return "no second matrix product reads the activations", _activated(nodes)
    return region, fc2, exit_value, reshapes


def _candidates(graph) -> dict[int, tuple]:
    """id(node) -> (node, weight, neuron axis, bias, output, neurons) of every fc1 candidate."""
    out = {}
    for node in graph:
        if node.domain not in ("", "ai.onnx"):
            continue
        fc = _fc1(node, shared=True)
        if fc is not None:
            w, axis, bias, start = fc
            out[id(node)] = (node, w, axis, bias, start, w.const_value.numpy().shape[axis])
    return out


def _siblings(cand: dict[int, tuple], fc: tuple) -> list[tuple]:
    """The other fc1 candidates reading the same input with the same neuron count: the partners
    of a gated block (Q/K/V projections qualify too; their region then fails and they are
    tried alone)."""
    x = list(fc[0].inputs)[0]
    return [c for c in cand.values() if c[0] is not fc[0] and list(c[0].inputs)[0] is x
            and c[5] == fc[5]]


def find_blocks(irm) -> tuple[list[Block], list[str]]:
    """Every prunable feed-forward block of an onnx_ir model, and why other candidates are not."""
    graph = irm.graph
    outputs = set(graph.outputs)
    blocks, reasons = [], []
    taken: set[int] = set()
    cand = _candidates(graph)
    for node in graph:
        if id(node) in taken or id(node) not in cand:
            continue
        fc = cand[id(node)]
        _, w1, axis, bias, start, neurons = fc
        gates = [c for c in _siblings(cand, fc) if id(c[0]) not in taken]
        found = _region([start, *(c[4] for c in gates)], outputs, neurons) if gates else None
        if found is None or len(found) == 2:  # not a gated block: this fc1 alone
            gates, found = [], _region([start], outputs, neurons)
        if len(found) == 2:  # (reason, an activation was on the way): report FFN look-alikes
            if found[1]:
                reasons.append(f"{w1.name}: {found[0]}")
            continue
        region, fc2, exit_value, reshapes = found
        w2 = _init(list(fc2.inputs)[1])
        if w2 is None or w2.ndim != 2:
            reasons.append(f"{w1.name}: fc2 '{fc2.name}' has a non-constant weight")
            continue
        w2_axis = 1 if fc2.op_type == "Gemm" and fc2.attributes.get_int("transB", 0) else 0
        if w2.shape[w2_axis] != neurons:
            reasons.append(f"{w1.name}: fc2 '{fc2.name}' reads {w2.shape[w2_axis]} features, "
                           f"fc1 makes {neurons}")
            continue
        # fc2 stays a candidate: in an MLP chain (AlexNet's fc6 -> fc7 -> fc8) it is the next
        # block's fc1, its input rows sliced by this block and its output columns by that one
        taken.update(id(c[0]) for c in gates)
        blocks.append(Block(node, w1, axis, bias, fc2, list(fc2.inputs)[1], w2_axis, region,
                            exit_value, neurons, reshapes, tuple(c[:4] for c in gates)))
    return _group(blocks, reasons)


def _roles(b: Block) -> list[tuple[object, str, object, int]]:
    """(value, role, node, input index) of every constant `b` slices, at its use in `b`."""
    from ._shared_weights import bias_user

    out = [(b.w1, "fc1 weight", b.fc1, 1), (b.w2, "fc2 weight", b.fc2, 1)]
    for node, w, _, bias in [(b.fc1, b.w1, b.w1_axis, b.b1), *b.gates]:
        if w is not b.w1:
            out.append((w, "gate weight", node, 1))
        if bias is not None:
            user = bias_user(node, bias)
            out.append((bias, "fc1 bias", user, list(user.inputs).index(bias)))
    return out


def _group(blocks: list[Block], reasons: list[str]) -> tuple[list[Block], list[str]]:
    """One block per group of blocks applying the same weights (_shared_weights.py), the others
    in its `also`; groups whose shared weights have other uses are pinned with the reason."""
    from ._shared_weights import group

    groups, pinned = group(blocks, _roles, "a feed-forward block")
    for members in groups:
        members[0].also = members[1:]
    return [m[0] for m in groups], pinned + reasons
