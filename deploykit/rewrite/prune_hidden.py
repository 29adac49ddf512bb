"""Structured pruning of a transformer's hidden width d: whole channels of the residual stream
removed from the ONNX graph.

The stream (_hidden_stream.py) is every tensor coupled to the embeddings through residual Adds,
norms and element-wise ops; a channel of it is a column of every embedding table, an entry of
every bias/gamma/beta/position embedding on it, a row of every projection reading it (Q/K/V,
FFN fc1/gate/up, the pooler/classifier/LM head) and a column of every projection writing it
(attention output, FFN fc2/down). All of these are sliced together, and Reshapes on the stream
get the new width; Q/K/V's own head split is not on the stream and is untouched.

LOSSY, unlike prune-ffn/prune-heads: the norms (LayerNormalization, the exporters' decomposed
ReduceMean/Sub/Pow/Sqrt/Div LayerNorm and Pow/ReduceMean/Rsqrt/Mul RMSNorm) average over d, so
their mean and variance change when channels go, even channels that were zero. The step is
verified like the other lossy steps (fidelity reported, failing only on broken output).

The width of a graph output is part of the model's contract: a stream that reaches one
(`last_hidden_state` of a bare encoder) is refused by default, with the reason. Models ending in
a projection (classifier, pooler, LM head) keep their outputs. `output_width=pad` prunes anyway
and scatters the kept channels back into a d-wide output with zeros in the removed ones (what a
sentence-embedding user comparing vectors of width d can still consume).

Importance: per channel, the L2 norm of its slice of every constant on the stream, each constant
normalized by its mean (a table and a bias weigh alike), averaged; with `importance=activation`,
times the mean |x| of the stream at every norm's input over the calibration batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from ..errors import InputError
from . import StepPass
from ._channel_graph import set_shape_entry
from ._hidden_stream import Stream, StreamGraph, channel_norms


@dataclass(frozen=True)
class Config:
    ratio: float = 0.25  # fraction of the hidden width removed
    importance: str = "magnitude"  # "magnitude" | "activation" (needs calibration batches)
    round_to: int = 8  # kept width is a multiple of this (SIMD-friendly GEMM widths)
    min_width: int = 8
    # a stream that is a graph output: "refuse" (its width is the model's contract) or "pad"
    # (prune, and write the output d wide with zeros in the removed channels)
    output_width: str = "refuse"


def _norm_inputs(irm, stream: Stream) -> list[str]:
    """Names of the stream values read by its norms (the residual sums), or, without norms, of
    the stream's Add outputs."""
    members = set(stream.values)
    names = []
    for node in irm.graph:
        if node.op_type in ("LayerNormalization", "RMSNormalization", "ReduceMean"):
            x = list(node.inputs)[0]
            if x in members and x.name not in names:
                names.append(x.name)
    return names or [v.name for v in stream.values
                     if v.producer() is not None and v.producer().op_type == "Add"]


def activation(proto, irm, streams: list[Stream], batches) -> list[np.ndarray]:
    """Mean |x| per channel of each stream's norm inputs over `batches` (ORT), each value
    normalized by its mean, averaged over values."""
    import onnx

    from ..fidelity import run_ort

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    known = {o.name for o in probe.graph.output}
    wanted = [_norm_inputs(irm, st) for st in streams]
    for n in sorted({n for names in wanted for n in names} - known):
        probe.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT,
                                                                     None))
    sums: dict[str, np.ndarray] = {}
    for batch in batches:
        outs = dict(zip([o.name for o in probe.graph.output], run_ort(probe, batch)))
        for names in wanted:
            for n in names:
                a = np.abs(outs[n].astype(np.float64))
                sums[n] = sums.get(n, 0.0) + a.reshape(-1, a.shape[-1]).mean(axis=0)
    out = []
    for st, names in zip(streams, wanted):
        score = np.zeros(st.width)
        for n in names:
            score += sums[n] / max(float(sums[n].mean()), 1e-12)
        out.append(score / len(names) if names else np.ones(st.width))
    return out


def _take(v, axis: int, idx: np.ndarray) -> None:
    arr = np.take(v.const_value.numpy(), idx, axis=axis)
    v.const_value = ir.tensor(np.ascontiguousarray(arr), name=v.name)
    v.shape = ir.Shape(arr.shape)


def _pad_output(graph, v, width: int, idx: np.ndarray) -> None:
    """Graph output `v` (now len(idx) wide) written `width` wide again: Gather of a column map
    times a 0/1 mask, zeros in the removed channels."""
    colmap = np.zeros(width, np.int64)
    colmap[idx] = np.arange(len(idx))
    mask = np.zeros(width, v.dtype.numpy() if v.dtype is not None else np.float32)
    mask[idx] = 1.0
    name = v.name
    v.name = f"{name}_pruned"
    consts = []
    for suffix, arr in (("colmap", colmap), ("mask", mask)):
        c = ir.Value(name=f"{name}_{suffix}", shape=ir.Shape(arr.shape),
                     type=ir.TensorType(ir.DataType.from_numpy(arr.dtype)),
                     const_value=ir.tensor(arr))
        graph.register_initializer(c)
        consts.append(c)
    gather = ir.node("Gather", [v, consts[0]], attributes={"axis": -1})
    mul = ir.node("Mul", [gather.outputs[0], consts[1]])
    graph.extend([gather, mul])
    out = mul.outputs[0]
    out.name, out.type, out.shape = name, v.type, v.shape
    graph.outputs[graph.outputs.index(v)] = out
    v.shape = None


