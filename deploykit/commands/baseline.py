"""`deploykit baseline`: record a model's latency (raw samples, env, per-op) in a file to commit."""

from __future__ import annotations

import argparse
import math
import time
from typing import Any, Mapping

from ..core import TimingPlan
from . import _common

HELP = "record a latency baseline file for `deploykit check` (raw samples, env, per-op)"
DESCRIPTION = """Measure MODEL on a target and write a baseline file meant to be committed next to
it: raw samples in timed blocks, the environment fingerprint, model/artifact ids, input settings
and the per-operator breakdown. `deploykit check` compares later models against it."""

MIN_ROUNDS = 20  # timed blocks (rounds) every gate measurement gets, however fast the model


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help=".onnx file")
    p.add_argument("--output", "-o", required=True, metavar="BASELINE.json",
                   help="baseline file to write (atomically)")
    p.add_argument("--quiet", "-q", action="store_true", help="no table, no progress bar")
    _common.add_target_args(p)
    _common.add_input_args(p)
    add_gate_plan_args(p)
    _common.add_store_arg(p)


def add_gate_plan_args(p: argparse.ArgumentParser) -> None:
    """The profiler's plan options (same names as `_common.add_plan_args`) with gate defaults:
    a tighter CI and a 20 s cap, so that a check of a ~5 ms model stays within a minute."""
    g = p.add_argument_group("timing plan")
    g.add_argument("--rel-ci", type=float, default=0.005,
                   help="stop when each median's 95%% CI is within +/- this (default 0.005)")
    g.add_argument("--max-time", type=float, default=20.0,
                   help="time cap in seconds for the timed phase (default 20)")
    g.add_argument("--min-samples", type=int, default=TimingPlan.min_samples)
    g.add_argument("--warmup-max", type=float, default=TimingPlan.warmup_max_s,
                   help="longest warm-up in seconds (default 5)")


def gate_target(name: str, threads: int | None):
    """The target as the gate measures it: ORT spinning off, so that the old and new sessions
    can share one process without stealing each other's cores (FACTS.md), and baselines are
    measured exactly like checks."""
    from .. import targets

    return targets.get(name, threads=threads, allow_spinning=False)


def load_model(path: str):
    """(ModelRef, inputs, outputs) of an .onnx file, with one-line errors for bad files."""
    from ..core import ModelRef
    from ..errors import InputError
    from ..onnxio import io_specs, load_onnx

    if not str(path).endswith(".onnx"):
        raise InputError(f"{path}: expected an .onnx file (run `deploykit export` first)")
    proto = load_onnx(path, load_external=False)
    inputs, outputs = io_specs(proto)
    return ModelRef.from_path(path), tuple(inputs), tuple(outputs)


def feeds_for(artifact, feeds_cfg: Mapping[str, Any]):
    from ..onnxio import make_feeds

    shapes = {k: tuple(v) for k, v in (feeds_cfg.get("shapes") or {}).items()}
    return make_feeds(list(artifact.inputs), int(feeds_cfg.get("seed", 0)), shapes,
                      feeds_cfg.get("npz"))


def gate_plan(args: argparse.Namespace, runners) -> TimingPlan:
    """The user's plan with enough samples for MIN_ROUNDS blocks of each runner, and blocks short
    enough for 2 x MIN_ROUNDS of them to fit the time cap: the gate's unit of evidence is the
    block, so neither a fast model nor a short cap may end the run after a few blocks."""
    from dataclasses import replace

    plan = _common.plan_from_args(args)
    plan = replace(plan, block_s=min(plan.block_s, max(0.02, plan.max_time_s / (2 * MIN_ROUNDS))))
    est = []
    for fn in runners:
        for _ in range(3):
            fn()
        t0 = time.perf_counter()
        for _ in range(10):
            fn()
        est.append((time.perf_counter() - t0) / 10 * 1e3)
    per_block = plan.block_s / len(runners)
    need = math.ceil(MIN_ROUNDS * per_block * 1e3 / max(min(est), 1e-3))
    return replace(plan, min_samples=max(plan.min_samples, need))


def run(args: argparse.Namespace) -> int:
    from ..regress import make_baseline

    model, inputs, outputs = load_model(args.model)
    target = gate_target(args.target, args.threads)
    art = target.compile(model)
    feeds_cfg = {"seed": args.seed, "shapes": {k: list(v) for k, v in
                                               _common.parse_shapes(args.shape).items()},
                 "npz": args.inputs}
    feeds = feeds_for(art, feeds_cfg)
    plan = gate_plan(args, [art.timed_runner(feeds)])
    report = target.profile(art, feeds, plan, per_op=True, progress=not args.quiet)
    art.close()
    make_baseline(report, inputs, outputs, feeds_cfg, args.output).save(args.output)
    if not args.no_store:
        from ..store import Store

        with Store(_common.store_path(args)) as store:
            store.record_report(report, label="baseline", model=model)
    if not args.quiet:
        from ..display import print_report

        print_report(report, top=5)
        print(f"baseline written to {args.output} ({len(report.samples_ms)} samples in "
              f"{len(report.blocks)} blocks)")
    return 0
