"""The realized report: does a compression show up as size and speed on the target, or not?

For each applied recipe step (against its parent) and for the whole recipe (against the
source): parameters and bytes (compression rate), FLOPs, measured speedup from one interleaved
comparison of every model in the lineage (ratio of medians with a bootstrap CI), fidelity, and a
verdict: realized (CI above 1.05x), not realized (CI reaches below 1.05x) or slower (CI below 1x),
with the reason when the graph shows it (ConvInteger, S8S8 activations, unstructured zeros,
fp16 on a CPU, FLOPs not reduced).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..core import ModelRef, TimingPlan
from ..backends.base import Target
from ..rewrite.recipe import RecipeResult
from ..fidelity import Fidelity

REALIZED_MIN = 1.05  # a speedup whose CI reaches below this is not claimed
QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class ModelStats:
    params: int  # weight elements (deploykit.facts: scalars and index tensors not counted)
    bytes: int  # file size on disk, external data included
    flops: float | None  # deploykit.facts: 2 x MACs + elementwise work, at the fed shapes
    zero_fraction: float  # share of exactly-zero elements in float weight matrices
    op_counts: Mapping[str, int]


def _dim_values(model, feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Symbolic input dims pinned to the fed shapes (e.g. batch=8), for FLOP counting."""
    dims: dict[str, int] = {}
    for inp in model.graph.input:
        if inp.name in feeds:
            for d, v in zip(inp.type.tensor_type.shape.dim, feeds[inp.name].shape):
                if d.dim_param:
                    dims[d.dim_param] = int(v)
    return dims


def model_stats(path: Path, feeds: Mapping[str, np.ndarray]) -> ModelStats:
    """Sizes and FLOPs from deploykit.facts (the graph as compiled), at the fed shapes."""
    from onnx import numpy_helper

    from ..measure.facts import model_facts
    from ..onnxio import load_onnx

    model = load_onnx(path)
    facts = model_facts(model, dim_values=_dim_values(model, feeds), path=path)
    qparams = {i for n in model.graph.node if n.op_type in QDQ for i in n.input[1:]}
    zeros = total = 0
    for t in model.graph.initializer:
        if t.data_type == 1 and t.name not in qparams and len(t.dims) > 1:  # float weights
            a = numpy_helper.to_array(t)
            zeros += int(np.count_nonzero(a == 0))
            total += a.size
    return ModelStats(int(facts["parameters"]), int(facts["file_bytes"]),
                      float(facts["flops"]) or None, zeros / total if total else 0.0,
                      dict(facts["op_types"]))


def verdict(lo: float, hi: float) -> str:
    if lo >= REALIZED_MIN:
        return "realized"
    if hi < 1.0:
        return "slower"
    return "not realized"


def _int8_activations(path: Path) -> bool:
    """True when QuantizeLinear nodes quantize activations to int8 (S8S8)."""
    import onnx

    m = onnx.load(str(path))
    inits = {t.name: t for t in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[0] not in inits:
            zp = inits.get(n.input[2])
            if zp is not None and zp.data_type == onnx.TensorProto.INT8:
                return True
    return False


def explain(step: str, before: ModelStats, after: ModelStats, child: Path, target: str
            ) -> str | None:
    """Why a step may not be faster, when the graph says so (None when it cannot tell)."""
    added = {op: after.op_counts.get(op, 0) - before.op_counts.get(op, 0)
             for op in after.op_counts}
    if added.get("ConvInteger", 0) > 0:
        return ("dynamic quantization of Conv gives ConvInteger, which is unoptimised on ORT CPU; "
                "use quantize-static (QDQ)")
    if any(added.get(op, 0) > 0 for op in ("DequantizeLinear", "MatMulInteger", "QLinearConv")):
        if "cpu" in target and _int8_activations(child):
            return ("int8 activations (S8S8) run slowly on x86 ORT; use activation_type=uint8 "
                    "(U8S8)")
        return None  # same FLOPs by design: int8 kernels, not fewer operations, make it faster
    if step in ("fold-bn", "cleanup") and target.startswith("ort"):
        return ("ORT already folds BatchNormalization and constants when it creates the session; "
                "this step helps runtimes and later steps that do not")
    if step == "fp16" and "cuda" not in target:
        return "no fp16 arithmetic on this CPU: ORT runs fp32 kernels behind Cast nodes"
    if (after.zero_fraction > before.zero_fraction + 0.05 and after.flops and before.flops
            and after.flops >= before.flops * 0.95):
        return (f"unstructured sparsity ({after.zero_fraction:.0%} zero weights) on dense kernels: "
                "zeros cost the same; use prune-channels (structured) or remove-zero-channels")
    if (before.flops and after.flops and after.flops >= before.flops / REALIZED_MIN
            and after.bytes >= before.bytes * 0.8):
        return (f"FLOPs and bytes not reduced ({before.flops / after.flops:.2f}x FLOPs): nothing "
                "for the target to skip")
    return None


@dataclass(frozen=True)
class RealizedRow:
    name: str  # "1 fold-bn", ..., or "recipe" for source -> final
    parent: str
    child: str
    before: ModelStats
    after: ModelStats | None
    fidelity: Fidelity | None
    speedup: tuple[float, float, float] | None  # (ratio, lo, hi); None when not measured
    verdict: str
    reason: str | None

    @property
    def compression(self) -> float | None:
        return self.before.params / self.after.params if self.after and self.after.params else None

    @property
    def size_ratio(self) -> float | None:
        return self.before.bytes / self.after.bytes if self.after else None

    @property
    def flops_ratio(self) -> float | None:
        if self.after and self.before.flops and self.after.flops:
            return self.before.flops / self.after.flops
        return None

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"name": self.name, "parent_sha256": self.parent, "sha256": self.child,
                "before": asdict(self.before),
                "after": None if self.after is None else asdict(self.after),
                "compression_rate": self.compression, "size_ratio": self.size_ratio,
                "flops_ratio": self.flops_ratio,
                "fidelity": None if self.fidelity is None else self.fidelity.to_dict(),
                "speedup": None if self.speedup is None else
                {"ratio": self.speedup[0], "ci95": list(self.speedup[1:])},
                "verdict": self.verdict, "reason": self.reason}


