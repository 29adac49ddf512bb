"""Close the loop: the smallest set of layers kept in float that brings a quantized candidate to a
goal (output cosine or top-1 agreement with the reference), built with the recipe's own step
(`exclude=`), verified, and timed against the fully quantized model.

Layers are ranked by what the error each introduces by itself does to the model's outputs (one
debug run: each layer's own output injected into the float reference), not by quantizing each
alone (one quantization per layer, as the steps' `target_cosine` does); the search over how many
to keep is the steps' own (rewrite/_keep_float.py)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import InputError
from ..rewrite._keep_float import quantized_nodes
from .match import QDQ_OPS
from .result import DebugResult

METRICS = ("cosine", "top1")


@dataclass(frozen=True)
class Goal:
    metric: str  # cosine | top1
    value: float
    # top1@M: agreement counted on the samples the reference decides by >= M (its top-2 gap):
    # near-ties flip under any error (MobileNetV2's weights rounded to fp16 flip one of 176 views)
    margin: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "Goal":
        name, sep, raw = text.partition("=")
        name, at, raw_margin = name.partition("@")
        try:
            value = float(raw)
            margin = float(raw_margin) if at else 0.0
        except ValueError:
            value = margin = float("nan")
        if (not sep or name not in METRICS or not 0.0 < value <= 1.0
                or (at and (name != "top1" or not 0.0 <= margin < float("inf")))):
            raise InputError(f"bad --fix {text!r}: expected cosine=X, top1=X or top1@M=X with X "
                             "in (0, 1] and a margin M >= 0")
        return cls(name, value, margin)

    def __str__(self) -> str:
        where = f" (reference margin >= {self.margin:g})" if self.margin else ""
        return f"{self.metric}{where} >= {self.value:g}"


@dataclass(frozen=True)
class FixResult:
    goal: Goal
    recipe: str  # the recipe as rebuilt, with the kept layers in its `exclude`
    kept: tuple[str, ...]  # candidate node names kept in float, worst first
    quantized_layers: int  # layers the candidate quantizes (the denominator of the share kept)
    score_full: float  # the fully quantized rebuild's score
    score: float  # the fixed model's score (verified on the data)
    met: bool
    full_path: Path
    fixed_path: Path
    trials: tuple[tuple[int, float], ...]
    timing: Mapping[str, Any] | None = None  # speedups, filled by time_fix

    @property
    def kept_share(self) -> float:
        return len(self.kept) / self.quantized_layers if self.quantized_layers else 0.0

    def to_dict(self) -> dict[str, Any]:
        fin = lambda x: x if isinstance(x, float) and math.isfinite(x) else None  # noqa: E731
        return {"goal": {"metric": self.goal.metric, "value": self.goal.value,
                         "margin": self.goal.margin},
                "recipe": self.recipe, "kept_in_float": list(self.kept),
                "quantized_layers": self.quantized_layers, "kept_share": self.kept_share,
                "score_full_int8": fin(self.score_full), "score": fin(self.score),
                "met": self.met, "trials": [[k, fin(s)] for k, s in self.trials],
                "timing": None if self.timing is None else dict(self.timing)}


def weighted_nodes(model) -> set[str]:
    """Nodes reading a dequantized constant (int8 weights): excluding one keeps it in float."""
    prod = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    return {n.name for n in model.graph.node if n.op_type not in QDQ_OPS and any(
        prod.get(i) is not None and prod[i].op_type == "DequantizeLinear"
        and prod[i].input[0] in inits for i in n.input)}


def float_groups(cand, result: DebugResult, quantized: set[str],
                 skip: Sequence[str] = ()) -> dict[str, tuple[str, ...]]:
    """tensor -> the nodes to exclude so that its layer and its output both stay float, worst
    output impact first. A QDQ quantizer quantizes a tensor when its producer or any consumer
    is quantized, so the layer's node is not enough: its quantized consumers go with it."""
    consumers: dict[str, list[str]] = {}
    for n in cand.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.name)
    out: dict[str, tuple[str, ...]] = {}
    for row in result.ranked("output"):
        p = row.pair
        nodes = [p.cand_node] if p.cand_node in quantized else []
        nodes += [c for c in consumers.get(p.cand, ()) if c in quantized and c not in nodes]
        nodes = [n for n in nodes if n not in skip]
        if nodes and p.ref not in out:
            out[p.ref] = tuple(nodes)
    return out


def score(goal: Goal, reference: Path, model: Path,
          batches: Sequence[Mapping[str, np.ndarray]]) -> float:
    """cosine: the worst output cosine over batches (as the steps' target_cosine); top1: argmax
    agreement of the first [N, C] output over every sample (with a margin: over the samples whose
    reference top-2 gap is at least that), on ORT."""
    from ..fidelity import compare, run_ort

    if goal.metric == "cosine":
        return min(compare(run_ort(reference, b), run_ort(model, b)).cosine for b in batches)
    agree = total = 0
    for b in batches:
        r, g = run_ort(reference, b), run_ort(model, b)
        k = next((i for i, a in enumerate(r) if a.ndim == 2 and a.shape[1] > 1), None)
        if k is None:
            raise InputError("--fix top1=... needs an output shaped [N, classes]; "
                             "use --fix cosine=... for this model")
        top2 = np.sort(r[k], axis=1)[:, -2:]
        decided = top2[:, 1] - top2[:, 0] >= goal.margin
        agree += int(np.sum((np.argmax(r[k], 1) == np.argmax(g[k], 1)) & decided))
        total += int(decided.sum())
    if total == 0:
        raise InputError(f"--fix {goal}: no sample has a reference top-2 margin >= {goal.margin:g}")
    return agree / total


