"""`deploykit check`: the CI latency gate. Exit 0 pass, 1 regression, 2 usage or input error."""

from __future__ import annotations

import argparse
import time

from . import _common
from .baseline import add_gate_timing_args, check_gate_timing
from ..gate.rounds import gate_target, load_model, measure_rounds

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
                   "them there in interleaved rounds (needs the old model: --against)")
    add_gate_timing_args(p)
    _common.add_honesty_args(p, strict=False)
    _common.add_store_arg(p)


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..gate.baseline import BaselineError, checked, load_baseline, make_baseline
    from ..gate.decision import (decide, env_differences, interleaved_estimate, parse_threshold,
                                 per_op_diff, refuse_contaminated, stored_estimate)
    from ..gate.resources import cold_start_verdict
    from ..validity import summary_dict

    from ..outputs import Outputs, check_distinct, check_output_file

    t_start = time.perf_counter()
    threshold = parse_threshold(args.max_slowdown)
    mem_threshold = parse_threshold(args.max_memory_increase)
    cold_threshold = parse_threshold(args.max_cold_start_increase)
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
    base = load_baseline(args.baseline)
    model, inputs, outputs = load_model(args.model)
    why = base.signature_mismatch(inputs, outputs)
    if why:
        raise BaselineError(f"baseline {args.baseline} is for a different model ({why}); pass "
                            f"this model's baseline, or record one with `deploykit baseline "
                            f"{args.model} --target {base.report.target} -o {args.baseline}`")
    if args.against:
        old_model, old_in, old_out = load_model(args.against)
        if (old_in, old_out) != (inputs, outputs):
            raise InputError(f"--against {args.against} has other inputs/outputs than {args.model}")
    else:
        old_path = base.model_file()
        old_model = None
        if old_path is not None and base.report.model_sha256 != model.sha256:
            old_model = load_model(str(old_path))[0]
    threads = args.threads or base.report.env.get("threads") or None
    target = gate_target(base.report.target, threads)
    new_env = _fingerprint(target)
    env_diffs = env_differences(base.report.env, new_env)
    if old_model is None and env_diffs and not args.allow_env_change:
        raise InputError("environment differs from the baseline's (" + "; ".join(env_diffs) +
                         "): stored samples are not comparable; pass --against OLD_MODEL for an "
                         "interleaved check, re-record the baseline on this machine, or pass "
                         "--allow-env-change")

    wait = _common.wait_quiet(args)
    from ..bundle.transport import is_url

    if is_url(args.device):
        from ..bundle.device_profile import check_on_device
        from ..bundle.transport import parse
        from ..gate.rounds import MIN_ROUNDS, ROUND_S, SUB_S

        transport = parse(args.device)
        if old_model is None:
            raise InputError("--device measures old and new interleaved on the device: pass "
                             "--against OLD_MODEL")
        if wait:
            raise InputError("--wait-quiet waits for this machine to quieten, not the device: "
                             "drop it with --device")
        round_s = min(ROUND_S, max(2 * SUB_S, args.max_time / (2 * MIN_ROUNDS)))
        old_rep, new_rep, _ = check_on_device(old_model.path, model.path, target, transport,
                                              base.feeds, args.max_time, args.warmup_max,
                                              min_rounds=MIN_ROUNDS, round_s=round_s,
                                              sub_s=SUB_S)
        estimate = interleaved_estimate(old_rep, new_rep)
    elif old_model is not None:
        old_rep, new_rep = measure_rounds(target, [old_model, model], base.feeds, args.max_time,
                                          args.warmup_max, progress=not args.quiet,
                                          wait_quiet=wait)
        estimate = interleaved_estimate(old_rep, new_rep)
    else:
        old_rep = base.report
        # before timing anything (stored_estimate checks both sides again)
        refuse_contaminated("baseline", old_rep, f"`deploykit baseline {args.model} -o "
                                                 f"{args.baseline} --wait-quiet 120`")
        (new_rep,) = measure_rounds(target, [model], base.feeds, args.max_time, args.warmup_max,
                                    progress=not args.quiet, wait_quiet=wait)
        estimate = stored_estimate(old_rep, new_rep)
    verdict = decide(estimate, threshold)
    old_rep, new_rep, mem_v = _memory_gate(args, base, target, threads, old_model, model,
                                           old_rep, new_rep, mem_threshold)
    cold_v = cold_start_verdict(old_rep, new_rep, cold_threshold, paired=old_model is not None)
    failed = verdict.failed or mem_v.failed or cold_v.failed
    ops = per_op_diff(old_rep.per_op, new_rep.per_op, top=args.top)
    vo, vn = old_rep.validity, new_rep.validity
    result = {
        **summary_dict({"old": vo, "new": vn}),
        "contaminated_share": {"old": vo.contaminated_share, "new": vn.contaminated_share},
        "status": verdict.status, "failed": failed, "summary": verdict.summary,
        "latency_failed": verdict.failed, "memory": mem_v.to_dict(),
        "cold_start": cold_v.to_dict(),
        "threshold": threshold, "mode": estimate.mode, "ratio": estimate.ratio,
        "ratio_ci": [estimate.lo, estimate.hi], "conf": estimate.conf,
        "n_units": estimate.n_units, "p_units": estimate.p_units, "p_raw": estimate.p_raw,
        "old_median_ms": estimate.old_median_ms, "new_median_ms": estimate.new_median_ms,
        "note": estimate.note, "env_differences": env_diffs,
        "model": str(args.model), "model_sha256": model.sha256,
        "baseline": str(args.baseline), "baseline_model_sha256": old_rep.model_sha256,
        "target": target.name, "wall_s": time.perf_counter() - t_start,
        "per_op_diff": [{"name": o.name, "op_type": o.op_type, "old_ms": o.old_ms,
                         "new_ms": o.new_ms, "delta_ms": o.delta_ms} for o in ops],
    }
    with Outputs() as outs:
        _write_outputs(outs, args, result, old_rep, new_rep)
        if args.update_baseline:
            outs.json(args.baseline, checked(make_baseline(new_rep, inputs, outputs, base.feeds,
                                                            args.baseline)).to_dict())
        if store_file is not None:
            from ..store import Store

            with Store(store_file) as store:
                store.record_report(new_rep, label=f"check:{verdict.status}", model=model)
        outs.commit()
    if not args.quiet:
        _print(result, args)
    return 1 if failed else 0


