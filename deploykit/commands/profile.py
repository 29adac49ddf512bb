"""`deploykit profile`: time a model on a target; `--compare` interleaves several."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import _common

HELP = "measure latency on a target (adaptive repetitions, CIs, per-op breakdown)"
DESCRIPTION = """Measure a model's latency on a target. Warm-up until the running median settles,
then adaptive repetitions until the 95% CI of the median is within --rel-ci (or the time cap).
Foreign CPU load is recorded per block. With several models or targets, or --compare, they run in
interleaved rounds in one process and the ratio of medians is reported with its CI.
Every report carries a state: clean, contaminated (other processes used the cores while it ran)
or unstable (the machine drifted); --json has it as `state` and `reason`, and with --strict (on by
default when CI=true) a measurement that is not clean exits 3.
Exit codes: 0 done, 2 usage or input error, 3 not a clean measurement (--strict)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL", help=".onnx file(s)")
    p.add_argument("--target", "-t", action="append", default=None,
                   help="target name or .toml (repeatable with --compare; default ort-cpu)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: target's)")
    p.add_argument("--compare", action="store_true",
                   help="interleave all MODEL x TARGET combinations; report ratios to the first")
    p.add_argument("--json", metavar="OUT", help="write the full report (JSON)")
    p.add_argument("--trace", metavar="TRACE.json",
                   help="write the per-op Chrome trace (open in Perfetto / chrome://tracing)")
    p.add_argument("--top", type=int, default=10, help="rows of the per-op table (default 10)")
    p.add_argument("--no-per-op", action="store_true", help="skip the per-operator breakdown")
    p.add_argument("--no-roofline", action="store_true",
                   help="skip the roofline (measuring this machine's ceilings takes ~10 s once)")
    p.add_argument("--duration", metavar="TIME",
                   help="run for this long whatever the CI (e.g. 10m, 90s, 1h) and report "
                        "stability: drift, trend of block medians, CV, IQR, p99/p50, and a flag "
                        "when the second half differs significantly from the first")
    p.add_argument("--label", help="free-text label stored with the run")
    p.add_argument("--device", help="ssh://USER@HOST[:PORT][/DIR] or adb://SERIAL[/DIR]: package "
                   "an ORT bundle, push it, self-test and time it there; or an RPC device key "
                   "(TVM targets, with --tracker)")
    p.add_argument("--tracker", help="RPC tracker HOST:PORT (remote targets)")
    _common.add_pool_args(p, device=False)
    p.add_argument("--quiet", "-q", action="store_true", help="no table, no progress bar")
    _common.add_input_args(p)
    _common.add_plan_args(p)
    _common.add_honesty_args(p)
    _common.add_store_arg(p)


def _roofline(model_path: Path, threads: int, specs, feeds):
    """(flops, roofline_ms) of a model at the shapes actually fed, from graph facts and this
    machine's cached ceilings."""
    from ..measure import roofline
    from ..measure.facts import model_facts
    from ..onnxio import load_onnx

    dims = {d: int(feeds[s.name].shape[i]) for s in specs for i, d in enumerate(s.shape)
            if isinstance(d, str)}
    facts = model_facts(load_onnx(model_path), dim_values=dims)
    return facts.get("flops"), roofline.model_roofline_ms(facts, roofline.ceilings(threads))


def parse_duration(text: str) -> float:
    """'10m' / '90s' / '1h' / '30' (seconds) -> seconds."""
    from ..errors import InputError

    t = str(text).strip().lower()
    mult = {"s": 1, "m": 60, "h": 3600}.get(t[-1:], None)
    try:
        v = float(t[:-1] if mult else t) * (mult or 1)
    except ValueError:
        raise InputError(f"bad --duration {text!r}: expected e.g. 10m, 90s or 1h") from None
    if not (v > 0 and v < 7 * 86400):
        raise InputError(f"--duration must be positive (and under a week), got {text!r}")
    return v


