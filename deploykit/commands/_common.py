"""Options shared by several verbs, so every command spells them the same way."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core import TimingPlan
from ..errors import InputError
from ..store_backends import StoreLocation, parse_location


def add_target_args(p: argparse.ArgumentParser, default: str = "ort-cpu") -> None:
    p.add_argument("--target", "-t", default=default,
                   help=f"target name from `deploykit targets` or a .toml path (default {default})")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: target's)")


def add_pool_args(p: argparse.ArgumentParser, device: bool = True) -> None:
    """--tracker/--device/--parallel: measure on a pool of TVM RPC boards of one key
    (backends/tvm/pool.py); `device=False` where the verb already has its own --device."""
    if device:
        p.add_argument("--device", metavar="KEY",
                       help="RPC device key of the boards (TVM targets, with --tracker)")
        p.add_argument("--tracker", metavar="HOST:PORT", help="RPC tracker (remote targets)")
    p.add_argument("--parallel", type=int, default=None, metavar="N",
                   help="measure on up to N boards of --device KEY at once, each holding one "
                        "board from --tracker; search's confirmation and check interleave both "
                        "models on each board, for its share of the time, and pool the rounds "
                        "(profile --compare stays on one board)")
    p.add_argument("--device-timeout", type=float, default=None, metavar="SECONDS",
                   help="a board silent for the measurement's time budget plus SECONDS "
                        "(default 60) counts as hung: cut off, its job retried on another")


def pool_from_args(args: argparse.Namespace):
    """The PoolConfig of --tracker/--device/--parallel, or None without --parallel."""
    from ..backends.tvm.pool import pool_config

    return pool_config(args.tracker, args.device, args.parallel, hang_kw(args).get("hang_s"))


def hang_kw(args: argparse.Namespace) -> dict:
    """PoolConfig's keyword for --device-timeout (nothing when not given: its default)."""
    t = getattr(args, "device_timeout", None)
    return {} if t is None else {"hang_s": t}


def add_store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=None,
                   help="results database (default $DEPLOYKIT_STORE or the per-user data dir)")
    p.add_argument("--no-store", action="store_true", help="do not record this run")


def add_input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--inputs", default=None, metavar="NPZ",
                   help=".npz with one array per model input (default: seeded random tensors)")
    p.add_argument("--shape", action="append", default=[], metavar="NAME=D0,D1,...",
                   help="concrete shape for an input with symbolic dims (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed for random inputs (default 0)")


def add_plan_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("timing plan")
    g.add_argument("--rel-ci", type=float, default=TimingPlan.target_rel_ci,
                   help="stop when the 95%% CI of the median is within +/- this (default 0.01)")
    g.add_argument("--max-time", type=float, default=TimingPlan.max_time_s,
                   help="time cap in seconds for the timed phase (default 30)")
    g.add_argument("--min-samples", type=int, default=TimingPlan.min_samples)
    g.add_argument("--warmup-max", type=float, default=TimingPlan.warmup_max_s,
                   help="longest warm-up in seconds (default 5)")


def add_honesty_args(p: argparse.ArgumentParser, strict: bool = True) -> None:
    """--strict / --no-strict (exit 3 when the measurement is not clean) and --wait-quiet."""
    g = p.add_argument_group("measuring on a shared machine")
    g.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="pause while other processes load the CPU, discard timed blocks that "
                        "overlapped their load, give up after SECONDS (default 0: off)")
    if not strict:
        return
    g.add_argument("--strict", action=argparse.BooleanOptionalAction, default=None,
                   help="exit 3 when the measurement is not clean (contaminated by other "
                        "processes' load, or unstable); outputs are still written. Default: on "
                        "when CI=true, else off")


def strict(args: argparse.Namespace) -> bool:
    from ..validity import strict_default

    return strict_default() if args.strict is None else bool(args.strict)


