"""Per-layer moves chosen by measured latency: the NetAdapt loop (Yang et al., ECCV 2018).

Each iteration asks for a fixed share less latency than the current model. For each of the
layers that cost most on the target (by the per-layer lookup table), it finds the smallest extra
cut of *that layer alone* (channels removed from its group, or a lower SVD rank) whose table
latency meets the goal; every such proposal is built by the recipe runner and fidelity-checked;
the proposal with the best fidelity is kept, and the next iteration starts from it. It stops when
no layer can meet the goal at the fidelity floor, when the budget is met, or at the time limit.
A state is a recipe (`prune-channels:ratio=0,layers=W:0.25|...; lowrank:ratio=0,layers=...`),
so every proposal is an ordinary candidate: cached, resumable and measured like the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

PRUNE_MOVES = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)  # share of a group's channels removed
RANK_MOVES = (0.5, 0.375, 0.25, 0.125, 0.0625)  # rank as a share of min(K, N)


@dataclass(frozen=True)
class NetAdaptConfig:
    step: float = 0.08  # latency reduction asked of each iteration (share of the current table;
    # at most half of the costliest layer's table time)
    max_iters: int = 10
    top_layers: int = 6  # layers tried per iteration: those with the most table time


@dataclass(frozen=True)
class Layer:
    kind: str  # "prune" (a channel group) | "ffn" (a feed-forward block) | "heads" (an
    # attention block) | "lowrank" (a MatMul/Gemm weight)
    name: str  # the name its recipe step's `layers` field takes
    moves: tuple[float, ...]  # its values, gentlest first
    weights: frozenset[str]  # initializers whose units' table time is this layer's cost


def layers_of(model, kinds: set[str]) -> list[Layer]:
    """The per-layer moves that apply to an onnx model (`kinds`: "prune", "ffn", "heads",
    "lowrank"): each move
    changes the layer (moves that would keep the same channel count or rank are dropped), and
    only names that survive the recipe syntax (no ',', ';', '|', no edge spaces) are used."""
    out: list[Layer] = []
    if "prune" in kinds:
        from ..rewrite.prune_channels import Config as PruneConfig, prunable_layers

        for name, channels, producers, readers in prunable_layers(model):
            moves = _distinct(PRUNE_MOVES, lambda m: max(PruneConfig.min_channels,
                                                         channels - round(m * channels)),
                              unchanged=channels)
            if moves and _recipe_safe(name):
                out.append(Layer("prune", name, moves, frozenset(producers + readers)))
    if "ffn" in kinds:
        from ..rewrite.prune_ffn import Config as FfnConfig, prunable_layers as ffn_blocks

        for name, neurons, w1, w2 in ffn_blocks(model):
            moves = _distinct(PRUNE_MOVES, lambda m: _ffn_kept(neurons, m, FfnConfig()),
                              unchanged=neurons)
            if moves and _recipe_safe(name):
                out.append(Layer("ffn", name, moves, frozenset(w1 + w2)))
    if "heads" in kinds:
        from ..rewrite.prune_heads import Config as HeadsConfig, prunable_layers as attention

        for name, heads, qkv, w_out in attention(model):
            moves = _distinct(PRUNE_MOVES, lambda m: max(HeadsConfig.min_heads,
                                                         heads - int(round(m * heads))),
                              unchanged=heads)
            if moves and _recipe_safe(name):
                out.append(Layer("heads", name, moves, frozenset(qkv + w_out)))
    if "lowrank" in kinds:
        from ..rewrite.lowrank import Config, linear_layers

        for name, k, n in dict.fromkeys(linear_layers(model)):  # a tied weight: one layer
            if min(k, n) < Config.min_size or not _recipe_safe(name):
                continue
            # only ranks that cut FLOPs: r * (K + N) < K * N
            moves = tuple(m for m in _distinct(RANK_MOVES, lambda m: round(m * min(k, n)))
                          if 1 <= round(m * min(k, n)) and round(m * min(k, n)) * (k + n) < k * n)
            if moves:
                out.append(Layer("lowrank", name, moves,
                                 frozenset({name, f"{name}_svd_u", f"{name}_svd_v"})))
    return out


def _ffn_kept(neurons: int, ratio: float, cfg) -> int:
    """Neurons prune-ffn keeps of a block at `ratio` (its rounding, so equal moves collapse)."""
    k = max(min(cfg.min_neurons, neurons), neurons - int(round(ratio * neurons)))
    return min(neurons, -(-k // cfg.round_to) * cfg.round_to)


def _distinct(moves: tuple[float, ...], result, unchanged=None) -> tuple[float, ...]:
    """The first move of each distinct `result(move)`, leaving out those giving `unchanged`."""
    seen, out = {unchanged}, []
    for m in moves:
        if result(m) not in seen:
            seen.add(result(m))
            out.append(m)
    return tuple(out)


def _recipe_safe(name: str) -> bool:
    return name == name.strip() and not any(c in name for c in ",;|")


def state_steps(state: Mapping[tuple[str, str], float]
                ) -> tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]:
    """Recipe steps of a state {(kind, layer name): value}: pruning first, then low rank."""
    steps = []
    for kind, step in (("prune", "prune-channels"), ("ffn", "prune-ffn"), ("heads", "prune-heads"),
                       ("lowrank", "lowrank")):
        items = tuple(f"{name}:{v:g}" for (k, name), v in sorted(state.items()) if k == kind)
        if items:
            steps.append((step, (("layers", items), ("ratio", 0.0))))
    return tuple(steps)


def layer_costs(model, estimate, layers: list[Layer]) -> dict[str, float]:
    """Table ms of the units that read each layer's weights (an estimate of `model`)."""
    from .layer_table import partition

    g = model.graph
    inits = {t.name for t in g.initializer}
    cost = {layer.name: 0.0 for layer in layers}
    for unit, timed in zip(partition(model), estimate.units):
        reads = {i for idx in unit.nodes for i in g.node[idx].input if i in inits}
        for layer in layers:
            if reads & layer.weights:
                cost[layer.name] += timed.ms
    return cost


