"""`deploykit tune`: MetaSchedule tuning for a TVM target, stored per (model, target)."""

from __future__ import annotations

import argparse

HELP = "tune a model for a TVM target with MetaSchedule (database reused by later builds)"
DESCRIPTION = """Tune MODEL's kernels for a TVM target with MetaSchedule, measuring at most --trials
candidates (~7 s each on 2 cores). The database is stored per (model sha256, target) in the user
cache dir (or --db DIR) and applied by every later build of that pair, so tuning is paid once;
tuning again continues from it. Untuned TVM CPU code is ~100x slower than ORT."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help=".onnx file")
    p.add_argument("--target", "-t", default="tvm-x86",
                   help="TVM target name or .toml (default tvm-x86)")
    p.add_argument("--trials", type=int, required=True,
                   help="measured candidates over all kernels (e.g. 8 per kernel)")
    p.add_argument("--per-task", type=int, default=None, metavar="N",
                   help="at most N trials per kernel (default: --trials spread evenly)")
    p.add_argument("--db", metavar="DIR", default=None,
                   help="tuning database folder (default: per-user cache, keyed by model+target); "
                        "pass the same DIR to later builds with a target file's tuning_db")
    p.add_argument("--threads", type=int, default=None, help="threads (default: target's)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from ..backends import registry as targets
    from ..backends.tvm import tune as tvm_tune
    from ..core import ModelRef
    from ..errors import InputError
    from ..onnxio import load_onnx

    load_onnx(args.model)
    target = targets.get(args.target, threads=args.threads, tuning_db=args.db)
    if target.config.get("backend") != "tvm":
        raise InputError(f"tune needs a TVM target (tvm-x86, tvm-cuda); got '{target.name}'")
    model = ModelRef.from_path(args.model)
    if args.quiet:
        res = tvm_tune.tune(model, target, args.trials, args.db, args.per_task)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        with Progress("[progress.description]{task.description}", BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), transient=False) as bar:
            task = bar.add_task(f"tuning {model.path.name} for {target.name}", total=args.trials)
            res = tvm_tune.tune(model, target, args.trials, args.db, args.per_task,
                                on_trials=lambda n, total: bar.update(task, completed=n))
    print(f"tuned {res.tasks} kernel(s) with {res.trials} trial(s) in {res.seconds:.0f} s; "
          f"database {res.db} ({res.records_after} records, {res.records_before} before)")
    print(f"later builds of this model for {target.name} apply it: "
          f"deploykit profile {args.model} --target {args.target}")
    return 0
