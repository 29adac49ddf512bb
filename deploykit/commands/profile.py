"""`deploykit profile`: time a model on a target; `--compare` interleaves several."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import _common

HELP = "measure latency on a target (adaptive repetitions, CIs, per-op breakdown)"
DESCRIPTION = """Measure a model's latency on a target. Warm-up until the running median settles,
then adaptive repetitions until the 95% CI of the median is within --rel-ci (or the time cap).
Foreign CPU load is recorded per block. With several models or targets, or --compare, they run in
interleaved rounds in one process and the ratio of medians is reported with its CI."""


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
    p.add_argument("--label", help="free-text label stored with the run")
    p.add_argument("--device", help="RPC device key (remote targets, with --tracker)")
    p.add_argument("--tracker", help="RPC tracker HOST:PORT (remote targets)")
    p.add_argument("--quiet", "-q", action="store_true", help="no table, no progress bar")
    _common.add_input_args(p)
    _common.add_plan_args(p)
    _common.add_store_arg(p)


def _roofline(model_path: Path, threads: int, specs, feeds):
    """(flops, roofline_ms) of a model at the shapes actually fed, from graph facts and this
    machine's cached ceilings."""
    from .. import roofline
    from ..facts import model_facts
    from ..onnxio import load_onnx

    dims = {d: int(feeds[s.name].shape[i]) for s in specs for i, d in enumerate(s.shape)
            if isinstance(d, str)}
    facts = model_facts(load_onnx(model_path), dim_values=dims)
    return facts.get("flops"), roofline.model_roofline_ms(facts, roofline.ceilings(threads))


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .. import targets
    from ..errors import InputError
    from ..fsutil import write_text_atomic
    from ..onnxio import load_onnx, make_feeds

    plan = _common.plan_from_args(args)
    shapes = _common.parse_shapes(args.shape)
    for m in args.models:
        if not m.endswith(".onnx"):
            raise InputError(f"{m}: profile takes .onnx files (run `deploykit export` first)")
        load_onnx(m)  # one-line error for a missing / corrupt / unsafe file before anything runs
    names = args.target or ["ort-cpu"]
    compare = args.compare or len(args.models) > 1 or len(names) > 1
    overrides = {"threads": args.threads, "device": args.device, "tracker": args.tracker}
    tlist = [targets.get(n, **overrides) for n in names]
    if (args.device or args.tracker) and any(t.config.get("backend") != "tvm" for t in tlist):
        raise InputError("--device/--tracker apply only to remote (TVM RPC) targets")
    import tempfile

    intake_dir = tempfile.TemporaryDirectory(prefix="deploykit-profile-")
    # a normalized model keeps its file's name, so reports still say which model it is
    models = [_common.take_in(m, Path(intake_dir.name) / str(i), name=Path(m).name)[1]
              for i, m in enumerate(args.models)]
    artifacts, feeds = [], []
    for model in models:
        for t in tlist:
            art = t.compile(model)
            artifacts.append(art)
            feeds.append(make_feeds(list(art.inputs), args.seed, shapes, args.inputs))

    if compare:
        from ..measure import compare as run_compare

        cmp = run_compare(artifacts, feeds, plan, progress=not args.quiet,
                          per_op=not args.no_per_op)
        payload = cmp.to_dict()
        reports = list(cmp.reports)
    else:
        art = artifacts[0]
        rep = art.target.profile(art, feeds[0], plan, per_op=not args.no_per_op,
                                 progress=not args.quiet, trace_path=args.trace)
        if not args.no_roofline and art.target.config.get("backend") == "ort":
            flops, roof = _roofline(art.model.path, art.target.threads, art.inputs, feeds[0])
            rep = replace(rep, flops=flops, roofline_ms=roof)
        reports = [rep]
        payload = rep.to_dict()

    if not args.no_store:
        from ..store import Store

        with Store(_common.store_path(args)) as store:
            for art, rep in zip(artifacts, reports):
                store.record_report(rep, label=args.label, model=art.model)
    if args.json:
        write_text_atomic(args.json, json.dumps(payload, indent=1, default=str))
    if not args.quiet:
        from ..display import print_comparison, print_report

        if compare:
            print_comparison(cmp)
        else:
            print_report(reports[0], top=args.top)
    for a in artifacts:
        a.close()
    intake_dir.cleanup()
    return 0