@dataclass
class Iteration:
    goal_ms: float
    tried: int
    chosen: str | None  # "prune conv1.weight -> 0.25"
    table_ms: float | None
    fidelity: float | None
    stop: str | None = None  # why the loop ended here: "no layer meets the goal", "time", ...


def netadapt(base_table_ms: float, layers: list[Layer], cfg: NetAdaptConfig,
             propose: Callable[[dict], Any], costs: Callable[[Any], dict[str, float]],
             done: Callable[[Any], bool], time_left: Callable[[], bool]
             ) -> tuple[list[Any], list[Iteration]]:
    """The loop. `propose(state)` builds and checks a candidate and returns its row (with
    `.status` "ok" / "duplicate" (of a model built before) / anything else for a failed or
    unfaithful one, `.table_ms`, `.fidelity`) or None; `costs(row)` gives per-layer table ms of a
    built row (None row: the original model); `done(row)` says the goal (budget) is met.
    Returns the accepted rows, in order, and a log of the iterations."""
    state: dict[tuple[str, str], float] = {}
    current, current_ms = None, base_table_ms
    accepted, log = [], []
    for _ in range(cfg.max_iters):
        if not time_left() or current_ms is None:
            break
        cost = costs(current)
        movable = [la for la in layers if _next_moves(la, state)]
        # the reduction asked: `step` of the current latency, but at most half of what the
        # costliest layer's units take (with many small layers, e.g. a transformer's MatMuls,
        # no single layer could save 8%); a layer whose units cost less cannot meet it alone
        top = max((cost.get(la.name, 0.0) for la in movable), default=0.0)
        goal = current_ms - min(cfg.step * current_ms, 0.5 * top)
        ranked = sorted((la for la in movable if cost.get(la.name, 0.0) >= current_ms - goal),
                        key=lambda la: -cost.get(la.name, 0.0))[:cfg.top_layers]
        proposals, tried = [], 0
        for layer in ranked:
            for value in _next_moves(layer, state):
                if not time_left():
                    break
                row = propose({**state, (layer.kind, layer.name): value})
                tried += 1
                if row is None or row.status not in ("ok", "duplicate") or row.table_ms is None:
                    break  # a deeper cut of this layer only loses more fidelity
                if row.table_ms <= goal:
                    proposals.append((row, layer, value))
                    break
        if not proposals:
            log.append(Iteration(goal, tried, None, None, None,
                                 "time limit" if not time_left() else
                                 "no layer meets the goal above the fidelity floor"))
            break
        row, layer, value = max(proposals, key=lambda p: (p[0].fidelity, -p[0].table_ms))
        state[(layer.kind, layer.name)] = value
        current, current_ms = row, row.table_ms
        accepted.append(row)
        log.append(Iteration(goal, tried, f"{layer.kind} {layer.name} -> {value:g}",
                             row.table_ms, row.fidelity))
        if done(row):
            log[-1].stop = "budget met"
            break
    else:
        if log:
            log[-1].stop = f"{cfg.max_iters} iterations"
    if log and log[-1].stop is None:
        log[-1].stop = "time limit"
    return accepted, log


def _next_moves(layer: Layer, state: Mapping[tuple[str, str], float]) -> tuple[float, ...]:
    """The layer's moves beyond its current value (pruning grows, rank shrinks)."""
    now = state.get((layer.kind, layer.name))
    if now is None:
        return layer.moves
    return tuple(m for m in layer.moves if (m > now if layer.kind in ("prune", "ffn", "heads")
                                            else m < now))