def exclude_step(steps) -> int:
    idx = [i for i, s in enumerate(steps)
           if "exclude" in {f.name for f in dataclasses.fields(s.config)}]
    if not idx:
        raise InputError("--fix needs a recipe with a step that can keep layers in float "
                         "(exclude=), e.g. quantize-static")
    return idx[-1]


def fix(reference: Path, result: DebugResult, recipe: str, goal: Goal,
        batches: Sequence[Mapping[str, np.ndarray]], calib: Sequence[Mapping[str, np.ndarray]],
        calib_is_synthetic: bool, workdir: Path, max_float: int = 16,
        target: str = "ort-cpu") -> FixResult:
    """Rebuild `recipe` on `reference` keeping the worst layers of `result` in float, as few as
    reach `goal` on `batches`."""
    from ..core import ModelRef
    from ..onnxio import load_onnx
    from ..rewrite.recipe import parse_recipe, run_recipe
    from ..rewrite import StepContext
    from ..rewrite._keep_float import smallest_prefix
    from ..fidelity import Tolerance

    steps = parse_recipe(recipe)
    at = exclude_step(steps)
    base_exclude = tuple(steps[at].config.exclude)
    cand = load_onnx(result.candidate)
    cand_quantized = quantized_nodes(cand)
    weighted = weighted_nodes(cand)
    groups = float_groups(cand, result, cand_quantized, base_exclude)
    if not groups:
        raise InputError("the candidate has no quantized layer to keep in float")
    ranked = list(groups)

    def union(keys: Sequence[str]) -> list[str]:
        out: list[str] = []
        for key in keys:
            out += [n for n in groups[key] if n not in out]
        return out

    ctx_kw = dict(feeds=dict(batches[0]), calibration=tuple(calib),
                  calibration_is_synthetic=calib_is_synthetic, target=target)
    specs: dict[int, str] = {}

    def build(keys: list[str]) -> Path:
        names = union(keys)
        cfg = dataclasses.replace(steps[at].config, exclude=base_exclude + tuple(names))
        new = list(steps)
        new[at] = dataclasses.replace(steps[at], config=cfg)
        out = Path(workdir) / f"keep{len(keys)}"
        # the goal is the judge here: int8 steps are measured, not failed, by the generic floor
        res = run_recipe(ModelRef.from_path(reference), new, StepContext(workdir=out, **ctx_kw),
                         tolerances={"int8": Tolerance()})
        if not res.applied:
            raise InputError(f"recipe {recipe!r} applied no step to {reference}")
        path = Path(res.final.path)
        missing = sorted((set(names) & weighted)
                         - (_node_names(path) - quantized_nodes(load_onnx(path))))
        if missing:
            raise InputError(f"layer {missing[0]} of the candidate is not a float node of the "
                             f"rebuilt model: was the candidate made by {recipe!r} from "
                             f"{reference}?")
        specs[len(keys)] = "; ".join(s.spec() for s in new)
        return path

    full = build([])
    full_score = score(goal, reference, full, batches)
    if full_score >= goal.value:
        fixed, k, s, trials = full, 0, full_score, []
    else:
        fixed, k, s, trials = smallest_prefix(ranked, build,
                                              lambda p: score(goal, reference, p, batches),
                                              goal.value, max_float)
        if fixed is None:
            fixed, k, s = full, 0, full_score
    return FixResult(goal, specs[k], tuple(union(ranked[:k])), len(cand_quantized), full_score, s,
                     s >= goal.value, full, fixed, ((0, full_score), *trials))


def _node_names(path: Path) -> set[str]:
    from ..onnxio import load_onnx

    return {n.name for n in load_onnx(path, load_external=False).graph.node}


def time_fix(fr: FixResult, reference: Path, target: str, feeds: Mapping[str, np.ndarray],
             plan) -> FixResult:
    """Reference, full int8 and fixed model timed interleaved on `target`: speedups vs the
    reference and the share of the full int8 speedup the fixed model keeps."""
    from ..core import ModelRef
    from ..measure.timing import compare
    from .run import get_target

    t = get_target(target)
    arts = [t.compile(ModelRef.from_path(p)) for p in (reference, fr.full_path, fr.fixed_path)]
    try:
        cmp = compare(arts, [feeds] * 3, plan, names=("reference", "full-int8", "fixed"))
    finally:
        for a in arts:
            a.close()
    full, full_lo, full_hi = cmp.speedup(1, 0)
    fixed, fixed_lo, fixed_hi = cmp.speedup(2, 0)
    vs_full, lo, hi = cmp.speedup(2, 1)
    vals = [full, fixed, vs_full]
    if not all(math.isfinite(v) and v > 0 for v in vals):
        raise InputError("timing the fixed model gave no usable figure (too few clean rounds); "
                         "raise --max-time")
    timing = {"target": t.name,
              "median_ms": {n: r.median_ms for n, r in zip(cmp.names, cmp.reports)},
              "speedup_full_int8": full, "speedup_full_int8_ci95": [full_lo, full_hi],
              "speedup_fixed": fixed, "speedup_fixed_ci95": [fixed_lo, fixed_hi],
              "fixed_vs_full_int8": vs_full, "fixed_vs_full_int8_ci95": [lo, hi],
              "share_of_int8_speedup": (fixed - 1.0) / (full - 1.0) if full > 1.0 else None}
    return dataclasses.replace(fr, timing=timing)
