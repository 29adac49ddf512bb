"""Choosing: which candidate to measure whole next, which one wins, and the recommendation and
other runtimes' alternatives, each re-measured interleaved with the baseline before it is
reported. Also the predictor's report card (how well the layer table ranked what was measured)."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any, Callable, Sequence

import numpy as np

from ..core import LatencyReport
from ..errors import DeployKitError, first_line
from .result import Row, SearchConfig

Compare = Callable[[Row, Row], list[LatencyReport]]  # (baseline, candidate) measured interleaved


def best(measured: Sequence[Row], budget_ms: float | None) -> Row | None:
    """Least latency (no budget) or most fidelity within the budget."""
    ok = [r for r in measured if r.median is not None and r.status == "ok"]
    if budget_ms is None:
        return min(ok, key=lambda r: r.median, default=None)
    fits = [r for r in ok if r.median <= budget_ms]
    return max(fits, key=lambda r: (r.fidelity, -r.median), default=None)


def next_candidate(pool: list[Row], measured: list[Row], margin: float,
                   budget_ms: float | None) -> Row | None:
    """The unmeasured candidate most likely to beat the incumbent, or None."""
    unknown = [r for r in pool if r.predicted_ms is None]
    pool = [r for r in pool if r.predicted_ms is not None]
    if not pool:  # no table for these (e.g. a runtime that cannot run a unit alone)
        return unknown[0] if unknown else None
    top = best(measured, budget_ms)
    if budget_ms is None:
        r = min(pool, key=lambda r: r.predicted_ms)
        if top is not None and r.predicted_ms > top.median * (1 + margin):
            return None
        return r
    room = budget_ms * (1 + margin)
    fits = [r for r in pool if r.predicted_ms <= room
            and (top is None or r.fidelity > top.fidelity
                 or (r.fidelity == top.fidelity and r.predicted_ms < top.median))]
    if fits:
        return max(fits, key=lambda r: (r.fidelity, -r.predicted_ms))
    if top is None:
        return min(pool, key=lambda r: r.predicted_ms)
    return None


def pick_next(pool: list[Row], measured: list[Row], min_whole: int, rows: Sequence[Row],
              points: dict[tuple, list[tuple[float, float]]], errors: Sequence[float],
              cfg: SearchConfig, whole_only: Callable[[Row], bool]) -> Row | None:
    """The next candidate of `pool` to measure whole (None: nothing left can win). Sets each
    one's `predicted_ms` from its variant's calibration `points` (table sum, measured)."""
    from .layer_table import Predictor

    everywhere = [p for pts in points.values() for p in pts]
    for r in pool:
        pts = points[r.cand.options] or everywhere
        r.predicted_ms = None if r.table_ms is None or not pts else \
            Predictor(tuple(pts)).predict(r.table_ms)
    margin = max(0.05, float(np.mean(np.abs(errors))) if errors else 0.05)
    # calibrate every variant first: its most promising candidate, measured whole
    fresh = [r for r in pool if not points[r.cand.options] and r.predicted_ms is not None]
    # a runtime without a layer table of its own: measured whole, in turn with the predicted
    # ones (a fair share of the whole measurements), the same model's table sum on the default
    # variant only ordering them
    unpredicted = [r for r in pool if r.table_ms is None and whole_only(r)]
    done_whole = sum(whole_only(r) for r in measured)
    if cfg.exhaustive:
        nxt = pool[0]
    elif fresh:
        nxt = min(fresh, key=lambda r: r.predicted_ms)
    else:
        nxt = next_candidate([r for r in pool if r not in unpredicted],
                             measured if len(measured) >= min_whole else [], margin,
                             cfg.budget_ms)
    if unpredicted and (nxt is None or done_whole * 2 < len(measured)):
        hint = {r.cand.model_id: r.table_ms for r in rows if not r.cand.options
                and r.table_ms is not None}
        nxt = min(unpredicted, key=lambda r: hint.get(r.cand.model_id, math.inf))
    return nxt


def _speedup(reports: Sequence[LatencyReport], name: str) -> dict[str, Any]:
    """The candidate's (reports[1]) measured speed-up over the baseline (reports[0])."""
    from ..measure.timing import Comparison
    from ..report.realized import verdict

    from ..measure.pooled import disagreement_note, per_board

    sp, lo, hi = Comparison(tuple(reports), ("baseline", name)).speedup(1, 0)
    # measured on several boards of a pool: each board's own speed-up (baseline / candidate)
    boards = [{"server": b["server"], "rounds": b["rounds"], "speedup": b["ratio"],
               "speedup_ci95": b["ratio_ci95"], "disagrees": b["disagrees"],
               **({"vs_others": b["vs_others"]} if "vs_others" in b else {})}
              for b in per_board(reports, 0, 1)]
    note = disagreement_note([{**b, "ratio": b["speedup"]} for b in boards],
                             f"{name}'s speed-up")
    return {"median_ms": reports[1].median_ms, "ci95_ms": list(reports[1].ci95_ms),
            "baseline_ms": reports[0].median_ms, "speedup": sp, "speedup_ci95": [lo, hi],
            "verdict": verdict(lo, hi), **({"boards": boards} if boards else {}),
            **({"boards_note": note} if note else {})}


