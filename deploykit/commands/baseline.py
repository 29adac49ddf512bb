"""`deploykit baseline`: record a model's latency (raw samples, env, per-op) in a file to commit."""

from __future__ import annotations

import argparse
from . import _common

HELP = "record a latency baseline file for `deploykit check` (raw samples, env, per-op)"
DESCRIPTION = """Measure MODEL on a target and write a baseline file meant to be committed next to
it: raw samples in timed rounds (a fresh session each), the environment fingerprint, model and
artifact ids, input settings and the per-operator breakdown. `deploykit check` compares later
models against it. The file records the measurement's state (clean / contaminated / unstable):
`deploykit check` refuses to compare stored samples with a contaminated baseline, and with
--strict (on by default when CI=true) a baseline that is not clean exits 3 (it is still written).
Exit codes: 0 done, 2 usage or input error, 3 not a clean measurement (--strict)."""



def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help=".onnx file")
    p.add_argument("--output", "-o", required=True, metavar="BASELINE.json",
                   help="baseline file to write (atomically)")
    p.add_argument("--quiet", "-q", action="store_true", help="no table, no progress bar")
    _common.add_target_args(p)
    p.add_argument("--device", metavar="KEY", help="RPC device key (remote TVM targets, with "
                   "--tracker): recorded on one board of that key")
    p.add_argument("--tracker", metavar="HOST:PORT", help="RPC tracker of the boards")
    _common.add_input_args(p)
    add_gate_timing_args(p)
    _common.add_honesty_args(p)
    _common.add_store_arg(p)


def add_gate_timing_args(p: argparse.ArgumentParser) -> None:
    from ..gate.rounds import MIN_ROUNDS

    g = p.add_argument_group("timing")
    g.add_argument("--max-time", type=float, default=20.0,
                   help="seconds to spend measuring, in rounds of fresh sessions (default 20; "
                        f"at least {MIN_ROUNDS} rounds are always measured)")
    g.add_argument("--warmup-max", type=float, default=0.5,
                   help="longest warm-up of each fresh session in seconds (default 0.5)")
    g.add_argument("--memory-runs", type=int, default=3,
                   help="fresh-process peak-memory measurements per model (default 3; 0: no "
                        "memory measurement, so the memory gate has no data)")


def check_gate_timing(args: argparse.Namespace) -> None:
    import math

    from ..errors import InputError

    if not (math.isfinite(args.max_time) and args.max_time > 0):
        raise InputError(f"--max-time must be a positive number of seconds, got {args.max_time}")
    if not (math.isfinite(args.warmup_max) and args.warmup_max >= 0):
        raise InputError(f"--warmup-max must be >= 0 seconds, got {args.warmup_max}")
    if args.memory_runs < 0:
        raise InputError(f"--memory-runs must be >= 0, got {args.memory_runs}")
    if getattr(args, "threads", None) is not None and args.threads < 1:
        raise InputError(f"--threads must be >= 1, got {args.threads}")


def run(args: argparse.Namespace) -> int:
    from ..onnxio import make_feeds
    from ..outputs import Outputs, check_output_file
    from ..gate.baseline import checked, make_baseline
    from ..errors import InputError
    from ..gate.rounds import gate_target, load_model, measure_rounds

    check_output_file(args.output, "-o")
    check_gate_timing(args)
    store_file = _common.check_store(args)
    model, inputs, outputs = load_model(args.model)
    shapes = _common.parse_shapes(args.shape)
    make_feeds(list(inputs), args.seed, shapes, args.inputs)  # bad --inputs/--shape: now
    pool = None
    if args.device or args.tracker:
        from ..backends.tvm.pool import PoolConfig, check_target

        if not (args.device and args.tracker):
            raise InputError("a baseline on an RPC board needs --device KEY and --tracker "
                             "HOST:PORT")
        pool = PoolConfig(args.tracker, args.device, 1)
    target = gate_target(args.target, args.threads,
                         **({} if pool is None else {"device": pool.key, "tracker": pool.tracker}))
    if pool is not None:
        check_target(target)
    feeds_cfg = {"seed": args.seed, "shapes": {k: list(v) for k, v in shapes.items()},
                 "npz": args.inputs}

    def measure():
        return measure_rounds(target, [model], feeds_cfg, args.max_time, args.warmup_max,
                              progress=not args.quiet, wait_quiet=_common.wait_quiet(args))

    if pool is None:
        (report,) = measure()
    else:  # one board, held for all rounds (backends/tvm/pool.py)
        from ..backends.tvm.pool import DevicePool

        with DevicePool(pool, budget_s=args.max_time + args.warmup_max) as board:
            (report,) = board.run(measure)
    if args.memory_runs and pool is None:  # fresh processes here would not measure the board
        from dataclasses import replace

        from ..gate.memory_probe import measure_memory
        from ..gate.resources import with_memory_runs

        (runs,) = measure_memory(args.target, args.threads, [str(model.path)], feeds_cfg,
                                 args.memory_runs)
        report = replace(report, memory=with_memory_runs(runs))
    with Outputs() as outs:
        baseline = checked(make_baseline(  # what check could not read is not written
            report, inputs, outputs, feeds_cfg, args.output))
        outs.json(args.output, baseline.to_dict())
        if store_file is not None:
            from ..store import Store

            with Store(store_file) as store:
                store.record_report(report, label="baseline", model=model)
        outs.commit()
    if not args.quiet:
        from ..report.terminal import print_report

        print_report(report, top=5)
        print(f"baseline written to {args.output} ({len(report.samples_ms)} samples in "
              f"{len(report.blocks)} rounds of fresh sessions; {report.validity.state})")
    return _common.not_clean_exit(args, {args.output: report.validity})
