"""The search's whole measurements (engine.py runs them): the candidates the calibrated layer
table says could win, one board's worth at a time (N at once over a device pool), until the cap,
the time limit or the predictor says nothing left can; and every expert recipe, whatever the
predictor says. `self` is the running `Search`."""

from __future__ import annotations

import math
from typing import Sequence

from ..errors import DeployKitError
from .progress import Bar
from .recommend import pick_next
from .result import Row

Points = dict[tuple, list[tuple[float, float]]]  # (table sum, measured) per target variant


def measure_promising(self, rows: list[Row], variants: Sequence[tuple], points: Points,
                  bar: Bar) -> None:
    """Measure whole, one at a time, the candidate the calibrated table says could win, until
    the cap, the time limit or the predictor says nothing left can."""
    timeable = [r for r in rows if r.status == "ok"]
    # the cap counts only candidates that passed fidelity (what exhaustive search times);
    # the anchor, one candidate per variant and one more are measured even past the time
    # limit: the predictor needs them, and the report judges it on them
    min_whole = min(len(timeable), len(variants) + 2)
    max_whole = len(timeable) if self.cfg.exhaustive else \
        max(min_whole, math.floor(self.cfg.whole_fraction * len(timeable)))
    errors: list[float] = []
    while True:
        measured = [r for r in timeable if r.median is not None]
        if len(measured) >= max_whole or (len(measured) >= min_whole and
                                          not self.within_time(0, "whole measurements")):
            break
        pool = [r for r in timeable if r.median is None]
        if not pool:
            break
        # a device pool measures its N boards' worth at once: the next N picks, each made
        # as if the ones before it were not there (one board: exactly the sequential loop)
        batch: list[Row] = []
        while len(batch) < min(self.measure.width, max_whole - len(measured), len(pool)):
            taken = {id(b) for b in batch}
            nxt = pick_next([r for r in pool if id(r) not in taken], measured, min_whole,
                            rows, points, errors, self.cfg, self.estimator.whole_only)
            if nxt is None:
                break
            batch.append(nxt)
        if not batch:
            break
        for nxt, ok in zip(batch, measure_many(self, batch)):
            if not ok:
                timeable.remove(nxt)  # below the floor on its own runtime, or it failed
                continue
            if nxt.predicted_ms is not None:
                errors.append((nxt.predicted_ms - nxt.median) / nxt.median)
            if nxt.table_ms is not None:
                points[nxt.cand.options].append((nxt.table_ms, nxt.median))
            bar.advance(nxt, 0)
        bar.show_best(rows, self.cfg.budget_ms)

def measure_many(self, rows: list[Row]) -> list[bool]:
    """Measure the candidates whole (at once over a device pool); False for one below the
    floor on its own runtime or that the runtime failed on (e.g. cannot load this model:
    the row says why)."""
    got = self.measure.whole_many(rows, self.cfg.whole_plan)
    for row, rep in zip(rows, got):
        if isinstance(rep, DeployKitError):
            row.status, row.reason = "failed", str(rep)
    return [rep is not None and not isinstance(rep, DeployKitError) for rep in got]

def measure_experts(self, rows: list[Row], points: Points, bar: Bar) -> None:
    """Measure whole every expert recipe on its own runtime, whatever the predictor says."""
    from .layer_table import Predictor

    todo = []
    for r in rows:
        why = self._experts.get(r.cand.model_id, {}).get(r.cand.options)
        if why is None:
            continue
        r.expert = why
        if r.status == "ok" and r.median is None:
            todo.append(r)
    n = self.measure.width  # a device pool's boards measure that many at once
    for batch in (todo[i:i + n] for i in range(0, len(todo), n)):
        for r in batch:
            pts = points.get(r.cand.options)
            if r.table_ms is not None and pts:  # a real prediction, made before measuring
                r.predicted_ms = Predictor(tuple(pts)).predict(r.table_ms)
        for r, ok in zip(batch, measure_many(self, batch)):
            if not ok:
                continue
            if r.table_ms is not None:
                points[r.cand.options].append((r.table_ms, r.median))
            bar.advance(r, 0)
        bar.show_best(rows, self.cfg.budget_ms)