def recommend(rows: list[Row], base: Row, cfg: SearchConfig, compare: Compare):
    """(recommendation, why infeasible, per-op tables): the interleaved baseline-vs-best
    comparison; the next best is tried (up to 3) when the interleaved run shows the first one
    outside the budget."""
    ok = [r for r in rows if r.status == "ok" and r.median is not None]
    tried: set[str] = set()
    per_op: dict[str, list[dict[str, Any]]] = {}
    for _ in range(3):
        top = best([r for r in ok if r.cand.id not in tried], cfg.budget_ms)
        if top is None:
            break
        tried.add(top.cand.id)
        reports = compare(base, top)
        gain = _speedup(reports, top.cand.name)
        med = gain["median_ms"]
        rec = {"id": top.cand.id, "name": top.cand.name, "recipe": top.cand.recipe,
               "options": dict(top.cand.options), "median_ms": med,
               "ci95_ms": gain["ci95_ms"], "baseline_ms": gain["baseline_ms"],
               "baseline_ci95_ms": list(reports[0].ci95_ms), "speedup": gain["speedup"],
               "speedup_ci95": gain["speedup_ci95"], "verdict": gain["verdict"],
               "fidelity": top.fidelity, "path": top.path, "sha256": top.sha256,
               "interleaved": True, **_boards(gain)}
        per_op = {"baseline": [asdict(o) for o in reports[0].per_op],
                  "recommendation": [asdict(o) for o in reports[1].per_op]}
        if cfg.budget_ms is None or med <= cfg.budget_ms:
            return rec, None, per_op
        top.notes.append(f"interleaved re-measurement {med:.3f} ms exceeds the budget")
    fastest = min(ok, key=lambda r: r.median, default=None)
    if fastest is None:
        msg = (f"no candidate meets {cfg.budget_ms} ms; no candidate reached fidelity "
               f"{cfg.min_fidelity}")
    else:
        msg = (f"no candidate meets {cfg.budget_ms:g} ms; fastest found is "
               f"{fastest.median:.3f} ms at fidelity {fastest.fidelity:.4f} "
               f"({fastest.cand.name})")
    return None, msg, per_op


def alternative(rows: list[Row], base: Row, runtime: str, budget_ms: float | None,
                compare: Compare) -> dict[str, Any]:
    """Another runtime's best candidate, measured interleaved with the baseline on the
    target (its ratio is what switching runtimes would buy), or why there is none."""
    mine = [r for r in rows if r.runtime == runtime]
    top = best(mine, budget_ms)
    if top is None:
        why = "no candidate passed fidelity and was measured on it" if mine else "not searched"
        return {"runtime": runtime, "id": None, "reason": why}
    try:
        reports = compare(base, top)
    except DeployKitError as e:
        return {"runtime": runtime, "id": top.cand.id, "name": top.cand.name,
                "reason": f"interleaved measurement failed: {first_line(e)}"}
    gain = _speedup(reports, top.cand.name)
    return {"runtime": runtime, "id": top.cand.id, "name": top.cand.name,
            "recipe": top.cand.recipe, "options": dict(top.cand.options),
            "median_ms": gain["median_ms"], "ci95_ms": gain["ci95_ms"],
            "baseline_ms": gain["baseline_ms"], "speedup": gain["speedup"],
            "speedup_ci95": gain["speedup_ci95"], "verdict": gain["verdict"],
            "fidelity": top.fidelity, "expert": top.expert, "interleaved": True,
            **_boards(gain)}


def _boards(gain: dict[str, Any]) -> dict[str, Any]:
    """The per-board part of `_speedup` (a comparison spread over a device pool), if any."""
    return {k: gain[k] for k in ("boards", "boards_note") if k in gain}


def predictor_summary(rows: Sequence[Row], points: dict[tuple, list[tuple[float, float]]],
                      base: Row) -> dict[str, Any]:
    """How well the calibrated layer table predicted the candidates measured whole."""
    from .layer_table import Predictor

    tested = [r for r in rows if r.median is not None and r.predicted_ms is not None]
    errs = [(r.predicted_ms - r.median) / r.median for r in tested]
    rank = None
    if len(tested) >= 5:  # fewer points give a rank correlation of pure chance
        from scipy.stats import spearmanr

        rank = float(spearmanr([r.predicted_ms for r in tested],
                               [r.median for r in tested]).statistic)
    return {
        "measured_whole": len(tested),
        "mean_abs_rel_error": float(np.mean(np.abs(errs))) if errs else None,
        "max_abs_rel_error": float(np.max(np.abs(errs))) if errs else None,
        "errors": [{"id": r.cand.id, "predicted_ms": r.predicted_ms, "measured_ms": r.median}
                   for r in tested],
        "rank_correlation": rank,  # Spearman: does the table order candidates right?
        "scale": {",".join(f"{k}={v}" for k, v in opts) or "default":
                  Predictor(tuple(pts)).scale() for opts, pts in points.items() if pts},
        "baseline_table_ms": base.table_ms, "baseline_measured_ms": base.median,
    }
