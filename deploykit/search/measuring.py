"""Measuring candidates: on the target variant each one runs on, reused from the results store
when the same model was timed the same way before. On a runtime other than the verification one
(ORT's CPU provider) a candidate's outputs are checked there first: a runtime may compute an
int8 model differently, and a candidate below the floor on its own runtime is never timed."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..backends.base import Target
from ..core import LatencyReport, ModelRef, TimingPlan, stable_hash
from ..errors import DeployKitError
from .build import Builder
from .keys import feeds_digest, measurement_key, reference_runtime, target_fp
from .result import Row, json_default

# --eval mode: a runtime other than ORT must give the same file's outputs within this cosine
RUNTIME_AGREEMENT = 0.99


class Measurer:
    """Whole and per-unit measurements of a search's candidates, with the store's reuse."""

    def __init__(self, target: Target, target_spec: str, threads: int | None, store,
                 builder: Builder, unit_plan: TimingPlan, pool=None):
        self.target, self.spec, self.threads = target, target_spec, threads
        self.pool = pool  # a backends.tvm.pool.DevicePool (open), or None: one device in turn
        self.store, self.builder, self.unit_plan = store, builder, unit_plan
        self.targets: dict[tuple, Target] = {(): self.target}  # by candidate options
        self.feeds = builder.feeds
        self.feeds_id = feeds_digest(self.feeds)
        self.now = self.reused = 0  # whole measurements made now / found in the store
        # (start, end, phase) of every stretch of measuring: units, whole, baseline, final
        self._spans: list[tuple[float, float, str]] = []
        self._ref_outputs: list[list[np.ndarray]] | None = None

    def target_of(self, options: tuple) -> Target:
        if options not in self.targets:
            from .candidates import target_for

            opts = dict(options)
            if self.threads is not None and "threads" not in opts:
                opts["threads"] = self.threads
            self.targets[options] = target_for(self.spec, self.target.config,
                                               tuple(sorted(opts.items())))
        return self.targets[options]

    @property
    def width(self) -> int:
        """How many measurements run at once: the device pool's boards, else one."""
        return max(1, len(self.pool.devices)) if self.pool is not None else 1

    def on_devices(self, fn, items: Sequence, done, remote: bool = True,
                   phase: str = "whole") -> None:
        """fn(item) for every item, on the pool's boards when there is a pool (done(i, result)
        runs here, in the search's thread, which alone touches the store), else in turn. A
        target timed on this machine (`remote` False: another runtime searched beside the
        boards) is timed in turn: parallel jobs would load the cores it is timed on."""
        t0 = time.monotonic()
        try:
            if self.pool is not None and remote:
                self.pool.map(fn, items, on_result=done)
            else:
                for i, item in enumerate(items):
                    done(i, fn(item))
        finally:
            self._spent(phase, t0)

    def whole(self, row: Row, plan: TimingPlan) -> LatencyReport | None:
        """Time the candidate whole on its target variant; None (row rejected, nothing timed)
        when its outputs on a runtime other than the reference one miss the fidelity floor."""
        got = self.whole_many([row], plan)[0]
        if isinstance(got, DeployKitError):
            raise got
        return got

    def whole_aside(self, row: Row, plan: TimingPlan):
        """`whole` started on one board of a device pool, in the background, while the other
        boards take the next jobs (the baseline beside its layer units); returns a function
        that waits for it and returns what `whole` would. Without a pool of several boards (or
        for a target timed here) it is measured now."""
        target = self.target_of(row.cand.options)
        if self.pool is None or not _remote(target) or len(self.pool.devices) < 2:
            rep = self.whole(row, plan)
            return lambda: rep
        key = measurement_key("whole", row.sha256, target, plan, self.feeds_id)
        stored = self.store.get_measurement(key)
        t0, ended = time.monotonic(), []

        def job():
            try:
                return self._whole_job(row, plan, stored)
            finally:
                ended.append(time.monotonic())

        handle = self.pool.aside(job)

        def wait():
            try:
                rep = handle.result()
            finally:  # its span ends when the board finished, not when it was waited for
                self._spent("baseline", t0, ended[-1] if ended else None)
            self._whole_done(row, key, stored, rep)
            if isinstance(rep, DeployKitError):
                raise rep
            return rep

        return wait

    def _whole_done(self, row: Row, key: str, stored: LatencyReport | None, rep) -> None:
        """A whole measurement back (in the search's thread, which alone touches the store)."""
        if not isinstance(rep, LatencyReport):
            return
        if rep is stored:
            self.reused += 1
            row.reused = True
        else:
            self.store.put_measurement(key, rep, model=ModelRef.from_path(row.path))
            self.now += 1
        row.measured = {"median_ms": rep.median_ms, "ci95_ms": list(rep.ci95_ms),
                        "n": len(rep.samples_ms), "stop_reason": rep.stop_reason,
                        "cv": rep.cv, "contaminated_fraction": rep.contaminated_fraction,
                        "state": rep.validity.state}

    def whole_many(self, rows: Sequence[Row], plan: TimingPlan
                   ) -> list[LatencyReport | DeployKitError | None]:
        """`whole` for several candidates, as many at once as there are boards; a candidate's
        own failure (its runtime cannot load it) is its entry, not the others' loss."""
        keys = [measurement_key("whole", r.sha256, self.target_of(r.cand.options), plan,
                                self.feeds_id) for r in rows]
        stored = [self.store.get_measurement(k) for k in keys]
        out: list[LatencyReport | DeployKitError | None] = [None] * len(rows)

        def done(i: int, rep) -> None:
            out[i] = rep
            self._whole_done(rows[i], keys[i], stored[i], rep)

        on_board = [i for i, r in enumerate(rows) if _remote(self.target_of(r.cand.options))]
        here = [i for i in range(len(rows)) if i not in on_board]
        for group, remote in ((on_board, True), (here, False)):
            if not group:
                continue
            self.on_devices(lambda i: self._whole_job(rows[i], plan, stored[i]), group,
                            lambda k, rep, group=group: done(group[k], rep), remote)
        return out

    def _whole_job(self, row: Row, plan: TimingPlan, stored: LatencyReport | None):
        """The device's part of `whole` (a pool worker's thread: no store here)."""
        target = self.target_of(row.cand.options)
        art = None
        try:
            if not reference_runtime(target):
                art = self.runtime_fidelity(row, target)
                if row.status != "ok":
                    return None
            if stored is not None:
                return stored
            art = art or target.compile(ModelRef.from_path(row.path))
            return target.profile(art, self.feeds, plan, per_op=False)
        except DeployKitError as e:
            if self.pool is not None and not _board_alive():
                raise  # the pool retries it on another board
            return e
        finally:
            if art is not None:
                art.close()

    def runtime_fidelity(self, row: Row, target: Target):
        """Fidelity of the candidate as `target` runs it: ORT (the verification runtime) and,
        say, OpenVINO's CPU plugin need not compute the same int8 model alike (OpenVINO
        quantizes the activations of int8-weight MatMuls at run time). Cosine mode: the worse of
        the ORT cosine and the runtime's (its outputs vs the original model's on ORT) becomes
        the row's fidelity, and a row below the floor is rejected before it is timed. --eval
        mode (the metric runs on ORT): the runtime must agree with ORT on the same file (cosine
        >= RUNTIME_AGREEMENT). Returns the compiled artifact (reused for timing), or None when
        the result came from OUTDIR/.work."""
        from ..fidelity import Fidelity, compare, run_ort, worst
        from ..fsutil import write_text_atomic

        b = self.builder
        cache = b.work / "runtime-fidelity" / (
            stable_hash(row.sha256, target_fp(target), b.key) + ".json")
        art = None
        if cache.exists():
            fid = Fidelity(**json.loads(cache.read_text()))
        else:
            art = target.compile(ModelRef.from_path(row.path))
            batches = b.verify_batches()
            if b.eval_fn is None:
                if self._ref_outputs is None:
                    self._ref_outputs = [run_ort(b.source.path, x) for x in batches]
                refs = self._ref_outputs
            else:
                refs = [run_ort(row.path, x) for x in batches]
            fid = worst([compare(r, art.run(x)) for r, x in zip(refs, batches)])
            write_text_atomic(cache, json.dumps(asdict(fid), default=json_default))
        against = "the original on ORT" if b.eval_fn is None else "the same file on ORT"
        row.fidelity_detail = {**row.fidelity_detail,
                               "runtime": {"target": target.name, "against": against,
                                           **fid.to_dict()}}
        if not row.cand.steps and not row.cand.options:
            return art  # the baseline as the user's target runs it: the reference point
        floor = b.min_fidelity if b.eval_fn is None else RUNTIME_AGREEMENT
        if not fid.finite or not fid.shapes_match or not fid.cosine >= floor:
            row.status = "rejected"
            row.reason = (f"on {target.name}: cosine {fid.cosine:.4f} vs {against} "
                          f"< {floor}")
        elif b.eval_fn is None:
            row.fidelity = min(row.fidelity, fid.cosine) if row.fidelity is not None \
                else fid.cosine
        return art

    def time_unit(self, target: Target, sig: str, path: Path,
                  feeds: Mapping[str, np.ndarray]) -> float:
        """Time one layer unit (a layer table's entry) and keep it in the store."""
        return self.time_units(target, [(sig, path, feeds)])[0]

    def time_units(self, target: Target, units: Sequence[tuple]) -> list[float]:
        """`time_unit` for (sig, path, feeds) units, as many at once as there are boards; each
        one is stored as it finishes (kept when a later one fails)."""
        out = [0.0] * len(units)

        def job(u):
            art = target.compile(ModelRef.from_path(u[1]))
            try:
                return target.profile(art, u[2], self.unit_plan, per_op=False)
            finally:
                art.close()

        def done(i: int, rep: LatencyReport) -> None:
            self.store.put_measurement(
                measurement_key("unit", units[i][0], target, self.unit_plan, "unit"), rep)
            out[i] = rep.median_ms

        self.on_devices(job, units, done, _remote(target), phase="units")
        return out

    def lookup_unit(self, target: Target, sig: str) -> float | None:
        rep = self.store.get_measurement(
            measurement_key("unit", sig, target, self.unit_plan, "unit"))
        return None if rep is None else rep.median_ms

    def compare(self, base: Row, best: Row, plan: TimingPlan) -> list[LatencyReport]:
        """The baseline and a candidate measured interleaved (each on its own target variant);
        over a device pool, on every board at once (both models on each, for its share of the
        time) and the rounds pooled (backends/tvm/pool_compare.py)."""
        from ..measure.timing import compare

        # Targets as deployed (spinning included): measure_many alternates blocks of ~0.25 s, so
        # the idle session's pool is asleep while the other one runs. Turning spinning off here
        # would time a configuration nobody deploys (it slows 2-thread runs of small models).
        ta, tb = self.target_of(()), self.target_of(best.cand.options)
        keys = [measurement_key("final:0", f"{base.sha256}|{best.sha256}|{best.cand.id}", ta,
                                plan, self.feeds_id),
                measurement_key("final:1", f"{base.sha256}|{best.sha256}|{best.cand.id}", tb,
                                plan, self.feeds_id)]
        got = [self.store.get_measurement(k) for k in keys]
        if all(got):
            self.reused += 1
            return got

        def both(share: TimingPlan, per_op: bool):
            # both models on one board (a ratio of two boards would measure the boards)
            arts = [ta.compile(ModelRef.from_path(base.path)),
                    tb.compile(ModelRef.from_path(best.path))]
            try:
                return compare(arts, [self.feeds, self.feeds], share, per_op=per_op,
                               names=["baseline", best.cand.name]).reports
            finally:
                for a in arts:
                    a.close()

        t0 = time.monotonic()
        try:
            if self.pool is not None:  # every board compares both, for its share of the time
                from ..backends.tvm.pool_compare import compare_on_boards
                from ..measure.pooled import share_plan

                share = share_plan(plan, len(self.pool.devices))
                reports = compare_on_boards(self.pool, lambda i: both(share, i == 0))
            else:
                reports = both(plan, True)
        finally:
            self._spent("final", t0)
        for k, rep, r in zip(keys, reports, (base, best)):
            self.store.put_measurement(k, rep, model=ModelRef.from_path(r.path))
        self.now += 1
        return list(reports)

    def _spent(self, phase: str, t0: float, t1: float | None = None) -> None:
        """Measuring from t0 to now (or t1), in `phase` (list.append: safe from a thread)."""
        self._spans.append((t0, time.monotonic() if t1 is None else t1, phase))

    @property
    def busy_s(self) -> float:
        """Wall seconds during which something was being measured (cost.measuring_s): the
        union of the spans, so the baseline measured beside the layer units counts once."""
        total, end = 0.0, -float("inf")
        for a, b, _ in sorted(self._spans):
            if b > end:
                total += b - max(a, end)
                end = b
        return total

    @property
    def phases_s(self) -> dict[str, float]:
        """Wall seconds of each phase (cost.phases_s; phases that overlapped each count)."""
        out: dict[str, float] = {}
        for a, b, phase in self._spans:
            out[phase] = out.get(phase, 0.0) + (b - a)
        return out


def _board_alive() -> bool:
    """Is the pool board this thread measures on still there? (True outside a pool)"""
    from ..backends.tvm.pool import pinned

    dev = pinned()
    return dev is None or dev.alive()


def _remote(target: Target) -> bool:
    """Is the target timed on an RPC board (so a device pool can take its jobs)?"""
    return target.config.get("backend") == "tvm" and bool(target.config.get("remote"))