@dataclass(frozen=True)
class RealizedReport:
    target: str
    rows: tuple[RealizedRow, ...]
    comparison: Any | None  # measure.Comparison over the lineage, None with --no-measure
    models: tuple[ModelRef, ...]  # the lineage, in comparison order

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "rows": [r.to_dict() for r in self.rows],
                "comparison": None if self.comparison is None else self.comparison.to_dict()}

    def table(self) -> str:
        head = (f"{'step':<26} {'params':>9} {'size':>7} {'FLOPs':>7} {'speedup (95% CI)':>22} "
                f"{'cosine':>9}  verdict")
        lines = [head, "-" * len(head)]
        for r in self.rows:
            if r.after is None:
                lines.append(f"{r.name:<26} {'':>9} {'':>7} {'':>7} {'':>22} {'':>9}  {r.verdict}")
                continue
            x = lambda v: "-" if v is None else f"{v:.2f}x"  # noqa: E731
            sp = "not measured" if r.speedup is None else \
                f"{r.speedup[0]:.2f}x ({r.speedup[1]:.2f}-{r.speedup[2]:.2f})"
            cos = "-" if r.fidelity is None else f"{r.fidelity.cosine:.5f}"
            why = f" — {r.reason}" if r.reason and r.verdict != "realized" else ""
            lines.append(f"{r.name:<26} {x(r.compression):>9} {x(r.size_ratio):>7} "
                         f"{x(r.flops_ratio):>7} {sp:>22} {cos:>9}  {r.verdict}{why}")
        return "\n".join(lines)


def realized_report(result: RecipeResult, target: Target, feeds: Mapping[str, np.ndarray],
                    plan: TimingPlan = TimingPlan(), *, measure: bool = True,
                    progress: bool = False) -> RealizedReport:
    """Rows per step and for the whole recipe; one interleaved comparison of the lineage."""
    lineage = lineage_of(result)
    comparison = None
    if measure and len(lineage) > 1:
        from ..measure.timing import compare

        artifacts = [target.compile(m) for m in lineage]
        try:
            comparison = compare(artifacts, [feeds] * len(artifacts), plan, progress,
                                 names=["source"] + [f"{s.index} {s.name}" for s in result.applied])
        finally:
            for a in artifacts:
                a.close()
    stats = {m.sha256: model_stats(m.path, feeds) for m in lineage}
    return build_report(result, stats, comparison, target.name)


def lineage_of(result: RecipeResult) -> list[ModelRef]:
    """Source then every applied step's output: the order of the interleaved comparison."""
    return [result.source] + [s.output for s in result.applied]


def build_report(result: RecipeResult, stats: Mapping[str, ModelStats], comparison: Any | None,
                 target_name: str) -> RealizedReport:
    """Rows from model statistics and (optionally) a comparison in `lineage_of` order."""
    lineage = lineage_of(result)
    index = {m.sha256: i for i, m in enumerate(lineage)}

    def row(name, parent: ModelRef, child: ModelRef, fid, step_name: str) -> RealizedRow:
        before, after = stats[parent.sha256], stats[child.sha256]
        sp = comparison.speedup(index[child.sha256], index[parent.sha256]) if comparison else None
        v = verdict(sp[1], sp[2]) if sp else "not measured"
        reason = explain(step_name, before, after, child.path, target_name)
        return RealizedRow(name, parent.sha256, child.sha256, before, after, fid, sp, v, reason)

    rows = []
    for s in result.steps:
        if s.applied:
            rows.append(row(f"{s.index} {s.name}", s.parent, s.output, s.fidelity, s.name))
        else:
            rows.append(RealizedRow(f"{s.index} {s.name}", s.parent.sha256, s.parent.sha256,
                                    stats[s.parent.sha256], None, None, None,
                                    f"skipped: {s.skipped}", s.skipped))
    if len(result.applied) > 1:
        rows.append(row("recipe (source -> final)", result.source, result.final, result.fidelity,
                        "recipe"))
    return RealizedReport(target_name, tuple(rows), comparison, tuple(lineage))


def summarize_notes(records: Sequence[Any]) -> list[str]:
    """Every warning the steps raised, once each, in order."""
    seen: list[str] = []
    for r in records:
        for n in r.notes:
            if n not in seen:
                seen.append(n)
    return seen