def not_clean_exit(args: argparse.Namespace, validities: dict) -> int:
    """0, or validity.EXIT_NOT_CLEAN (one line on stderr) under --strict when a measurement is
    not clean."""
    import sys

    from ..validity import EXIT_NOT_CLEAN

    bad = {k: v for k, v in validities.items() if not v.clean}
    if not bad or not strict(args):
        return 0
    what = "; ".join(f"{k}: {v.state}: {v.reason}" for k, v in bad.items())
    print(f"deploykit: not a clean measurement (--strict, exit {EXIT_NOT_CLEAN}): {what}. "
          "Run on a quiet machine, pass --wait-quiet SECONDS, or see `deploykit doctor`",
          file=sys.stderr)
    return EXIT_NOT_CLEAN


def plan_from_args(args: argparse.Namespace) -> TimingPlan:
    if not 0 < args.rel_ci < 1:
        raise InputError(f"--rel-ci must be in (0, 1), got {args.rel_ci}")
    if args.max_time <= 0:
        raise InputError(f"--max-time must be positive, got {args.max_time}")
    if args.min_samples < 1:
        raise InputError(f"--min-samples must be >= 1, got {args.min_samples}")
    if args.warmup_max < 0:
        raise InputError(f"--warmup-max must be >= 0, got {args.warmup_max}")
    if getattr(args, "threads", None) is not None and args.threads < 1:
        raise InputError(f"--threads must be >= 1, got {args.threads}")
    return TimingPlan(target_rel_ci=args.rel_ci, max_time_s=args.max_time,
                      min_samples=args.min_samples, warmup_max_s=args.warmup_max,
                      wait_quiet_s=wait_quiet(args))


def wait_quiet(args: argparse.Namespace) -> float:
    wait = getattr(args, "wait_quiet", 0.0) or 0.0
    if not wait >= 0 or wait == float("inf"):
        raise InputError(f"--wait-quiet must be a finite number of seconds >= 0, got {wait}")
    return float(wait)


def parse_shapes(items: list[str]) -> dict[str, tuple[int, ...]]:
    """["x=1,3,224,224"] -> {"x": (1, 3, 224, 224)}."""
    shapes = {}
    for item in items:
        name, sep, dims = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            shape = tuple(int(d) for d in dims.split(","))
            if any(d <= 0 for d in shape):
                raise ValueError
        except ValueError:
            raise InputError(f"bad --shape {item!r}: expected NAME=D0,D1,... with positive ints")
        from ..onnxio import check_size

        check_size(shape, f"--shape {item}")
        shapes[name] = shape
    return shapes


def store_path(args: argparse.Namespace) -> StoreLocation:
    """--store, else $DEPLOYKIT_STORE, else the per-user SQLite file; a file path or a
    postgresql:// URL (anything else is refused here). Printing it masks any password."""
    if getattr(args, "store", None) is not None:  # an empty --store "" is refused, not ignored
        return parse_location(args.store)
    from ..store import default_store_path

    return default_store_path()


def check_store(args: argparse.Namespace) -> StoreLocation | None:
    """The store this command will record in, checked now, before any expensive work (an SQLite
    file read-only; a server by connecting); None with --no-store."""
    if getattr(args, "no_store", False):
        return None
    loc = store_path(args)
    if loc.path is not None:
        from ..store import SCHEMA_VERSION
        from ..store_open import check_store as check

        check(loc.path, SCHEMA_VERSION)
    else:
        from ..store import Store

        Store(loc).close()  # the server answers and holds a deploykit schema it understands
    return loc


def take_in(path: str | Path, workdir: str | Path, need=None, feeds=None,
            name: str = "00-intake.onnx"):
    """Run model intake (deploykit.intake) and print its notes on stderr; returns
    (IntakeResult, ModelRef of the model later stages read, with its lineage to the file given)."""
    import sys

    from ..core import ModelRef
    from ..intake import intake

    Path(workdir).mkdir(parents=True, exist_ok=True)
    taken = intake(path, workdir, need=need, feeds=feeds, name=name)
    for note in taken.notes:
        print(note, file=sys.stderr)
    if not taken.changed:
        return taken, ModelRef.from_path(path)
    return taken, ModelRef.from_path(taken.path, parent_sha256=ModelRef.from_path(path).sha256,
                                     transform="intake", config=dict(taken.details))