def _memory_gate(args, base, target, threads, old_model, model, old_rep, new_rep, threshold):
    """Fresh-process memory runs of the new model (and of the old one when it is at hand,
    alternating with the new); the old side otherwise comes from the baseline. Returns both
    reports with their runs attached (so --update-baseline carries them) and the verdict."""
    from dataclasses import replace

    from ..gate.memory_probe import measure_memory
    from ..gate.resources import memory_runs, memory_verdict, with_memory_runs

    if args.memory_runs == 0:
        return old_rep, new_rep, memory_verdict(memory_runs(old_rep), [], threshold)
    from ..bundle.transport import is_url

    if is_url(args.device):  # fresh processes here would measure this machine, not the device
        from ..gate.resources import ResourceVerdict

        return old_rep, new_rep, ResourceVerdict(
            "memory", "no-data", threshold, None, None, None,
            "not gated with --device: its fresh-process runs would measure this machine, not "
            "the device; each side's peak RSS on the device is in its report (`memory`)")
    paths = ([str(old_model.path)] if old_model is not None else []) + [str(model.path)]
    runs = measure_memory(base.report.target, threads, paths, base.feeds, args.memory_runs)
    new_rep = replace(new_rep, memory=with_memory_runs(runs[-1]))
    if old_model is not None:
        old_rep = replace(old_rep, memory=with_memory_runs(runs[0]))
    return old_rep, new_rep, memory_verdict(memory_runs(old_rep), memory_runs(new_rep), threshold)


def _fingerprint(target) -> dict:
    from ..measure.env import fingerprint

    return fingerprint(target.name, target.config, target.threads)


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
