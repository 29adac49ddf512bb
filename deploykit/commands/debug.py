"""`deploykit debug REFERENCE.onnx CANDIDATE.onnx`: which layer broke it (deploykit/debug/)."""

from __future__ import annotations

import argparse

from . import _common

HELP = "find the layers where a compressed model (or a runtime) departs from its reference"
DESCRIPTION = (
    "Match the tensors of REFERENCE and CANDIDATE (names kept by the rewrites; a "
    "DequantizeLinear output against the float tensor it replaces; op type and position where "
    "names differ), run both on the data in chunks of layers and report per tensor the error "
    "accumulated so far and the error the candidate's layer introduces by itself (fed the "
    "reference's values), worst first. Give the same file twice with two targets to find where "
    "a runtime diverges. --fix cosine=X|top1=X rebuilds the candidate's recipe keeping the "
    "fewest worst layers in float that reach the goal, verifies and times it.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("reference", help="reference .onnx (e.g. the float model)")
    p.add_argument("candidate", help="candidate .onnx (e.g. its int8 rewrite, or the same file)")
    p.add_argument("--target", "-t", default="ort-cpu",
                   help="target the candidate runs on (default ort-cpu)")
    p.add_argument("--reference-target", default="ort-cpu",
                   help="target the reference runs on (default ort-cpu)")
    p.add_argument("--inputs", metavar="NPZ|DIR",
                   help="data to compare on: .npz with arrays named like the inputs (a leading "
                        "sample axis gives one batch per sample) or a folder of .npz "
                        "(default: 4 seeded random batches, with a warning)")
    p.add_argument("--calib", metavar="NPZ|DIR",
                   help="calibration data for the --fix rebuild (default: the --inputs data)")
    p.add_argument("--max-batches", type=int, default=64, help="most batches read (default 64)")
    p.add_argument("--top", type=int, default=15, help="rows in the table (default 15)")
    p.add_argument("--rank", choices=("introduced", "output", "accumulated", "total"),
                   default="introduced",
                   help="introduced: the layer's own error (default); output: what that error "
                        "alone does to the model's outputs; accumulated: the error the layer "
                        "adds to what it inherits; total: accumulated error as is")
    p.add_argument("--chunk-layers", type=int, default=32,
                   help="most tensors exposed per run (memory bound; default 32)")
    p.add_argument("--no-impact", action="store_true",
                   help="skip the output-impact pass (it reruns the reference once per layer "
                        "and batch); --fix then ranks by introduced error")
    p.add_argument("--json", metavar="OUT.json", help="write every layer's figures (strict JSON)")
    p.add_argument("--html", metavar="OUT.html", help="write the report with the depth plot")
    g = p.add_argument_group("closing the loop")
    g.add_argument("--fix", metavar="cosine=X|top1=X|top1@M=X",
                   help="keep the fewest worst layers in float that reach this goal (top1@M: "
                        "agreement on the samples the reference decides by >= M, near-ties "
                        "left out)")
    g.add_argument("--recipe", default="quantize-static",
                   help="the recipe that made CANDIDATE from REFERENCE, rebuilt with exclude= "
                        "(default quantize-static)")
    g.add_argument("--max-float", type=int, default=16,
                   help="most layers --fix may keep in float (default 16)")
    g.add_argument("--output", "-o", metavar="FIXED.onnx", help="write the fixed model")
    g.add_argument("--no-measure", action="store_true", help="do not time the fixed model")
    p.add_argument("--shape", action="append", default=[], metavar="NAME=D0,D1,...",
                   help="concrete shape for an input with symbolic dims (random data only)")
    p.add_argument("--seed", type=int, default=0, help="seed for random inputs (default 0)")
    _common.add_plan_args(p)


def _data(specs, path, args, shapes):
    from ..rewrite.calibration import load_calibration, synthetic_calibration

    if path:
        return load_calibration(specs, path, args.max_batches), False
    return synthetic_calibration(specs, 4, args.seed, shapes), True


def run(args: argparse.Namespace) -> int:
    import json
    import shutil
    import sys
    import tempfile
    from pathlib import Path

    from ..backends import registry as targets
    from ..debug import render
    from ..debug.fix import Goal, fix, time_fix
    from ..debug.run import analyze
    from ..errors import InputError
    from ..fsutil import atomic_path, write_text_atomic
    from ..onnxio import io_specs, load_onnx

    for name in ("top", "max_batches", "chunk_layers", "max_float"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    goal = Goal.parse(args.fix) if args.fix else None
    if args.output and not goal:
        raise InputError("--output writes the fixed model: give --fix too")
    plan = _common.plan_from_args(args)
    shapes = _common.parse_shapes(args.shape)
    for name in (args.target, args.reference_target):
        targets.get(name)  # unknown or unavailable targets fail before anything runs
    if goal is not None:
        from ..debug.fix import exclude_step
        from ..rewrite.recipe import parse_recipe

        exclude_step(parse_recipe(args.recipe))  # a recipe --fix cannot use fails up front
    specs, _ = io_specs(load_onnx(args.reference, load_external=False))
    batches, synthetic = _data(specs, args.inputs, args, shapes)
    if synthetic:
        print("WARNING: compared on 4 batches of seeded random inputs; errors on real inputs "
              "differ (pass --inputs with real samples)", file=sys.stderr)
    result = analyze(args.reference, args.candidate, batches, target=args.target,
                     reference_target=args.reference_target, chunk_layers=args.chunk_layers,
                     impact=not args.no_impact)
    print("\n".join(render.summary(result)))
    print(f"ranked by {args.rank} error, worst first (own: the candidate's layer alone on the "
          "reference's inputs; out: that error alone, seen at the model's outputs; acc: whole "
          "candidate; added: the accumulated error this layer adds):")
    print(render.text_table(render.HEAD, render.rows_for(result, args.top, args.rank)))
    fr = None
    if goal is not None:
        calib, calib_synth = (_data(specs, args.calib, args, shapes) if args.calib
                              else (batches, synthetic))
        with tempfile.TemporaryDirectory(prefix="deploykit-debug-fix-") as tmp:
            fr = fix(Path(args.reference), result, args.recipe, goal, batches, calib,
                     calib_synth, Path(tmp), args.max_float, args.target)
            if fr.met and not args.no_measure:
                fr = time_fix(fr, Path(args.reference), args.target, batches[0], plan)
            print()
            print("\n".join(render.fix_lines(fr)))
            if args.output and fr.met:
                with atomic_path(args.output) as out:
                    shutil.copyfile(fr.fixed_path, out)
                print(f"wrote {args.output}")
    if args.json:
        write_text_atomic(args.json, json.dumps(render.to_json(result, fr), indent=1,
                                                allow_nan=False))
    if args.html:
        write_text_atomic(args.html, render.render_html(result, fr, args.rank, args.top))
    if fr is not None and not fr.met:
        raise InputError(f"--fix {goal} not reached with {len(fr.kept)} layer(s) in float "
                         f"(best {fr.goal.metric} {fr.score:.4f}); raise --max-float or check "
                         "the recipe")
    return 0