def _unshare(graph, stream: Stream) -> None:
    """Exporters merge equal constants (every LayerNorm's ones, the zero biases of Q and of the
    output projection): a constant the stream indexes that other nodes also use gets a copy for
    the stream's nodes, so slicing it leaves the others intact."""
    mine: dict[object, set] = {}
    for p in stream.params:
        mine.setdefault(p.value, set()).add(id(p.node))
    copies = {}
    for v, nodes in mine.items():
        if not ({id(u.node) for u in v.uses()} - nodes) and not v.is_graph_output():
            continue
        name = f"{v.name}_hidden"
        while name in graph.initializers:
            name += "_"
        c = ir.Value(name=name, shape=v.shape, type=v.type,
                     const_value=ir.tensor(v.const_value.numpy().copy(), name=name))
        graph.register_initializer(c)
        copies[v] = c
        for u in list(v.uses()):
            if id(u.node) in nodes:
                u.node.replace_input_with(u.idx, c)
    for p in stream.params:
        p.value = copies.get(p.value, p.value)


def apply(graph, stream: Stream, idx: np.ndarray) -> None:
    """Slice every constant of `stream` for the kept channels `idx`, in place."""
    _unshare(graph, stream)
    done = set()
    for p in stream.params:
        if (id(p.value), p.axis) not in done:
            done.add((id(p.value), p.axis))
            _take(p.value, p.axis, idx)
    for node in stream.reshapes:
        set_shape_entry(graph, node, -1, len(idx))
    inputs = set(graph.inputs)
    for v in stream.values:
        if v in stream.outputs:
            _pad_output(graph, v, stream.width, idx)
        elif v not in inputs:
            v.shape = None
    for node in graph:  # projections reading or writing the stream: recomputed by save_ir
        for v in node.outputs:
            if v not in graph.outputs:
                v.shape = None


class PruneHiddenPass(StepPass, ir.passes.FunctionalPass):
    """The least important channels of each residual stream removed. Functional, like
    prune-ffn: the stream is found on a copy shape-inferred by onnx (`load_ir` / `save_ir`)."""

    fidelity_kind = "lossy"

    def call(self, model):
        from ._channel_graph import load_ir, param_count, save_ir

        cfg, ctx = self.cfg, self.ctx
        if not 0.0 <= cfg.ratio < 1.0:
            raise InputError(f"prune-hidden: ratio must be in [0, 1), got {cfg.ratio}")
        if cfg.importance not in ("magnitude", "activation"):
            raise InputError(f"prune-hidden: importance must be 'magnitude' or 'activation', "
                             f"got {cfg.importance!r}")
        if cfg.output_width not in ("refuse", "pad"):
            raise InputError(f"prune-hidden: output_width must be 'refuse' or 'pad', "
                             f"got {cfg.output_width!r}")
        if cfg.round_to < 1 or cfg.min_width < 1:
            raise InputError("prune-hidden: round_to and min_width must be >= 1")
        proto = ir.to_proto(model)
        irm = load_ir(proto)
        streams, reasons = StreamGraph(irm).streams()
        if cfg.output_width == "refuse":
            for st in [s for s in streams if s.outputs]:
                names = ", ".join(f"'{v.name}'" for v in st.outputs[:3])
                reasons.append(f"hidden stream of width {st.width} is graph output {names}, "
                               "whose width is the model's contract (output_width=pad prunes "
                               "and pads it back with zeros)")
            streams = [s for s in streams if not s.outputs]
        if not streams:
            return self.skip(model, "no prunable hidden stream"
                             + (f": {'; '.join(reasons[:3])}" if reasons else
                                " (no embedding table whose lookups a projection reads)"))
        norms = sum(len(st.norms) for st in streams)
        notes = [f"{norms} norm(s) or reduction(s) over the hidden width see fewer channels: "
                 "their statistics change, the step is lossy"] if norms else []
        scores = [channel_norms(st) for st in streams]
        if cfg.importance == "activation":
            from .calibration import SYNTHETIC_WARNING

            batches = list(ctx.calibration) or [dict(ctx.feeds)]
            if ctx.calibration_is_synthetic:
                notes.append(SYNTHETIC_WARNING)
            scores = [s * a for s, a in zip(scores, activation(proto, irm, streams, batches))]
        details, pruned = [], 0
        for st, score in zip(streams, scores):
            k = st.width - int(round(cfg.ratio * st.width))
            k = max(min(cfg.min_width, st.width), k)
            k = min(st.width, -(-k // cfg.round_to) * cfg.round_to)
            keep = np.sort(np.argsort(-score, kind="stable")[:k])
            details.append({"width": st.width, "kept": k, "constants": len({id(p.value)
                                                                          for p in st.params}),
                            "norms": len(st.norms), "reshapes": len(st.reshapes),
                            "padded_outputs": [v.name for v in st.outputs],
                            "removed": np.setdiff1d(np.arange(st.width), keep).tolist()})
            if k < st.width:
                apply(irm.graph, st, keep)
                pruned += 1
        if not pruned:
            return self.skip(model, f"ratio {cfg.ratio} removes no channel of the hidden "
                             f"width ({', '.join(str(st.width) for st in streams)})")
        out = save_ir(irm)
        before, after = param_count(proto), param_count(out)
        return self.done(ir.from_proto(out), notes=notes, details={
            "streams": details, "importance": cfg.importance, "not_prunable": reasons[:10],
            "params_before": before, "params_after": after,
            "compression": round(before / max(after, 1), 3)})


def prunable_streams(model) -> list[int]:
    """Widths of the hidden streams the step prunes with its defaults (not graph outputs): whether
    a search should try it."""
    from ._channel_graph import load_ir

    return [st.width for st in StreamGraph(load_ir(model)).streams()[0] if not st.outputs]
