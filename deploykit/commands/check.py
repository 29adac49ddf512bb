"""`deploykit check`: the CI latency gate. Exit 0 pass, 1 regression, 2 usage or input error."""

from __future__ import annotations

import argparse

from . import _common
from .baseline import add_gate_timing_args, check_gate_timing

HELP = "CI latency gate: is MODEL significantly slower than the baseline? (exit 1 if so)"
DESCRIPTION = """Compare MODEL with a baseline file. When the old model is at hand (--against, or
the model file the baseline points to, unchanged), both are measured in interleaved rounds (fresh
sessions each round) in this run, and the ratio of medians gets a rank-based confidence interval
from the per-round ratios (robust on a noisy machine). Otherwise the new run is compared with the
stored samples, which requires the same CPU, threads and backend versions (or
--allow-env-change). A regression needs both size and significance: the interval lies above 1,
asv's Mann-Whitney test on raw samples agrees, and the slowdown reaches the threshold.
Stored mode refuses (exit 2) when either side is a contaminated measurement (other processes
used the cores while it ran): there is nothing in the same run to cancel the load. Interleaved
mode drops rounds with foreign load when enough clean ones remain and reports the share.
Exit codes: 0 pass, 1 regression, 2 usage or input error."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="the new .onnx file")
    p.add_argument("--baseline", "-b", required=True, metavar="BASELINE.json",
                   help="file written by `deploykit baseline`")
    p.add_argument("--max-slowdown", default="5%",
                   help="threshold: slowdowns smaller than this pass (default 5%%)")
    p.add_argument("--max-memory-increase", default="10%",
                   help="threshold of the memory gate on peak steady memory over the fresh "
                        "process (default 10%%)")
    p.add_argument("--max-cold-start-increase", default="20%",
                   help="threshold of the cold-start gate on session creation + first "
                        "inference (default 20%%)")
    p.add_argument("--against", metavar="OLD_MODEL",
                   help="old .onnx to measure interleaved with MODEL (default: the baseline's "
                        "model file, if it is still there unchanged)")
    p.add_argument("--allow-env-change", action="store_true",
                   help="compare with stored samples even if CPU/threads/backend versions differ")
    p.add_argument("--junit", metavar="FILE", help="write a JUnit XML report")
    p.add_argument("--markdown", metavar="FILE", help="write a Markdown summary (PR comment)")
    p.add_argument("--json", metavar="FILE", help="write the verdict with both reports (JSON)")
    p.add_argument("--update-baseline", action="store_true",
                   help="overwrite the baseline with this run's measurement of MODEL")
    p.add_argument("--top", type=int, default=8, help="rows of the per-op diff (default 8)")
    p.add_argument("--quiet", "-q", action="store_true", help="no table, no progress bar")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads (default: the baseline's)")
    p.add_argument("--device", help="ssh://USER@HOST[:PORT][/DIR] or adb://SERIAL[/DIR]: "
                   "package both models as ORT bundles, self-test them on the device and time "
                   "them there in interleaved rounds (needs the old model: --against); or, "
                   "with --tracker, an RPC device key: both models on one board of that key (on "
                   "each of --parallel N boards)")
    p.add_argument("--tracker", metavar="HOST:PORT",
                   help="RPC tracker of the boards (remote TVM targets, with --device KEY)")
    _common.add_pool_args(p, device=False)
    add_gate_timing_args(p)
    _common.add_honesty_args(p, strict=False)
    _common.add_store_arg(p)


def run(args: argparse.Namespace) -> int:
    from ..gate.baseline import checked, make_baseline
    from ..gate.decision import parse_threshold
    from ..gatecheck import CheckSpec, run_check
    from ..outputs import Outputs, check_distinct, check_output_file

    for t in (args.max_slowdown, args.max_memory_increase, args.max_cold_start_increase):
        parse_threshold(t)  # a bad threshold is refused before any output is looked at
    check_output_file(args.json, "--json")
    check_output_file(args.junit, "--junit")
    check_output_file(args.markdown, "--markdown")
    check_distinct(**{"--json": args.json, "--junit": args.junit, "--markdown": args.markdown,
                      "--baseline (with --update-baseline)":
                          args.baseline if args.update_baseline else None})
    if args.update_baseline:
        check_output_file(args.baseline, "--baseline")
    check_gate_timing(args)
    store_file = _common.check_store(args)
    spec = CheckSpec(model=args.model, baseline=args.baseline, against=args.against,
                     max_slowdown=args.max_slowdown,
                     max_memory_increase=args.max_memory_increase,
                     max_cold_start_increase=args.max_cold_start_increase,
                     max_time=args.max_time, warmup_max=args.warmup_max, threads=args.threads,
                     memory_runs=args.memory_runs, wait_quiet=_common.wait_quiet(args),
                     device=args.device, tracker=args.tracker, parallel=args.parallel,
                     device_timeout=args.device_timeout,
                     allow_env_change=args.allow_env_change, top=args.top,
                     progress=not args.quiet)
    out = run_check(spec)
    result, old_rep, new_rep = out.result, out.old_report, out.new_report
    with Outputs() as outs:
        _write_outputs(outs, args, result, old_rep, new_rep)
        if args.update_baseline:
            outs.json(args.baseline, checked(make_baseline(new_rep, out.inputs, out.outputs,
                                                            out.baseline.feeds,
                                                            args.baseline)).to_dict())
        if store_file is not None:
            from ..store import Store

            with Store(store_file) as store:
                store.record_report(new_rep, label=f"check:{result['status']}", model=out.model)
        outs.commit()
    if not args.quiet:
        _print(result, args)
    return 1 if out.failed else 0


def _write_outputs(outs, args, result: dict, old_rep, new_rep) -> None:
    from ..gate.render import junit_xml, markdown

    if args.json:
        outs.json(args.json, dict(result, old_report=old_rep.to_dict(),
                                  new_report=new_rep.to_dict()))
    if args.junit:
        outs.text(args.junit, junit_xml(result))
    if args.markdown:
        outs.text(args.markdown, markdown(result))


def _print(r: dict, args) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..gate.render import fmt_ms, rows

    console = Console()
    if not console.is_terminal:  # CI logs are not 80 columns wide: do not truncate
        console = Console(width=120)
    style = {"regression": "bold red", "improvement": "bold green"}.get(r["status"], "bold")
    t = Table(title=f"deploykit check: {args.model} vs {args.baseline}", show_header=False)
    t.add_column("", style="bold")
    t.add_column("")
    for k, v in rows(r):
        t.add_row(k, f"[{style}]{v}[/{style}]" if k == "verdict" else v)
    console.print(t)
    if r["per_op_diff"]:
        ops = Table(title="per-operator diff (ms per inference, largest increase first)")
        for c in ("node", "op type", "old", "new", "Δ"):
            ops.add_column(c, justify="left" if c in ("node", "op type") else "right")
        for o in r["per_op_diff"]:
            ops.add_row(o["name"][-50:], o["op_type"], fmt_ms(o["old_ms"]), fmt_ms(o["new_ms"]),
                        f"{o['delta_ms']:+.3f}")
        console.print(ops)
