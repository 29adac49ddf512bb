"""The one search for "how many of the most sensitive layers must stay in float": shared by the
quantization steps' `target_cosine` and `deploykit debug --fix`, which differ only in how they
rank layers, build a model and score it."""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

from ..fidelity import QDQ_OPS

P = TypeVar("P")


def smallest_prefix(ranked: Sequence[str], build: Callable[[list[str]], P],
                    score: Callable[[P], float], goal: float, limit: int
                    ) -> tuple[P | None, int, float, list[tuple[int, float]]]:
    """The smallest k <= limit such that score(build(ranked[:k])) >= goal, for k >= 1: k doubles
    (1, 2, 4, ...) until the goal is met, then bisects between the last miss and the first hit.
    Scores are not assumed monotone beyond that: only a k that was built and scored is returned.
    Returns (built model of the answer, k, its score, [(k, score) tried]); when no k meets the
    goal, the largest one tried (model, k, score)."""
    trials: list[tuple[int, float]] = []
    built: dict[int, tuple[P, float]] = {}

    def attempt(k: int) -> float:
        model = build(list(ranked[:k]))
        s = score(model)
        built[k] = (model, s)
        trials.append((k, s))
        return s

    limit = min(limit, len(ranked))
    if limit < 1:
        return None, 0, float("nan"), trials
    lo, hi = 0, None  # lo: a k known (or assumed, k=0) to miss; hi: the smallest hit found
    k = 0
    while k < limit:
        k = min(max(1, 2 * k), limit)
        if attempt(k) >= goal:
            hi = k
            break
        lo = k
    if hi is None:
        model, s = built[k]
        return model, k, s, trials
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if attempt(mid) >= goal:
            hi = mid
        else:
            lo = mid
    model, s = built[hi]
    return model, hi, s, trials


def quantized_nodes(model) -> set[str]:
    """Names of the nodes a quantizer turned to int8: every input arrives through
    DequantizeLinear, and it has a dequantized constant (weights) or its output is quantized.
    (An excluded node reads float weights, or its output stays float.) A float constant beside
    dequantized weights is a bias NNCF leaves float: it does not make the node float."""
    prod = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    cons: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)

    def dq(t: str):
        p = prod.get(t)
        return p if p is not None and p.op_type == "DequantizeLinear" else None

    out = set()
    for n in model.graph.node:
        ins = [i for i in n.input if i]
        if n.op_type in QDQ_OPS or not ins:
            continue
        const = any(dq(i) is not None and dq(i).input[0] in inits for i in ins)
        if not all(dq(i) or (const and i in inits) for i in ins):
            continue
        if const or any(c.op_type == "QuantizeLinear" for o in n.output for c in cons.get(o, ())):
            out.add(n.name)
    return out
