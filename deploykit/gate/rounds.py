"""The gate's measurement, shared by `deploykit baseline` and `deploykit check`: rounds of fresh
sessions, each timing every model in short alternating blocks."""

from __future__ import annotations

import time
from dataclasses import replace
from statistics import median
from typing import Any, Mapping, Sequence

from ..backends.base import Target
from ..core import Block, LatencyReport, ModelRef, TimingPlan

MIN_ROUNDS = 10  # the gate always measures at least this many rounds, whatever the time cap
ROUND_S = 1.0  # timed seconds per round, shared by the models of an interleaved check
SUB_S = 0.05  # one alternation inside a round: every model runs ~SUB_S / n_models seconds


def gate_target(name: str, threads: int | None, **overrides) -> Target:
    """The target as the gate measures it: ORT spinning off, so that the old and new sessions
    can share one process without stealing each other's cores (FACTS.md), and baselines are
    measured exactly like checks. `overrides`: e.g. an RPC board's device key and tracker."""
    from ..backends import registry as targets

    return targets.get(name, threads=threads, allow_spinning=False, **overrides)


def load_model(path: str):
    """(ModelRef, inputs, outputs) of an .onnx file, with one-line errors for bad files."""
    from ..errors import InputError
    from ..onnxio import check_feedable, io_specs, load_onnx

    if not str(path).endswith(".onnx"):
        raise InputError(f"{path}: expected an .onnx file (run `deploykit export` first)")
    import sys
    import tempfile

    from ..intake import intake

    with tempfile.TemporaryDirectory(prefix="deploykit-intake-") as tmp:
        # checked and normalized like every verb's model; the gate times the file as given, so a
        # baseline stays tied to the file a CI job versions
        for note in intake(path, tmp).notes:
            print(note, file=sys.stderr)
    proto = load_onnx(path, load_external=False)
    inputs, outputs = io_specs(proto)
    check_feedable(inputs, path)
    return ModelRef.from_path(path), tuple(inputs), tuple(outputs)


def feeds_for(artifact, feeds_cfg: Mapping[str, Any]):
    from ..onnxio import make_feeds

    shapes = {k: tuple(v) for k, v in (feeds_cfg.get("shapes") or {}).items()}
    return make_feeds(list(artifact.inputs), int(feeds_cfg.get("seed", 0)), shapes,
                      feeds_cfg.get("npz"))


def measure_rounds(target: Target, models: Sequence[ModelRef], feeds_cfg: Mapping[str, Any],
                   max_time: float, warmup_max: float, progress: bool = False,
                   wait_quiet: float = 0.0) -> list[LatencyReport]:
    """Time `models` in rounds; each round creates fresh sessions, warms them up and times them
    for `round_s` seconds in short alternating blocks (`measure.compare`), so that the load of a
    shared machine, which changes within a second, hits every model of the round alike.
    Why fresh sessions each round: two ORT sessions of the same model in one process can differ
    persistently by ~7% (measured here with 2 threads: some sessions run like single-threaded
    ones), so one session pair measures the session lottery; with a new pair each round, that
    lottery becomes round-to-round noise, which the gate's rank test on rounds accounts for.
    With `wait_quiet` > 0 a round that overlapped foreign load is discarded and the next one
    waits for quiet (measure.timing.QuietWaiter), up to `wait_quiet` seconds in all.
    Returns one report per model with one block per round."""
    import scipy.stats  # noqa: F401  (import now, not inside the first timed round)

    from ..measure import timing
    from ..measure.timing import compare

    if max_time <= 0 or warmup_max <= 0:
        from ..errors import InputError

        raise InputError("--max-time and --warmup-max must be positive")
    round_s = min(ROUND_S, max(2 * SUB_S, max_time / (2 * MIN_ROUNDS)))  # short caps: shorter
    plan = TimingPlan(warmup_min_s=0.05, warmup_max_s=warmup_max, block_s=SUB_S,
                      max_time_s=round_s, min_samples=10**9)  # a round ends at its time cap
    rounds: list[tuple[LatencyReport, ...]] = []
    feeds = None
    t0 = time.perf_counter()
    with _progress(progress, max_time) as bar:
        waiter = None
        if wait_quiet > 0:
            def status(text: str) -> None:
                if bar:
                    bar.update(bar.task_ids[0], info=text)

            waiter = timing.QuietWaiter(timing.make_load_monitor(),
                                        replace(plan, wait_quiet_s=wait_quiet), status,
                                        timing.warn_user)
            waiter.wait("before the first round")
        while True:
            # compile in rotating order: a session created after another one may start faster
            # or slower (allocator state), which must not favour one model's cold start
            k = len(rounds) % len(models)
            arts = [None] * len(models)
            for i in list(range(k, len(models))) + list(range(k)):
                arts[i] = target.compile(models[i])
            feeds = feeds or [feeds_for(a, feeds_cfg) for a in arts]
            t_round = time.perf_counter()
            rounds.append(compare(arts, feeds, plan).reports)
            if waiter and waiter.active and any(_round_load(r) > plan.contamination_threshold
                                                for r in rounds[-1]):
                rounds.pop()
                for a in arts:
                    a.close()
                waiter.charge(time.perf_counter() - t_round)
                waiter.wait("the last round overlapped foreign load")
                continue
            elapsed = time.perf_counter() - t0
            if bar:
                bar.update(bar.task_ids[0], completed=min(elapsed, max_time),
                           info=f"{len(rounds)} rounds")
            done = elapsed >= max_time and len(rounds) >= MIN_ROUNDS
            if done:  # the breakdown comes from the last round's sessions
                per_op = [a.per_op(f) for a, f in zip(arts, feeds)]
            for a in arts:
                a.close()
            if done:
                break
    merged = [_merge([r[i] for r in rounds], per_op[i]) for i in range(len(models))]
    if waiter:
        merged = [replace(m, discarded_blocks=waiter.discarded, quiet_wait_s=waiter.spent_s)
                  for m in merged]
    return merged


def _round_load(r: LatencyReport) -> float:
    """Foreign load of one round: the time-weighted mean of its alternations."""
    return sum(b.foreign_cpu * b.n for b in r.blocks) / max(1, len(r.samples_ms))


def _progress(enabled: bool, total: float):
    from ..progress import progress_bar

    bar = progress_bar(enabled, "measuring in rounds")
    if bar is not None and enabled:
        bar.add_task("rounds", total=total, info="")
    return bar


def _merge(parts: Sequence[LatencyReport], per_op) -> LatencyReport:
    """One report from per-round reports: samples concatenated, one block per round (its foreign
    load the time-weighted mean of its alternations)."""
    samples: list[float] = []
    blocks = []
    for r in parts:
        n = len(r.samples_ms)
        load = _round_load(r)
        blocks.append(Block(len(samples), n, load, load > TimingPlan.contamination_threshold))
        samples += r.samples_ms
    return replace(parts[-1], samples_ms=tuple(samples), blocks=tuple(blocks),
                   stop_reason="time-cap", per_op=tuple(per_op),
                   session_create_ms=median(r.session_create_ms for r in parts),
                   first_inference_ms=median(r.first_inference_ms for r in parts),
                   warmup_samples=sum(r.warmup_samples for r in parts), created=parts[0].created,
                   warmup_ms=sum(r.warmup_ms for r in parts),
                   # the first round pays the process's one-time costs: not a cold start of
                   # the model (kept when it is the only round)
                   cold_start_samples_ms=tuple(c for r in (parts[1:] or parts)
                                               for c in r.cold_start_samples_ms))
