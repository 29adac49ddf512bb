"""Structured pruning of transformer feed-forward neurons, removing them from the ONNX graph.

A feed-forward block is fc1 (MatMul [+ bias Add] or Gemm) -> an element-wise activation region
-> fc2 (MatMul or Gemm). Every value between fc1 and fc2 carries one entry per neuron on its last
axis and every op there is element-wise with scalar constants (Relu, Gelu, the exporters'
x*0.5*(1+erf(x/sqrt2)) and tanh-approximation subgraphs, SiLU...), so neuron j only ever meets
neuron j: dropping fc1's output columns, their bias entries and fc2's input rows together is
exact on the neurons kept. The residual stream (fc2's output width) is untouched.

Gated blocks (SwiGLU in LLaMA/Qwen/Mistral, GeGLU): two or more fc1s read the same input with the
same neuron count and their activations meet element-wise (silu(x W_gate) * (x W_up)) before one
fc2. Neuron j of every fc1 only meets neuron j of the others, so the fc1s are sliced together.

Importance is the weight magnitude |fc1 column|_2 * |fc2 row|_2, or, with `importance=activation`,
the mean |activation| over the calibration batches times |fc2 row|_2 (what the neuron actually
adds to the output). Ratios are per block, like `prune-channels`, with per-block overrides.

Weights shared across layers (ALBERT): the blocks applying the same weights are one group (see
_ffn_blocks.py), pruned once with one kept set; activation importance is averaged over every
application, and the fc1 bias, when exporters merged it with an equal constant elsewhere, is
given its own copy first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from ..errors import InputError
from . import StepPass
from ._channel_graph import set_shape_entry
from ._ffn_blocks import Block, find_blocks


@dataclass(frozen=True)
class Config:
    ratio: float = 0.5  # fraction of each block's neurons removed
    importance: str = "magnitude"  # "magnitude" | "activation" (needs calibration batches)
    round_to: int = 8  # kept neuron counts are multiples of this (SIMD-friendly GEMM widths)
    min_neurons: int = 8
    # per-block ratios "FC1_WEIGHT:RATIO" overriding `ratio`; with ratio=0 only the listed blocks
    # are pruned (NetAdapt's moves)
    layers: tuple[str, ...] = ()


def _rows(w, axis: int, neurons: int) -> np.ndarray:
    return np.moveaxis(w.const_value.numpy(), axis, 0).reshape(neurons, -1)


def magnitude(b: Block) -> np.ndarray:
    """|fc1 column|_2 (times each gate's) * |fc2 row|_2 per neuron."""
    score = np.linalg.norm(_rows(b.w2, b.w2_axis, b.neurons), axis=1)
    for w, axis in [(b.w1, b.w1_axis), *((g[1], g[2]) for g in b.gates)]:
        score = score * np.linalg.norm(_rows(w, axis, b.neurons), axis=1)
    return score


def activation(model, blocks: list[Block], batches) -> dict[str, np.ndarray]:
    """Mean |fc2 input| per neuron over `batches` (ORT), times |fc2 row|_2, per block."""
    import onnx

    from ..fidelity import run_ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    names = [a.exit.name for b in blocks for a in (b, *b.also)]
    for n in names:
        if n not in known:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(
                n, onnx.TensorProto.FLOAT, None))
    sums = {n: 0.0 for n in names}
    for batch in batches:
        outs = dict(zip([o.name for o in probe.graph.output], run_ort(probe, batch)))
        for n in names:
            a = np.abs(outs[n].astype(np.float64))
            sums[n] = sums[n] + a.reshape(-1, a.shape[-1]).mean(axis=0)
    out = {}
    for b in blocks:
        w2 = _rows(b.w2, b.w2_axis, b.neurons)
        apps = (b, *b.also)
        mean = sum(sums[a.exit.name] for a in apps) / (max(len(batches), 1) * len(apps))
        out[b.name] = mean * np.linalg.norm(w2, axis=1)
    return out


def aliases(b: Block) -> list[str]:
    """Names `layers` may use for a block: fc1's weight (exporters may leave it a generated name
    like 'val_118'), fc1's bias and node names."""
    return [n for n in (b.w1.name, b.b1.name if b.b1 is not None else None, b.fc1.name) if n]


