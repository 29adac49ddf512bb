"""What a search is asked and what it returns: its configuration and timing plans, one `Row` per
candidate, the `SearchResult`, and the files written from it (search.json, recommended.onnx, the
report), committed together."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core import Result, TimingPlan
from .candidates import Candidate

# Layer units are sub-millisecond: a short plan with a looser CI is enough for a lookup table.
UNIT_PLAN = TimingPlan(warmup_min_s=0.01, warmup_max_s=0.05, target_rel_ci=0.03, min_samples=15,
                       max_time_s=0.1, block_s=0.03)
WHOLE_PLAN = TimingPlan(warmup_min_s=0.1, warmup_max_s=1.0, target_rel_ci=0.02, min_samples=30,
                        max_time_s=2.0, block_s=0.25)
FINAL_PLAN = TimingPlan(warmup_min_s=0.2, warmup_max_s=2.0, target_rel_ci=0.01, min_samples=50,
                        max_time_s=8.0, block_s=0.5)


@dataclass(frozen=True)
class SearchConfig:
    budget_ms: float | None = None  # None: as fast as possible at min_fidelity
    min_fidelity: float = 0.99  # cosine vs original outputs, or eval metric / original's metric
    time_limit_s: float = 1200.0
    whole_fraction: float = 0.25  # measure at most this share of the candidates whole
    exhaustive: bool = False  # measure every candidate whole (to judge the predictor)
    target_options: bool = True  # also try thread counts / graph optimisation levels
    netadapt: bool = True  # also per-layer pruning ratios / ranks chosen by the layer table
    families: tuple[str, ...] = ()  # restrict the space ("int8", "prune", ...); empty: all
    # other runtimes (registry names) searched as alternatives; the recommendation stays on the
    # runtime of the target (search/experts.py)
    runtimes: tuple[str, ...] = ()
    experts: bool = True  # build and measure whole the expert recipes of each runtime first
    # seconds of distillation per pruned candidate of a torch source (search/recover.py); 0: off
    recover_budget_s: float = 0.0
    # seconds of distillation for the final pick: a recovered prune still below the floor after
    # its short recovery (recover.final_pick) is distilled this much longer, from its weights
    # (0: off)
    recover_final_s: float = 0.0
    unit_plan: TimingPlan = UNIT_PLAN
    whole_plan: TimingPlan = WHOLE_PLAN
    final_plan: TimingPlan = FINAL_PLAN


@dataclass
class Row:
    """Everything the search learned about one candidate (JSON-able via `to_dict`)."""

    cand: Candidate
    status: str = "pending"  # ok | rejected | failed | duplicate | pending
    reason: str | None = None
    path: str | None = None
    sha256: str | None = None
    fidelity: float | None = None
    fidelity_detail: dict[str, Any] = field(default_factory=dict)
    metric: float | None = None  # raw user eval value
    stats: dict[str, Any] = field(default_factory=dict)  # params, bytes, flops
    notes: list[str] = field(default_factory=list)
    table_ms: float | None = None  # layer-table sum
    predicted_ms: float | None = None  # prediction made before it was measured whole
    measured: dict[str, Any] | None = None  # median_ms, ci95_ms, n, stop_reason
    reused: bool = False  # measurement came from the store
    expert: str | None = None  # why an expert would pick this recipe on this runtime
    runtime: str | None = None  # the runtime (target name) it runs on
    recovery: dict[str, Any] | None = None  # fidelity before/after distillation, its cost

    @property
    def median(self) -> float | None:
        return None if self.measured is None else self.measured["median_ms"]

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "cand"}
        d.update(self.cand.to_dict())
        return d


@dataclass
class SearchResult(Result):
    config: SearchConfig
    model: str
    target: str
    rows: list[Row]
    recommendation: dict[str, Any] | None
    infeasible: str | None
    predictor: dict[str, Any]
    cost: dict[str, Any]
    env: dict[str, Any]
    per_op: dict[str, list[dict[str, Any]]]
    notes: list[str]
    alternatives: list[dict[str, Any]] = field(default_factory=list)  # other runtimes' best
    runtimes: dict[str, Any] = field(default_factory=dict)  # searched / not searched

    def __repr__(self) -> str:
        rec = self.recommendation
        pick = (f"recommends {rec.get('recipe') or rec.get('id')} at {rec.get('median_ms')} ms"
                if rec else f"no recommendation ({self.infeasible})")
        return f"SearchResult({self.model} on {self.target}: {len(self.rows)} candidates, {pick})"

    def to_dict(self) -> dict[str, Any]:
        from .pareto import pareto_front

        ok = [r for r in self.rows if r.status == "ok" and r.median is not None]
        front = pareto_front([(r.median, r.fidelity) for r in ok], ("min", "max"))
        front3 = pareto_front([(r.median, r.fidelity, r.stats.get("bytes", 0)) for r in ok],
                              ("min", "max", "min"))
        cfg = asdict(self.config)
        return {"schema": 1, "kind": "deploykit-search", "model": self.model,
                "target": self.target, "config": cfg,
                "candidates": [r.to_dict() for r in self.rows],
                "pareto": [ok[i].cand.id for i in front],
                "pareto_size": [ok[i].cand.id for i in front3],  # latency, fidelity, bytes
                "recommendation": self.recommendation, "infeasible": self.infeasible,
                "predictor": self.predictor, "cost": self.cost, "env": self.env,
                "per_op": self.per_op, "notes": self.notes,
                "alternatives": self.alternatives, "runtimes": self.runtimes}


def write_outputs(result: SearchResult, outdir: Path) -> dict[str, Path]:
    """search.json, the recommended model and the report, committed together; a run without a
    recommendation removes the recommended.onnx an earlier run left in `outdir`."""
    from ..outputs import Outputs
    from ..report.html import write_report

    data = result.to_dict()
    paths = {"json": outdir / "search.json"}
    with Outputs() as outs:
        if result.recommendation:
            paths["model"] = outdir / "recommended.onnx"
            outs.copy(result.recommendation["path"], paths["model"])
            data["recommendation"]["exported"] = str(paths["model"])
        else:
            outs.remove(outdir / "recommended.onnx")
        outs.json(paths["json"], data)
        paths.update(write_report(json.loads(json.dumps(data, default=json_default)), outdir,
                                  outs))
        outs.commit()
    return paths


def json_default(x: Any) -> Any:
    """numpy scalars and paths in a search's JSON (cached build records, search.json)."""
    if isinstance(x, (np.generic,)):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return str(x)