def run(args: argparse.Namespace) -> int:
    from ..backends import registry as targets
    from ..errors import InputError
    from ..onnxio import io_specs, load_onnx, make_feeds
    from ..outputs import Outputs, check_distinct, check_output_file

    plan = _common.plan_from_args(args)
    if args.duration is not None:
        from dataclasses import replace

        # the run lasts the whole duration: no stop on the CI or on a sample count
        plan = replace(plan, max_time_s=parse_duration(args.duration), min_samples=10**12,
                       max_samples=10**12)
    shapes = _common.parse_shapes(args.shape)
    check_output_file(args.json, "--json")
    check_output_file(args.trace, "--trace")
    check_distinct(**{"--json": args.json, "--trace": args.trace})
    if args.trace and args.no_per_op:
        raise InputError("--trace records the per-operator run: drop --no-per-op")
    store_file = _common.check_store(args)
    for m in args.models:
        if not m.endswith(".onnx"):
            raise InputError(f"{m}: profile takes .onnx files (run `deploykit export` first)")
        # one-line errors for a missing / corrupt / unsafe file, or inputs deploykit cannot feed
        # (strings, bad dims, a wrong --inputs / --shape), before anything compiles or runs
        make_feeds(io_specs(load_onnx(m, load_external=False))[0], args.seed, shapes, args.inputs)
    names = args.target or ["ort-cpu"]
    from ..bundle.transport import is_url

    pool = None if is_url(args.device) else _common.pool_from_args(args)
    # over a pool, separate models are timed alone, each on its own board, at once; --compare
    # still interleaves them, on one board
    compare = args.compare or ((len(args.models) > 1 or len(names) > 1) and pool is None)
    if compare and pool is None and args.tracker and args.device and not is_url(args.device):
        from ..backends.tvm.pool import PoolConfig

        # interleaved models need one board in one session: a second tracker request would
        # wait for a board the first one holds, or measure on another board
        pool = PoolConfig(args.tracker, args.device, 1, **_common.hang_kw(args))
    if is_url(args.device):
        if args.parallel is not None:
            raise InputError("--parallel is for TVM RPC device keys (with --tracker), not for "
                             "ssh:// or adb://")
        return _on_device(args, names, compare, plan, shapes, store_file)
    overrides = {"threads": args.threads, "device": args.device, "tracker": args.tracker}
    if args.trace and compare:
        raise InputError("--trace records one model on one target; it does not apply to "
                         "--compare (profile the model alone for its trace)")
    tlist = [targets.get(n, **overrides) for n in names]
    for t in tlist:
        if t.config.get("requires_device"):
            raise InputError(f"target '{t.name}' is timed on its device: add --device "
                             "ssh://USER@HOST[:PORT] (or adb://SERIAL)")
    if (args.device or args.tracker) and any(t.config.get("backend") != "tvm" for t in tlist):
        raise InputError("--device/--tracker apply only to remote (TVM RPC) targets")
    if pool is not None:
        from ..backends.tvm.pool import check_target

        for t in tlist:
            check_target(t)
        if args.trace:
            raise InputError("--trace records a local per-operator run; it does not apply to "
                             "--parallel")
    import tempfile

    intake_dir = tempfile.TemporaryDirectory(prefix="deploykit-profile-")
    # checked and normalized (deploykit.intake); a normalized model keeps its file's name, so
    # reports still say which model it is
    models = [_common.take_in(m, Path(intake_dir.name) / str(i), name=Path(m).name)[1]
              for i, m in enumerate(args.models)]
    with Outputs() as outs:
        trace = outs.path(args.trace) if args.trace else None
        if pool is None:
            cmp, reports, artifacts = _measure(args, models, tlist, shapes, plan, compare, trace)
        else:
            cmp, reports, artifacts = _measure_pooled(args, models, tlist, shapes, plan, compare,
                                                      pool)
        payload = cmp.to_dict() if compare else reports[0][1].to_dict() if len(reports) == 1 \
            else {"reports": [r.to_dict() for _, r in reports]}
        if args.json:
            outs.json(args.json, payload)
        if store_file is not None:
            from ..store import Store

            with Store(store_file) as store:
                for model, rep in reports:
                    store.record_report(rep, label=args.label, model=model)
        outs.commit()
    if not args.quiet:
        from ..report.terminal import print_comparison, print_report

        if compare:
            print_comparison(cmp)
        else:
            for _, rep in reports:
                if pool is not None:
                    print(f"{rep.model_path} on {rep.target}, {rep.env['remote']['where']}:")
                print_report(rep, top=args.top)
    for a in artifacts:
        a.close()
    intake_dir.cleanup()
    reps = [r for _, r in reports]
    names = cmp.names if compare else [f"{r.model_path} ({r.target})" for r in reps]
    return _common.not_clean_exit(args, {n: r.validity for n, r in zip(names, reps)})


