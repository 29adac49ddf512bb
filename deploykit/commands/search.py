"""`deploykit search`: find the compression that is really fastest on a target, at a fidelity."""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import replace
from pathlib import Path

from . import _common

HELP = "latency-guided compression search: Pareto front, recommendation, exported model, report"
DESCRIPTION = """Try int8 variants, structured pruning, low-rank, compact filters, their
compositions and target options on MODEL. Fidelity (cosine vs the original outputs, or --eval)
is checked before anything is timed; a per-layer latency table measured on the target predicts
each candidate's latency, only promising candidates are measured whole, and the recommendation
is re-measured interleaved with the original before it is reported. Every measurement is kept in
the results store, so an interrupted search resumes where it stopped. The recommendation runs on
--target's runtime (--runtimes / --any-runtime add others, reported as alternatives); each
runtime's expert int8 recipes are always measured whole. For a torch factory, pruned candidates
below the floor are recovered by distillation (--recover-budget). Exit code 1 when no candidate
meets --budget-ms."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help=".onnx file, or a torch factory file.py:build (exported and verified "
                        "first; its pruned candidates can be recovered by distillation)")
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
    rt = p.add_mutually_exclusive_group()
    rt.add_argument("--runtimes", default=None, metavar="R1,R2",
                    help="also search these runtimes (targets, e.g. ort-cpu,ov-cpu) and report "
                         "each one's best as an alternative; the recommendation stays on "
                         "--target's runtime (default: --target's runtime only)")
    rt.add_argument("--any-runtime", action="store_true",
                    help="--runtimes with every CPU runtime installed here")
    p.add_argument("--recover-budget", default=None, metavar="DURATION",
                   help="distillation time per pruned candidate of a torch source, e.g. 30s, 2m "
                        "(default 60s for a torch factory; 0 turns recovery off)")
    p.add_argument("--recover-final", default=None, metavar="DURATION",
                   help="distillation time of the final pick: the deepest recovered prune still "
                        "below the floor is distilled this much longer, continuing from its short "
                        "recovery, e.g. 5m (default 5x --recover-budget; 0 turns it off)")
    p.add_argument("--no-target-options", action="store_true",
                   help="do not try other thread counts / graph optimisation levels")
    p.add_argument("--no-netadapt", action="store_true",
                   help="do not search per-layer pruning ratios / SVD ranks (NetAdapt loop)")
    p.add_argument("-o", "--out", default="search-out", metavar="OUTDIR",
                   help="where search.json, recommended.onnx and the report go (default search-out)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    _common.add_pool_args(p)
    _common.add_input_args(p)
    _common.add_store_arg(p)


def parse_duration(text: str, option: str = "--time-limit") -> float:
    """'90s', '20m', '1h', '1.5h' or plain seconds -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    from ..errors import InputError

    if not m or float(m.group(1)) <= 0:
        raise InputError(f"bad {option} {text!r}: expected e.g. 90s, 20m or 1h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def run(args: argparse.Namespace) -> int:
    from ..api import prepare_inputs, run_search
    from ..backends import registry as targets
    from ..errors import InputError
    from ..outputs import check_output_dir
    from ..rewrite.calibration import SYNTHETIC_WARNING
    from ..search.build import load_eval
    from ..search.candidates import FAMILIES
    from ..search.engine import SearchConfig

    torch_factory = not args.model.endswith(".onnx")
    if torch_factory and not re.fullmatch(r".+\.py:[A-Za-z_]\w*", args.model):
        raise InputError(f"{args.model}: search takes an .onnx file or a torch factory "
                         "file.py:build")
    if not 0 < args.min_fidelity <= 1.5:
        raise InputError(f"--min-fidelity must be in (0, 1.5], got {args.min_fidelity}")
    if args.budget_ms is not None and args.budget_ms <= 0:
        raise InputError(f"--budget-ms must be positive, got {args.budget_ms}")
    recover_s = (60.0 if torch_factory else 0.0) if args.recover_budget is None else \
        0.0 if args.recover_budget.strip() in ("0", "0s") else \
        parse_duration(args.recover_budget, "--recover-budget")
    from ..search.recover import FINAL_FACTOR

    final_s = FINAL_FACTOR * recover_s if args.recover_final is None else \
        0.0 if args.recover_final.strip() in ("0", "0s") else \
        parse_duration(args.recover_final, "--recover-final")
    cfg = SearchConfig(budget_ms=args.budget_ms, min_fidelity=args.min_fidelity,
                       recover_budget_s=recover_s, recover_final_s=final_s if recover_s else 0.0,
                       time_limit_s=parse_duration(args.time_limit), exhaustive=args.exhaustive,
                       target_options=not args.no_target_options,
                       netadapt=not args.no_netadapt,
                       families=tuple(f.strip() for f in (args.families or "").split(",")
                                      if f.strip()))
    unknown = set(cfg.families) - set(FAMILIES)
    if unknown:  # checked before anything is created under OUTDIR
        raise InputError(f"unknown search families {sorted(unknown)} (known: {', '.join(FAMILIES)})")
    pool = _common.pool_from_args(args)
    if pool is None and (args.device or args.tracker):  # one board: a pool of one
        from ..backends.tvm.pool import PoolConfig

        if not (args.device and args.tracker):
            raise InputError("search on RPC boards needs both --tracker HOST:PORT and "
                             "--device KEY")
        pool = PoolConfig(args.tracker, args.device, 1, **_common.hang_kw(args))
    check_output_dir(args.out, "-o")
    store_checked = _common.check_store(args)
    target = targets.get(args.target, threads=args.threads,
                         **({} if pool is None else {"device": pool.key, "tracker": pool.tracker}))
    if pool is not None:
        from ..backends.tvm.pool import check_target

        check_target(target)
    from ..search.experts import other_runtimes

    if args.any_runtime or args.runtimes:
        names = None if args.any_runtime else [n.strip() for n in args.runtimes.split(",")
                                               if n.strip()]
        cfg = replace(cfg, runtimes=other_runtimes(target, names))
    shapes = _common.parse_shapes(args.shape)
    torch_source = None
    if torch_factory:  # exported (verified vs torch) into OUTDIR/.work; the module kept
        from ..export.exporter import export_module
        from ..search.recover import from_factory

        torch_source = from_factory(args.model, shapes, args.seed)
        source_onnx = Path(args.out) / ".work" / "source.onnx"
        export_module(torch_source.module, torch_source.example, source_onnx)
        args.model = str(source_onnx)
    elif args.recover_budget is not None and recover_s > 0:
        from ..search.recover import UNAVAILABLE_ONNX

        print(f"deploykit: note: {UNAVAILABLE_ONNX}", file=sys.stderr)
    _, feeds, calib, synthetic = prepare_inputs(args.model, seed=args.seed, shapes=shapes,
                                                inputs=args.inputs,
                                                calibration=args.calib or None)
    if synthetic:
        print(SYNTHETIC_WARNING, file=sys.stderr)
    eval_fn = load_eval(args.eval) if args.eval else None
    out = Path(args.out)
    from ..rewrite import quantize_static

    # the search's int8 candidates are per-channel QDQ: intake upgrades old opsets up front
    _, source = _common.take_in(args.model, out / ".work" / "intake",
                                quantize_static.min_opset(quantize_static.Config()), feeds)
    store_file = out / ".work" / "results.sqlite" if store_checked is None else store_checked
    result, paths = run_search(source.path, args.target, cfg, out, store_file, feeds=feeds,
                               calibration=calib, synthetic=synthetic, eval_fn=eval_fn,
                               progress=not args.quiet, threads=args.threads,
                               torch_source=torch_source, pool=pool)
    from ..report.search_text import summary_lines

    for line in summary_lines(result.to_dict()):
        print(line)
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    if result.infeasible:
        print(f"deploykit: {result.infeasible}", file=sys.stderr)
        return 1
    return 0
