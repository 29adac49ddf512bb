"""How close int8 recipes bring MobileNetV2 to its fp32 top-1, and where the floor is.

Each recipe is run by deploykit (`run_recipe`, calibrated on the first 16 views of
tools/bench.py's real_photos, as tools/bench_debug.py) and judged on bench_debug's 176 held-out
views of 8 photos never calibrated on: top-1 flips against fp32, the flips on views fp32 decides
by >= 0.5 logits, and the median / 99th percentile of the logit error. Two reference rows show
the floor of the metric: the fp32 model with its weights rounded to fp16 and to bf16 (activations
fp32). Near-tie views flip under any error: the row-to-row differences in raw flips are mostly
which near-ties happen to flip; the logit error ranks the recipes.

    python tools/bench_int8_flips.py [--work DIR] [--recipes "R1;;R2;;..."] [--json OUT]
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

RECIPES = ("fold-bn; quantize-static",
           "fold-bn; quantize-static:method=percentile",
           "fold-bn; quantize-static:method=entropy",
           "fold-bn; quantize-static:bias_correction=true",
           "fold-bn; quantize-static:method=percentile,bias_correction=true")
DECISIVE = 0.5  # logits between fp32's top-1 and runner-up


def logits(path: Path, views: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: views[i:i + 1]})[0] for i in range(len(views))])


def judge(ref: np.ndarray, got: np.ndarray) -> dict:
    top2 = np.sort(ref, 1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    flip = np.argmax(got, 1) != np.argmax(ref, 1)
    err = np.abs(got - ref)
    return {"flips": int(flip.sum()), "of": len(ref), "top1": float(1 - flip.mean()),
            f"flips_margin_ge_{DECISIVE}": int((flip & (margin >= DECISIVE)).sum()),
            "logit_err_median": float(np.median(err)), "logit_err_p99": float(np.quantile(err, .99))}


def rounded_weights(src: Path, dst: Path, kind: str) -> Path:
    """fp32 model whose float initializers are rounded to fp16 or bf16 (round to nearest)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(src))
    for t in m.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype != np.float32:
            continue
        if kind == "fp16":
            b = a.astype(np.float16).astype(np.float32)
        else:
            b = ((a.view(np.uint32) + np.uint32(0x8000)) & np.uint32(0xFFFF0000)).view(np.float32)
        t.CopyFrom(numpy_helper.from_array(b, t.name))
    onnx.save(m, str(dst))
    return dst


def main(argv=None) -> int:
    from bench import real_photos
    from bench_debug import unseen_photos
    from deploykit.core import ModelRef
    from deploykit.export.exporter import export_model
    from deploykit.fidelity import Tolerance
    from deploykit.rewrite import StepContext
    from deploykit.rewrite.recipe import parse_recipe, run_recipe

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/deploykit-bench-int8-flips")
    ap.add_argument("--recipes", default=";;".join(RECIPES), help="recipes separated by ';;'")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / "mobilenetv2.onnx"
    if not fp32.exists():
        export_model(f"{ROOT / 'deploykit/examples/mobilenetv2.py'}:build", fp32)
    photos = real_photos()
    calib = tuple({"x": photos[i:i + 1]} for i in range(16))
    held, _ = unseen_photos()
    ref = logits(fp32, held)
    rows = {}
    for kind in ("fp16", "bf16"):
        rows[f"fp32, weights rounded to {kind}"] = judge(
            ref, logits(rounded_weights(fp32, work / f"w-{kind}.onnx", kind), held))
    for i, recipe in enumerate(r.strip() for r in args.recipes.split(";;") if r.strip()):
        t0 = time.perf_counter()
        ctx = StepContext(feeds=calib[0], calibration=calib, calibration_is_synthetic=False,
                          workdir=work / f"r{i}")
        res = run_recipe(ModelRef.from_path(fp32), parse_recipe(recipe), ctx,
                         tolerances={"int8": Tolerance()})
        rows[recipe] = {**judge(ref, logits(Path(res.final.path), held)),
                        "seconds_to_build": time.perf_counter() - t0}
    for name, r in rows.items():
        print(f"{name:66s} flips {r['flips']:3d}/{r['of']} ({r['top1']:.4f}), "
              f"{r[f'flips_margin_ge_{DECISIVE}']:2d} at margin >= {DECISIVE}; logit error "
              f"median {r['logit_err_median']:.3f} p99 {r['logit_err_p99']:.3f}"
              + (f"  [{r['seconds_to_build']:.0f} s]" if "seconds_to_build" in r else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
