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
    p.add_argument("--debug", action="store_true",
                   help="when a step fails its fidelity check, run `deploykit debug` on it and "
                        "name the worst layers in the error")
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


def _worst_layers(parent, child, batches, top: int = 3) -> str:
    """One clause naming the layers that introduce most error in a failed step (debug/)."""
    from ..debug.render import worst_line
    from ..debug.run import analyze

    result = analyze(parent, child, batches, impact=False)  # the message ranks by own error
    return worst_line(result, top)


def _kept_paths(workdir, keep_steps):
    """Intermediates are staged in a temporary folder that becomes --keep-steps on success: what
    is written or recorded names them where they will be."""
    if not keep_steps:
        return lambda text: text
    import json

    pairs = [(str(workdir), str(keep_steps)),
             (json.dumps(str(workdir))[1:-1], json.dumps(str(keep_steps))[1:-1])]

    def kept(text: str) -> str:
        for old, new in pairs:
            text = text.replace(old, new)
        return text

    return kept


def run(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from ..api import prepare_inputs
    from ..backends import registry as targets
    from ..errors import InputError, StepVerificationError, VerificationError
    from ..fsutil import dumps_json
    from ..outputs import Outputs, check_distinct, check_output_dir, check_output_file
    from ..report.realized import realized_report, summarize_notes
    from ..rewrite.recipe import (CALIBRATED_STEPS, describe_steps, opset_need, parse_recipe,
                                  run_recipe)
    from ..rewrite import StepContext

    if args.list_steps:
        for name, fields in describe_steps():
            print(f"{name:<22} {fields}")
        return 0
    if not (args.model and args.recipe and args.output):
        raise InputError("compress needs MODEL, --recipe and --output (or --list-steps)")
    if args.calib_batches < 1:
        raise InputError(f"--calib-batches must be >= 1, got {args.calib_batches}")
    if not str(args.model).endswith(".onnx"):
        raise InputError(f"{args.model}: compress takes an .onnx file (run `deploykit export` "
                         "first)")
    steps = parse_recipe(args.recipe)  # a bad recipe fails before anything loads
    plan = _common.plan_from_args(args)
    shapes = _common.parse_shapes(args.shape)
    check_output_file(args.output, "-o", suffix=".onnx")
    check_output_file(args.json, "--json")
    check_output_dir(args.keep_steps, "--keep-steps")
    check_distinct(**{"-o": args.output, "--json": args.json})
    store_file = _common.check_store(args)
    _, feeds, calib, synthetic = prepare_inputs(
        args.model, seed=args.seed, shapes=shapes, inputs=args.inputs,
        calibration=args.calib or None, calib_batches=args.calib_batches,
        synthetic=any(s.name in CALIBRATED_STEPS for s in steps))
    # interleaved sessions in one process must not spin (FACTS.md)
    target = targets.get(args.target, require_available=not args.no_measure,
                         threads=args.threads, allow_spinning=False)

    with tempfile.TemporaryDirectory(prefix="deploykit-compress-") as tmp, Outputs() as outs:
        workdir = outs.folder(args.keep_steps) if args.keep_steps else Path(tmp)
        print(f"recipe on {args.model}:", flush=True)
        taken, start = _common.take_in(args.model, workdir, opset_need(steps), feeds)
        ctx = StepContext(feeds=feeds, calibration=tuple(calib), calibration_is_synthetic=synthetic,
                          workdir=workdir, target=target.name)
        try:
            result = run_recipe(start, steps, ctx)
        except StepVerificationError as e:
            if not args.debug or e.parent is None:
                raise
            batches = [feeds] + ([] if synthetic else list(calib[:2]))
            raise VerificationError(f"{e}; {_worst_layers(e.parent, e.child, batches)}") from None
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
        outs.copy(result.final.path, args.output)
        kept = _kept_paths(workdir, args.keep_steps)
        if args.json:
            outs.text(args.json, kept(dumps_json({
                "intake": {"changed": taken.changed, "notes": list(taken.notes),
                           "opset": taken.opset, "max_rel": taken.max_rel},
                "recipe": result.to_dict(), "realized": report.to_dict()})))
        if store_file is not None:
            from dataclasses import replace

            from ..store import Store

            models = [replace(m, path=Path(kept(str(m.path)))) for m in report.models]
            with Store(store_file) as store:
                for m in models:
                    store.record_model(m)
                if report.comparison is not None:
                    for m, rep in zip(models, report.comparison.reports):
                        store.record_report(replace(rep, model_path=str(m.path)),
                                            label="compress", model=m)
        outs.commit()
        print(f"wrote {args.output} (sha256 {result.final.sha256[:12]})")
    return 0
