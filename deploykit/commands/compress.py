"""`deploykit compress MODEL.onnx --recipe "..." -o OUT.onnx`: apply a recipe, verify every step
against its parent, then say what the compression realized on the target."""

from __future__ import annotations

import argparse

from . import _common

HELP = "apply a compression recipe (verified step by step) and report what it realized"
DESCRIPTION = (
    "Apply a recipe of graph rewrites to an ONNX model. Steps are separated by ';', fields by "
    "',' and list items by '|': \"fold-bn; quantize-static:per_channel=true,method=entropy\" "
    "(or give a TOML file with [[step]] tables). Every step's output is checked with onnx.checker "
    "and compared with its parent on ORT before anything is timed; then all models of the "
    "lineage are timed interleaved on the target and each step gets a verdict: realized, not "
    "realized or slower, with the reason when deploykit can tell.")
CALIBRATED_STEPS = ("quantize-static", "nncf-int8")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="input .onnx model")
    p.add_argument("--recipe", "-r", help="recipe string or .toml file (see --list-steps)")
    p.add_argument("--output", "-o", help="where to write the compressed model")
    p.add_argument("--list-steps", action="store_true", help="list recipe steps and their fields")
    p.add_argument("--calib", metavar="NPZ|DIR",
                   help="calibration data: one .npz (arrays named like the inputs, optionally with "
                        "a leading sample axis) or a folder of .npz (default: seeded synthetic "
                        "data, with a warning)")
    p.add_argument("--calib-batches", type=int, default=16,
                   help="most calibration batches to use (default 16)")
    p.add_argument("--no-measure", action="store_true",
                   help="verify and report sizes/FLOPs only; do not time")
    p.add_argument("--json", metavar="REPORT.json", help="write the recipe and realized report")
    p.add_argument("--keep-steps", metavar="DIR",
                   help="keep every intermediate model in DIR (default: a temporary folder)")
    _common.add_target_args(p)
    _common.add_input_args(p)
    _common.add_plan_args(p)
    _common.add_store_arg(p)


def _print_steps(result) -> None:
    for s in result.steps:
        if not s.applied:
            print(f"  {s.index}. {s.spec}: skipped: {s.skipped}")
            continue
        extra = f"; {s.details['fired']} rewrite(s)" if "fired" in s.details else ""
        print(f"  {s.index}. {s.spec}: verified ({s.fidelity_kind}) vs parent: "
              f"{s.fidelity.summary()}{extra} [{s.seconds:.1f} s]")


def run(args: argparse.Namespace) -> int:
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from .. import targets
    from ..calibration import load_calibration, synthetic_calibration
    from ..errors import InputError
    from ..fsutil import atomic_path, write_text_atomic
    from ..onnxio import io_specs, load_onnx, make_feeds
    from ..realized import realized_report, summarize_notes
    from ..recipe import describe_steps, opset_need, parse_recipe, run_recipe
    from ..rewrite import StepContext

    if args.list_steps:
        for name, fields in describe_steps():
            print(f"{name:<22} {fields}")
        return 0
    if not (args.model and args.recipe and args.output):
        raise InputError("compress needs MODEL, --recipe and --output (or --list-steps)")
    if args.calib_batches < 1:
        raise InputError(f"--calib-batches must be >= 1, got {args.calib_batches}")
    steps = parse_recipe(args.recipe)  # a bad recipe fails before anything loads
    plan = _common.plan_from_args(args)
    shapes = _common.parse_shapes(args.shape)
    model = load_onnx(args.model)
    specs, _ = io_specs(model)
    feeds = make_feeds(specs, args.seed, shapes, args.inputs)
    if args.calib:
        calib, synthetic = load_calibration(specs, args.calib, args.calib_batches), False
    elif any(s.name in CALIBRATED_STEPS for s in steps):
        calib, synthetic = synthetic_calibration(specs, min(8, args.calib_batches), args.seed + 1,
                                                 shapes), True
    else:
        calib, synthetic = [], True
    # interleaved sessions in one process must not spin (FACTS.md)
    target = targets.get(args.target, require_available=not args.no_measure,
                         threads=args.threads, allow_spinning=False)

    with tempfile.TemporaryDirectory(prefix="deploykit-compress-") as tmp:
        workdir = Path(args.keep_steps) if args.keep_steps else Path(tmp)
        print(f"recipe on {args.model}:", flush=True)
        taken, start = _common.take_in(args.model, workdir, opset_need(steps), feeds)
        ctx = StepContext(feeds=feeds, calibration=tuple(calib), calibration_is_synthetic=synthetic,
                          workdir=workdir, target=target.name)
        result = run_recipe(start, steps, ctx)
        _print_steps(result)
        if not result.applied:
            raise InputError("no step of the recipe applied (see the reasons above); "
                             "nothing written")
        report = realized_report(result, target, feeds, plan, measure=not args.no_measure,
                                 progress=True)
        print()
        print(f"realized on {target.name} (params / size / FLOPs: before ÷ after; speedup "
              "interleaved, ratio of medians):")
        print(report.table())
        for note in summarize_notes(result.steps):
            print(note)
        with atomic_path(args.output) as out:
            shutil.copyfile(result.final.path, out)
        print(f"wrote {args.output} (sha256 {result.final.sha256[:12]})")
        if args.json:
            write_text_atomic(args.json, json.dumps(
                {"intake": {"changed": taken.changed, "notes": list(taken.notes),
                            "opset": taken.opset, "max_rel": taken.max_rel},
                 "recipe": result.to_dict(), "realized": report.to_dict()}, indent=1,
                default=str))
        if not args.no_store:
            from ..store import Store

            with Store(_common.store_path(args)) as store:
                for m in report.models:
                    store.record_model(m)
                if report.comparison is not None:
                    for m, rep in zip(report.models, report.comparison.reports):
                        store.record_report(rep, label="compress", model=m)
    return 0