def _measure(args, models, tlist, shapes, plan, compare: bool, trace):
    """(the comparison or None, [(model, report)], artifacts left open): every model compiled on
    every target and timed, alone, or interleaved by the API's `compare`."""
    from dataclasses import replace

    from ..api import compare as api_compare, compile_with_feeds

    if compare:  # the API closes its artifacts; the command stores the runs with its --label
        cmp = api_compare(models, tlist, plan=plan, inputs=args.inputs, shapes=shapes,
                          seed=args.seed, per_op=not args.no_per_op, progress=not args.quiet,
                          store=None)
        return cmp, list(zip([m for m in models for _ in tlist], cmp.reports)), []
    artifacts, feeds = compile_with_feeds(models, tlist, seed=args.seed, shapes=shapes,
                                          inputs=args.inputs)
    art = artifacts[0]
    rep = art.target.profile(art, feeds[0], plan, per_op=not args.no_per_op,
                             progress=not args.quiet, trace_path=str(trace) if trace else None)
    if not args.no_roofline and art.target.config.get("backend") == "ort":
        flops, roof = _roofline(art.model.path, art.target.threads, art.inputs, feeds[0])
        rep = replace(rep, flops=flops, roofline_ms=roof)
    return None, [(art.model, rep)], [art]


def _measure_pooled(args, models, tlist, shapes, plan, compare: bool, pool_cfg):
    """`_measure` over a pool of RPC boards (backends/tvm/pool.py): every model x target timed
    alone on a board of its own, up to --parallel at once; with --compare all of them
    interleaved on one board (a ratio across two boards would compare the boards)."""
    from dataclasses import replace

    from ..backends.tvm.pool import DevicePool

    quiet = replace_args(args, quiet=True)  # per-sample progress lines of N threads would mix
    each = plan.max_time_s + plan.warmup_max_s  # a model's timing: the pool's hang budget
    if compare:  # interleaved: no sign of life until every model is timed
        budget = each * len(models) * len(tlist)
        with DevicePool(replace(pool_cfg, parallel=1), budget_s=budget) as pool:
            return pool.run(lambda: _measure(quiet, models, tlist, shapes, plan, True, None))
    jobs = [([m], [t]) for m in models for t in tlist]

    def job(mt):
        _, (result,), (art,) = _measure(quiet, mt[0], mt[1], shapes, plan, False, None)
        art.close()  # the board's session stays with the pool for the next job
        return result

    with DevicePool(pool_cfg, budget_s=each) as pool:
        return None, pool.map(job, jobs, progress=None if args.quiet else "profiling"), []


def replace_args(args: argparse.Namespace, **changes) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), **changes})


def _on_device(args, names, compare: bool, plan, shapes, store_file) -> int:
    """One model on one ORT, OpenVINO or TVM target, packaged, pushed, self-tested and timed on
    an ssh:// or adb:// device; stored like any run."""
    from ..backends import registry as targets
    from ..bundle.device_profile import profile_on_device
    from ..bundle.transport import parse
    from ..core import ModelRef
    from ..errors import InputError
    from ..outputs import Outputs

    transport = parse(args.device)
    if args.tracker:
        raise InputError("--tracker is for TVM RPC device keys, not for ssh:// or adb://")
    if compare:
        raise InputError("--device ssh://|adb:// profiles one model on one target (run it per "
                         "model; compare stored runs with `deploykit check --against`)")
    if args.trace:
        raise InputError("--trace is not available on a device (the bundle times whole "
                         "inferences); drop --trace")
    if plan.wait_quiet_s > 0:
        raise InputError("--wait-quiet waits for this machine to quieten, not the device: drop "
                         "it with --device (the device's own foreign load is recorded per block)")
    target = targets.get(names[0], require_available=False, threads=args.threads)
    model = ModelRef.from_path(args.models[0])
    rep, run = profile_on_device(model.path, target, transport, plan, seed=args.seed,
                                 shapes=shapes, inputs_npz=args.inputs)
    with Outputs() as outs:
        if args.json:
            outs.json(args.json, rep.to_dict())
        if store_file is not None:
            from ..store import Store

            with Store(store_file) as store:
                store.record_report(rep, label=args.label, model=model)
        outs.commit()
    if not args.quiet:
        from ..report.terminal import print_report

        print(f"on {run.where} ({run.runtime}): self-test passed "
              f"({', '.join(r['name'] + ' ok' for r in run.rows)}); "
              f"{len(run.pushed)} file(s) pushed")
        print_report(rep, top=args.top)
        rss = rep.env.get("peak_rss_kb")
        dev = rep.env.get("device", {})
        runtime = {"tvm": f"tvm {dev.get('tvm')}, {dev.get('runner')}",
                   "openvino": f"python {dev.get('python')}, openvino {dev.get('openvino')}"}.get(
            dev.get("runtime"), f"python {dev.get('python')}, onnxruntime {dev.get('onnxruntime')}")
        print(f"device: {dev.get('cpu_model')} ({dev.get('machine')}, {dev.get('cpu_count')} "
              f"cores, governor {dev.get('governor') or 'n/a'}), {dev.get('os')}, {runtime}; "
              f"peak RSS {f'{rss / 1024:.1f} MiB' if rss else 'n/a'}")
    return _common.not_clean_exit(args, {str(model.path): rep.validity})