def choose_keep(blocks: list[Block], scores: dict[str, np.ndarray], cfg: Config
                ) -> dict[str, np.ndarray]:
    from . import per_layer, unknown_layers

    wanted = per_layer(cfg.layers, "prune-ffn", 0.0, 1.0)
    alias = {n: b.name for b in blocks for n in aliases(b)}
    unknown_layers("prune-ffn", wanted, alias)
    ratios = {alias[n]: r for n, r in wanted.items()}
    keep = {}
    for b in blocks:
        ratio = ratios.get(b.name, cfg.ratio)
        k = b.neurons - int(round(ratio * b.neurons))
        k = max(min(cfg.min_neurons, b.neurons), k)
        k = min(b.neurons, -(-k // cfg.round_to) * cfg.round_to)
        if k < b.neurons:
            keep[b.name] = np.sort(np.argsort(-scores[b.name], kind="stable")[:k])
    return keep


def apply(graph, blocks: list[Block], keep: dict[str, np.ndarray]) -> None:
    """Slice fc1's weight (and bias) and fc2's weight for the kept neurons, in place; Reshapes
    between them get their own shape constant ending in the kept count (exporters share one
    shape constant between layers, which may keep different counts)."""

    def take(v, axis, idx):
        arr = np.take(v.const_value.numpy(), idx, axis=axis)
        v.const_value = ir.tensor(np.ascontiguousarray(arr), name=v.name)
        v.shape = ir.Shape(arr.shape)

    for b in blocks:
        if b.name not in keep:
            continue
        idx = keep[b.name]
        apps = (b, *b.also)
        for k, (_, w, axis, bias) in enumerate([(b.fc1, b.w1, b.w1_axis, b.b1), *b.gates]):
            take(w, axis, idx)
            if bias is not None:
                bias = _own_bias(graph, bias, apps, k)
                take(bias, bias.const_value.numpy().ndim - 1, idx)
        take(b.w2, b.w2_axis, idx)
        for a in apps:
            for node in a.reshapes:
                set_shape_entry(graph, node, -1, len(idx))
            for v in a.region + [o for n in (a.fc1, *(g[0] for g in a.gates))
                                 for o in n.outputs]:
                v.shape = None


def _own_bias(graph, bias, apps, k: int):
    """The fc1 (k = 0) or k-th gate bias of a group, as a constant only its blocks use."""
    from ._shared_weights import bias_user, own_copy

    nodes = [(a.fc1, *(g[0] for g in a.gates))[k] for a in apps]
    return own_copy(graph, bias, {id(bias_user(n, bias)) for n in nodes}, "ffn")


class PruneFfnPass(StepPass, ir.passes.FunctionalPass):
    """The least important hidden neurons of each feed-forward block removed. Functional, like
    prune-channels: blocks are found on a copy shape-inferred by onnx (`load_ir` / `save_ir`, at
    this boundary), and activation importance runs the parent on ORT."""

    fidelity_kind = "lossy"

    def call(self, model):
        from ._channel_graph import load_ir, param_count, save_ir

        cfg, ctx = self.cfg, self.ctx
        if not 0.0 <= cfg.ratio < 1.0:
            raise InputError(f"prune-ffn: ratio must be in [0, 1), got {cfg.ratio}")
        if cfg.importance not in ("magnitude", "activation"):
            raise InputError(f"prune-ffn: importance must be 'magnitude' or 'activation', "
                             f"got {cfg.importance!r}")
        if cfg.round_to < 1 or cfg.min_neurons < 1:
            raise InputError("prune-ffn: round_to and min_neurons must be >= 1")
        proto = ir.to_proto(model)
        irm = load_ir(proto)
        blocks, reasons = find_blocks(irm)
        if not blocks:
            return self.skip(model, "no prunable feed-forward block (MatMul/Gemm -> "
                             "element-wise activation -> MatMul/Gemm)"
                             + (f" ({'; '.join(reasons[:3])})" if reasons else ""))
        notes: list[str] = []
        if cfg.importance == "activation":
            from .calibration import SYNTHETIC_WARNING

            batches = list(ctx.calibration) or [dict(ctx.feeds)]
            if ctx.calibration_is_synthetic:
                notes.append(SYNTHETIC_WARNING)
            scores = activation(proto, blocks, batches)
        else:
            scores = {b.name: magnitude(b) for b in blocks}
        keep = choose_keep(blocks, scores, cfg)
        if not keep:
            return self.skip(model, f"ratio {cfg.ratio}"
                             + (" and layers=..." if cfg.layers else "")
                             + " remove no neuron from any block")
        details_blocks = [{"fc1": b.fc1.name, "fc2": b.fc2.name, "weight": b.name,
                           "gates": [g[0].name for g in b.gates], "neurons": b.neurons,
                           "kept": int(len(keep[b.name])) if b.name in keep else b.neurons,
                           "applications": 1 + len(b.also)}
                          for b in blocks]
        apply(irm.graph, blocks, keep)
        out = save_ir(irm)
        before, after = param_count(proto), param_count(out)
        return self.done(ir.from_proto(out), notes=notes, details={
            "blocks": details_blocks, "importance": cfg.importance,
            "not_prunable": reasons[:10], "params_before": before, "params_after": after,
            "compression": round(before / max(after, 1), 3)})


def prunable_layers(model) -> list[tuple[str, int, list[str], list[str]]]:
    """(name for `layers`, neurons, [fc1 weight], [fc2 weight]) per block: a search's moves."""
    from ._channel_graph import load_ir

    blocks, _ = find_blocks(load_ir(model))
    return [(b.name, b.neurons, [b.w1.name, *(g[1].name for g in b.gates)], [b.w2.name])
            for b in blocks]
