"""`deploykit baseline`: record a model's latency (raw samples, env, per-op) in a file to commit.

Also home of the gate's measurement, shared with `deploykit check`: rounds of fresh sessions.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from statistics import median
from typing import Any, Mapping, Sequence

from ..core import Block, LatencyReport, ModelRef, Target, TimingPlan
from . import _common

HELP = "record a latency baseline file for `deploykit check` (raw samples, env, per-op)"
DESCRIPTION = """Measure MODEL on a target and write a baseline file meant to be committed next to
it: raw samples in timed rounds (a fresh session each), the environment fingerprint, model and
artifact ids, input settings and the per-operator breakdown. `deploykit check` compares later
models against it."""

MIN_ROUNDS = 10  # the gate always measures at least this many rounds, whatever the time cap
ROUND_S = 1.0  # timed seconds per round, shared by the models of an interleaved check
SUB_S = 0.05  # one alternation inside a round: every model runs ~SUB_S / n_models seconds


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help=".onnx file")
    p.add_argument("--output", "-o", required=True, metavar="BASELINE.json",
                   help="baseline file to write (atomically)")
    p.add_argument("--quiet", "-q", action="store_true", help="no table, no progress bar")
    _common.add_target_args(p)
    _common.add_input_args(p)
    add_gate_timing_args(p)
    _common.add_store_arg(p)


def add_gate_timing_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("timing")
    g.add_argument("--max-time", type=float, default=20.0,
                   help="seconds to spend measuring, in rounds of fresh sessions (default 20; "
                        f"at least {MIN_ROUNDS} rounds are always measured)")
    g.add_argument("--warmup-max", type=float, default=0.5,
                   help="longest warm-up of each fresh session in seconds (default 0.5)")


def gate_target(name: str, threads: int | None) -> Target:
    """The target as the gate measures it: ORT spinning off, so that the old and new sessions
    can share one process without stealing each other's cores (FACTS.md), and baselines are
    measured exactly like checks."""
    from .. import targets

    return targets.get(name, threads=threads, allow_spinning=False)


def load_model(path: str):
    """(ModelRef, inputs, outputs) of an .onnx file, with one-line errors for bad files."""
    from ..errors import InputError
    from ..onnxio import io_specs, load_onnx

    if not str(path).endswith(".onnx"):
        raise InputError(f"{path}: expected an .onnx file (run `deploykit export` first)")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="deploykit-intake-") as tmp:
        # checked and normalized like every verb's model; the gate times the file as given, so a
        # baseline stays tied to the file a CI job versions
        _common.take_in(path, tmp)
    proto = load_onnx(path, load_external=False)
    inputs, outputs = io_specs(proto)
    return ModelRef.from_path(path), tuple(inputs), tuple(outputs)


def feeds_for(artifact, feeds_cfg: Mapping[str, Any]):
    from ..onnxio import make_feeds

    shapes = {k: tuple(v) for k, v in (feeds_cfg.get("shapes") or {}).items()}
    return make_feeds(list(artifact.inputs), int(feeds_cfg.get("seed", 0)), shapes,
                      feeds_cfg.get("npz"))


def measure_rounds(target: Target, models: Sequence[ModelRef], feeds_cfg: Mapping[str, Any],
                   max_time: float, warmup_max: float, progress: bool = False
                   ) -> list[LatencyReport]:
    """Time `models` in rounds; each round creates fresh sessions, warms them up and times them
    for `round_s` seconds in short alternating blocks (`measure.compare`), so that the load of a
    shared machine, which changes within a second, hits every model of the round alike.
    Why fresh sessions each round: two ORT sessions of the same model in one process can differ
    persistently by ~7% (measured here with 2 threads: some sessions run like single-threaded
    ones), so one session pair measures the session lottery; with a new pair each round, that
    lottery becomes round-to-round noise, which the gate's rank test on rounds accounts for.
    Returns one report per model with one block per round."""
    import scipy.stats  # noqa: F401  (import now, not inside the first timed round)

    from ..measure import compare

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
        while True:
            arts = [target.compile(m) for m in models]
            feeds = feeds or [feeds_for(a, feeds_cfg) for a in arts]
            rounds.append(compare(arts, feeds, plan).reports)
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
    return [_merge([r[i] for r in rounds], per_op[i]) for i in range(len(models))]


def _progress(enabled: bool, total: float):
    from contextlib import nullcontext

    if not enabled:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("measuring in rounds"), BarColumn(),
                   TextColumn("{task.fields[info]}"), TimeElapsedColumn(), transient=True,
                   console=Console(stderr=True))
    bar.add_task("rounds", total=total, info="")
    return bar


def _merge(parts: Sequence[LatencyReport], per_op) -> LatencyReport:
    """One report from per-round reports: samples concatenated, one block per round (its foreign
    load the time-weighted mean of its alternations)."""
    samples: list[float] = []
    blocks = []
    for r in parts:
        n = len(r.samples_ms)
        load = sum(b.foreign_cpu * b.n for b in r.blocks) / max(1, n)
        blocks.append(Block(len(samples), n, load, load > TimingPlan.contamination_threshold))
        samples += r.samples_ms
    return replace(parts[-1], samples_ms=tuple(samples), blocks=tuple(blocks),
                   stop_reason="time-cap", per_op=tuple(per_op),
                   session_create_ms=median(r.session_create_ms for r in parts),
                   first_inference_ms=median(r.first_inference_ms for r in parts),
                   warmup_samples=sum(r.warmup_samples for r in parts), created=parts[0].created)


def run(args: argparse.Namespace) -> int:
    from ..regress import make_baseline

    model, inputs, outputs = load_model(args.model)
    target = gate_target(args.target, args.threads)
    feeds_cfg = {"seed": args.seed, "shapes": {k: list(v) for k, v in
                                               _common.parse_shapes(args.shape).items()},
                 "npz": args.inputs}
    (report,) = measure_rounds(target, [model], feeds_cfg, args.max_time, args.warmup_max,
                               progress=not args.quiet)
    make_baseline(report, inputs, outputs, feeds_cfg, args.output).save(args.output)
    if not args.no_store:
        from ..store import Store

        with Store(_common.store_path(args)) as store:
            store.record_report(report, label="baseline", model=model)
    if not args.quiet:
        from ..display import print_report

        print_report(report, top=5)
        print(f"baseline written to {args.output} ({len(report.samples_ms)} samples in "
              f"{len(report.blocks)} rounds of fresh sessions)")
    return 0
