"""`deploykit search`: find the compression that is really fastest on a target, at a fidelity."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from . import _common

HELP = "latency-guided compression search: Pareto front, recommendation, exported model, report"
DESCRIPTION = """Try int8 variants, structured pruning, low-rank, compact filters, their
compositions and target options on MODEL. Fidelity (cosine vs the original outputs, or --eval)
is checked before anything is timed; a per-layer latency table measured on the target predicts
each candidate's latency, only promising candidates are measured whole, and the recommendation
is re-measured interleaved with the original before it is reported. Every measurement is kept in
the results store, so an interrupted search resumes where it stopped. Exit code 1 when no
candidate meets --budget-ms."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help=".onnx file")
    _common.add_target_args(p)
    goal = p.add_mutually_exclusive_group()
    goal.add_argument("--budget-ms", type=float, default=None,
                      help="latency budget: the most faithful candidate within it wins")
    goal.add_argument("--max-speed", action="store_true",
                      help="the fastest candidate at --min-fidelity wins (the default)")
    p.add_argument("--min-fidelity", type=float, default=0.99,
                   help="least output cosine vs the original, or with --eval the least metric "
                        "relative to the original's (default 0.99)")
    p.add_argument("--eval", metavar="MODULE.py:FN", default=None,
                   help="FN(onnx_path) -> float, higher is better (e.g. accuracy on real data)")
    p.add_argument("--calib", metavar="DATA", default=None,
                   help="calibration data for static int8: .npz or a folder of .npz "
                        "(default: seeded synthetic data, with a warning)")
    p.add_argument("--time-limit", default="20m", metavar="DURATION",
                   help="stop exploring after this long, e.g. 90s, 20m, 1h (default 20m)")
    p.add_argument("--exhaustive", action="store_true",
                   help="measure every candidate whole (slow; shows how good the predictor is)")
    p.add_argument("--families", default=None, metavar="F1,F2",
                   help="only these families and their compositions: int8, prune, lowrank, "
                        "tucker, compact (default: all)")
    p.add_argument("--no-target-options", action="store_true",
                   help="do not try other thread counts / graph optimisation levels")
    p.add_argument("--no-netadapt", action="store_true",
                   help="do not search per-layer pruning ratios / SVD ranks (NetAdapt loop)")
    p.add_argument("-o", "--out", default="search-out", metavar="OUTDIR",
                   help="where search.json, recommended.onnx and the report go (default search-out)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    _common.add_input_args(p)
    _common.add_store_arg(p)


def parse_duration(text: str) -> float:
    """'90s', '20m', '1h', '1.5h' or plain seconds -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    from ..errors import InputError

    if not m or float(m.group(1)) <= 0:
        raise InputError(f"bad --time-limit {text!r}: expected e.g. 90s, 20m or 1h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def run(args: argparse.Namespace) -> int:
    from ..calibration import SYNTHETIC_WARNING, load_calibration, synthetic_calibration
    from ..errors import InputError
    from ..onnxio import io_specs, load_onnx, make_feeds
    from .. import targets
    from ..search import Search, SearchConfig, load_eval, write_outputs
    from ..search_space import FAMILIES
    from ..store import Store

    if not args.model.endswith(".onnx"):
        raise InputError(f"{args.model}: search takes an .onnx file (run `deploykit export` first)")
    if not 0 < args.min_fidelity <= 1.5:
        raise InputError(f"--min-fidelity must be in (0, 1.5], got {args.min_fidelity}")
    if args.budget_ms is not None and args.budget_ms <= 0:
        raise InputError(f"--budget-ms must be positive, got {args.budget_ms}")
    cfg = SearchConfig(budget_ms=args.budget_ms, min_fidelity=args.min_fidelity,
                       time_limit_s=parse_duration(args.time_limit), exhaustive=args.exhaustive,
                       target_options=not args.no_target_options,
                       netadapt=not args.no_netadapt,
                       families=tuple(f.strip() for f in (args.families or "").split(",")
                                      if f.strip()))
    unknown = set(cfg.families) - set(FAMILIES)
    if unknown:  # checked before anything is created under OUTDIR
        raise InputError(f"unknown search families {sorted(unknown)} (known: {', '.join(FAMILIES)})")
    targets.get(args.target, threads=args.threads)
    model = load_onnx(args.model)
    specs, _ = io_specs(model)
    shapes = _common.parse_shapes(args.shape)
    feeds = make_feeds(specs, args.seed, shapes, args.inputs)
    if args.calib:
        calib, synthetic = load_calibration(specs, args.calib), False
    else:
        calib, synthetic = synthetic_calibration(specs, seed=args.seed + 1, overrides=shapes), True
        print(SYNTHETIC_WARNING, file=sys.stderr)
    eval_fn = load_eval(args.eval) if args.eval else None
    out = Path(args.out)
    from ..rewrite import quantize_static

    # the search's int8 candidates are per-channel QDQ: intake upgrades old opsets up front
    _, source = _common.take_in(args.model, out / ".work" / "intake",
                                quantize_static.min_opset(quantize_static.Config()), feeds)
    store_file = out / ".work" / "results.sqlite" if args.no_store else _common.store_path(args)
    with Store(store_file) as store:
        search = Search(Path(source.path), args.target, cfg, out, store, feeds=feeds,
                        calibration=calib, calibration_is_synthetic=synthetic, eval_fn=eval_fn,
                        progress=not args.quiet, threads=args.threads)
        result = search.run()
    paths = write_outputs(result, out)
    from ..report import summary_lines

    for line in summary_lines(result.to_dict()):
        print(line)
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    if result.infeasible:
        print(f"deploykit: {result.infeasible}", file=sys.stderr)
        return 1
    return 0
