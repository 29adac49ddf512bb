"""Latency-guided compression search: measured latency, not FLOPs, decides what to apply.

1. Every candidate recipe (search/space.py) is built and its fidelity is checked against the
   original outputs (or a user eval) *before* anything is timed (search/build.py).
2. A per-layer lookup table (search/estimate.py) predicts each surviving candidate's latency; only
   the promising ones are measured whole (search/measuring.py), and each whole measurement
   recalibrates the predictor.
3. The recommendation is measured once more, interleaved with the baseline, before it is reported
   (search/recommend.py).
Every measurement goes to the results store under a key of (model sha256, target fingerprint,
timing plan, inputs; search/keys.py), and every built candidate stays in OUTDIR/.work, so a
search killed at any point continues where it stopped. This module runs those steps in order.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..core import ModelRef
from ..backends.base import Target
from ..errors import InputError
from .adapt import netadapt_rows
from .build import Builder, copy_build, load_eval
from .estimate import Estimator
from .experts import runtimes_info
from .keys import code_id, measurement_key, reference_runtime
from .measuring import Measurer
from .progress import Bar
from .recommend import alternative, predictor_summary, recommend
from .result import FINAL_PLAN, Row, SearchConfig, SearchResult, write_outputs
from .space import search_space
from .whole import Points, measure_experts, measure_promising

# the names this module has always offered its callers
__all__ = ["FINAL_PLAN", "Row", "Search", "SearchConfig", "SearchResult", "code_id", "load_eval",
           "measurement_key", "reference_runtime", "write_outputs"]

BUILD_SHARE = 0.6  # of the time limit for building candidates; the rest is for measuring whole


class Search:
    """One search run; `run()` returns a SearchResult (its `infeasible` says when nothing fits).
    Its parts: `builder` (build cache, fidelity gate), `measure` (target variants, whole
    measurements reused from the store), `estimator` (one layer table per target variant)."""

    def __init__(self, model_path: Path, target_spec: str, cfg: SearchConfig, outdir: Path,
                 store, *, feeds: Mapping[str, np.ndarray],
                 calibration: Sequence[Mapping[str, np.ndarray]] = (), calibration_is_synthetic=True,
                 eval_fn: Callable[[str], float] | None = None, progress: bool = False,
                 threads: int | None = None, log: Callable[[str], None] | None = None,
                 torch_source=None, pool=None):
        from ..backends import registry as targets

        self.cfg = cfg
        self.pool_cfg = pool  # a backends.tvm.pool.PoolConfig: measure over a device pool
        self.outdir = Path(outdir)
        self.work = self.outdir / ".work"
        self.progress = progress
        self.target = targets.get(target_spec, threads=threads,
                                  **({} if pool is None else
                                     {"device": pool.key, "tracker": pool.tracker}))
        if pool is not None:
            from ..backends.tvm.pool import check_target

            check_target(self.target)
        self.source = ModelRef.from_path(model_path)
        self.t0 = time.monotonic()
        self.notes: list[str] = []
        self.time_limit_hits: list[str] = []  # where the time limit cut the search short
        self.netadapt_log: dict[str, Any] | None = None
        self.builder = Builder(self.source, self.work, store, feeds=feeds,
                               calibration=calibration, synthetic=calibration_is_synthetic,
                               min_fidelity=cfg.min_fidelity, target_name=self.target.name,
                               eval_fn=eval_fn, torch_source=torch_source,
                               log=log or (lambda msg: print(msg, file=sys.stderr)))
        self.feeds = self.builder.feeds
        self.measure = Measurer(self.target, target_spec, threads, store, self.builder,
                                cfg.unit_plan)
        self.estimator = Estimator(self.feeds, self.notes)
        self._experts: dict[str, dict[tuple, str]] = {}

    def time_left(self) -> float:
        return self.cfg.time_limit_s - (time.monotonic() - self.t0)

    def within_time(self, reserve: float, where: str) -> bool:
        """True while more than `reserve` seconds of the time limit are left; else records
        `where` the limit cut the search short (`cost.time_limit_reached`: a result says whether
        it is all the search would have done, or what the limit left out)."""
        if self.time_left() > reserve:
            return True
        if where not in self.time_limit_hits:
            self.time_limit_hits.append(where)
        return False

    def build(self, row: Row) -> None:
        """Build the candidate (or reuse its build) and gate it on fidelity: sets row.status."""
        self.builder.build(row)

    def target_of(self, options: tuple) -> Target:
        return self.measure.target_of(options)

    def runtime_of(self, row: Row) -> str:
        """The runtime (target name) a candidate runs on."""
        return dict(row.cand.options).get("target", self.target.name)

    # ---- the search -----------------------------------------------------------------------

    def run(self) -> SearchResult:
        """The search; over a device pool (`pool`), with the pool's boards held throughout."""
        if self.pool_cfg is None:
            return self._run()
        from ..backends.tvm.pool import DevicePool

        # the final comparison times two models with no sign of life in between
        plans = (self.cfg.whole_plan, self.cfg.final_plan, self.cfg.unit_plan)
        budget = 2 * max(p.max_time_s + p.warmup_max_s for p in plans)
        with DevicePool(self.pool_cfg, budget_s=budget) as pool:
            self.measure.pool = pool
            try:
                return self._run()
            finally:
                self.measure.pool = None

    def _run(self) -> SearchResult:
        from ..onnxio import load_onnx

        source_model = load_onnx(self.source.path)
        models, variants, self._experts = search_space(
            self.cfg, source_model, self.builder.torch_source, self.target, self.target_of,
            self.notes)
        base = Row(models[0])
        eval_fn = self.builder.eval_fn
        if eval_fn is not None:
            try:
                self.builder.base_metric = float(eval_fn(str(self.source.path)))
            except Exception as e:
                raise InputError(f"--eval failed on the original model: {type(e).__name__}: {e}") \
                    from None
        self.build(base)
        rows: list[Row] = [base]
        for v in variants[1:]:
            r = Row(base.cand.with_options(v))
            copy_build(base, r)
            rows.append(r)
        n_space = len(models) * len(variants)

        # one layer table per target variant: a unit's latency depends on threads and graph level
        self.estimator.make_tables(variants, self.measure, self.work / "units")
        bar = Bar(self.progress, n_space)
        try:
            # 1. the baseline measured whole: the predictor's anchor; its variants only tabled.
            # Over a device pool it runs on one board while its layer units go to the others.
            base_whole = self.measure.whole_aside(base, self.cfg.whole_plan)
            try:
                for r in rows:
                    r.table_ms = self.estimator.estimate(r)
                    bar.advance(r)
            except BaseException:  # waited for (its board goes back), the tables' error raised
                try:
                    base_whole()
                except Exception:  # noqa: BLE001 (the first error is the one to report)
                    pass
                raise
            base_whole()
            # (table sum, measured) per target variant: a variant's scale can differ (two threads
            # suffer more than one from foreign load; another runtime fuses differently)
            points: Points = {v: [] for v in variants}
            if base.table_ms is not None:
                points[()].append((base.table_ms, base.median))
            # 2. build, verify and table-estimate every model candidate (cheap families first;
            # recovery's deeper cuts and final fine-tunes right after the short recoveries)
            sha_seen = {base.sha256: base}
            n_space += self._build_candidates(models, variants, rows, points, sha_seen,
                                              bar) * len(variants)
            # 2a. NetAdapt: per-layer cuts, each iteration keeping the most faithful proposal
            # that meets its latency goal on the layer table; then int8 on the last ones
            if self.cfg.netadapt and base.table_ms is not None:
                na_rows, kept, self.netadapt_log = netadapt_rows(self, base, sha_seen, bar)
                kept_ids = {id(r) for r in kept}
                for row in na_rows:  # other target variants only for the deepest kept states
                    rows.append(row)
                    if id(row) in kept_ids and self.within_time(0, "NetAdapt target variants"):
                        variant_rows = self._variant_rows(row, variants)
                        rows += variant_rows
                        n_space += len(variant_rows)
                n_space += len(na_rows)
            # 3. measure whole what the calibrated table says could win
            measure_promising(self, rows, variants, points, bar)
        finally:
            bar.close()
        return self._result(rows, base, points, n_space)

    def _build_candidates(self, models: list, variants: Sequence[tuple], rows: list[Row],
                          points: Points, sha_seen: dict[str, Row], bar: Bar) -> int:
        """Build every model candidate (and its target variants) while the building share of the
        time limit lasts; the experts' recipes come first, always, and are measured whole. Right
        after the recovered prunes, before the cheaper rest of the space can spend the building
        time: deeper cuts while the deepest still meets the floor (search/deeper.py), then the
        final, longer fine-tune of a cut still below it (recover.final_candidates).
        Returns how many model candidates were added beyond `models`."""
        from .recover import STEP

        def recovered(c) -> bool:
            return c.steps[0][0] == STEP

        n_experts = sum(c.model_id in self._experts for c in models)
        built = {models[0].model_id}
        extra = 0
        for i, cand in enumerate(models[1:]):
            if i == n_experts:  # every expert recipe built: measure them whole, now
                measure_experts(self, rows, points, bar)
            if i >= n_experts and not self.within_time(
                    (1 - BUILD_SHARE) * self.cfg.time_limit_s, "building candidates"):
                self.notes.append("time limit reached while building candidates; "
                                  f"{len(models) - len(built)} recipes not tried")
                break
            row = self._add_candidate(cand, rows, sha_seen, variants)
            built.add(cand.model_id)
            bar.advance(row, len(variants))
            bar.show_best(rows, self.cfg.budget_ms)
            if recovered(cand) and (i + 2 == len(models) or not recovered(models[i + 2])):
                extra += self._recover_further(rows, sha_seen, variants, bar)
        if n_experts == len(models) - 1:
            measure_experts(self, rows, points, bar)
        return extra

    def _recover_further(self, rows: list[Row], sha_seen: dict[str, Row],
                         variants: Sequence[tuple], bar: Bar) -> int:
        """After the short recoveries: deeper torch-side prunes, one cut at a time, while the
        deepest one built still meets the floor (search/deeper.py); then recovery's final,
        longer fine-tune of a prune still below it (recover.final_pick: the deepest within
        reach of the floor, else the closest miss), the next one only when a final one missed
        (NetAdapt's long-term fine-tune; search/recover.py). Returns how many model candidates
        were built."""
        from .deeper import deeper_candidates
        from .recover import final_candidates

        reserve = (1 - BUILD_SHARE) * self.cfg.time_limit_s
        n = 0
        for propose in (lambda: deeper_candidates(rows, self.time_left(), reserve),
                        lambda: final_candidates(rows, self.cfg.recover_final_s,
                                                 self.time_left(), reserve,
                                                 floor=self.cfg.min_fidelity)):
            while True:
                cands, why_not = propose()
                if why_not:
                    self.notes.append(why_not)
                if not cands:
                    break
                self._build_finals(cands, rows, sha_seen, variants, bar)
                n += len(cands)
        return n

    def _build_finals(self, cands, rows: list[Row], sha_seen: dict[str, Row],
                      variants: Sequence[tuple], bar: Bar) -> None:
        """Build recovery's final or deeper candidates (search/recover.py, deeper.py) into
        `rows`, on every variant."""
        for cand in cands:
            bar.grow(self._add_candidate(cand, rows, sha_seen, variants))

    def _add_candidate(self, cand, rows: list[Row], sha_seen: dict[str, Row],
                       variants: Sequence[tuple]) -> Row:
        """Build `cand`, mark it a duplicate of an earlier model with the same bytes or
        table-estimate it, and append it and its target variants to `rows`."""
        row = Row(cand)
        self.build(row)
        if row.status == "ok" and row.sha256 in sha_seen:
            row.status = "duplicate"
            row.reason = f"same model as {sha_seen[row.sha256].cand.name}"
        if row.status == "ok":
            sha_seen[row.sha256] = row
            row.table_ms = self.estimator.estimate(row)
        rows.append(row)
        rows += self._variant_rows(row, variants)
        return row

    def _variant_rows(self, row: Row, variants: Sequence[tuple]) -> list[Row]:
        """The candidate on every other target variant (same model, own table estimate)."""
        out = []
        for v in variants[1:]:
            vr = Row(row.cand.with_options(v))
            copy_build(row, vr)
            if vr.status == "ok":
                vr.table_ms = self.estimator.estimate(vr)
            out.append(vr)
        return out

    def _result(self, rows: list[Row], base: Row, points: Points, n_space: int) -> SearchResult:
        """4. the recommendation (on the target's runtime), measured interleaved against the
        baseline; each other runtime searched: its best, measured the same way."""
        from ..measure.env import fingerprint

        for r in rows:
            r.runtime = self.runtime_of(r)
            r.expert = r.expert or self._experts.get(r.cand.model_id, {}).get(r.cand.options)
        own = [r for r in rows if r.runtime == self.target.name]

        def compare(a: Row, b: Row):
            return self.measure.compare(a, b, self.cfg.final_plan)

        recommendation, infeasible, per_op = recommend(own, base, self.cfg, compare)
        runtimes = tuple(self.cfg.runtimes)
        alternatives = [alternative(rows, base, n, self.cfg.budget_ms, compare) for n in runtimes]
        cost = {"candidates": n_space, "built": len(rows),
                "fidelity_ok": sum(r.status == "ok" for r in rows),
                "measured_whole": sum(r.median is not None for r in rows),
                "whole_measured_now": self.measure.now, "whole_reused": self.measure.reused,
                **self.estimator.units(),
                "seconds": time.monotonic() - self.t0, "exhaustive": self.cfg.exhaustive,
                "time_limit_reached": list(self.time_limit_hits),
                "netadapt": self.netadapt_log, "measuring_s": self.measure.busy_s,
                "phases_s": dict(self.measure.phases_s),
                "devices": None if self.measure.pool is None else self.measure.pool.summary()}
        return SearchResult(self.cfg, str(self.source.path), self.target.name, rows,
                            recommendation, infeasible, predictor_summary(rows, points, base),
                            cost,
                            fingerprint(self.target.name, self.target.config, self.target.threads),
                            per_op, self.notes, alternatives, runtimes_info(self.target, runtimes))
