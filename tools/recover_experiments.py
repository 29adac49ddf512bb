#!/usr/bin/env python
"""The measurements behind recovery's choices on tools/bench_recover.py's ResNet-style digits net
(tinyresnet's blocks with BatchNorm, trained here as the bench trains it), step-counted so they
do not depend on the machine's load.

`timing`: which cuts could be fast enough at all. The net pruned at each ratio (inner convs, and
with its residual streams), each made static int8 per-tensor (the int8-only pick's recipe), and
the unpruned int8 and fp32, timed interleaved on ORT CPU with threads=1; ratios vs the unpruned
int8, one line per round.

`distill`: recovery quality of one cut. Prune (prune_filters), re-estimate BatchNorm on the
distillation digits (as build_recovered does), then recover.distill_for(..., steps=N); scored by
the worst / mean per-digit output cosine vs the original over the bench's 200 held-out digits
(the bench's --eval), also after re-estimating BatchNorm once more (a diagnostic), and with
--int8 on ORT from the exported file, fp32 and static int8 per-tensor. Distillation digits =
training digits [64:calib) (the search holds 64 out for its judge). One JSON line per run,
appended to OUT/results.jsonl.

    .venv/bin/python tools/recover_experiments.py timing --ratios 0.25,0.5,0.75 --rounds 2
    .venv/bin/python tools/recover_experiments.py distill --ratio 0.5 --steps 3000 --calib 4000
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
OUT = ROOT / "tools" / "bench_out" / "recover_experiments"


def data():
    from deploykit.examples import mnist

    x, y = mnist.load()
    return mnist.split(x, y, 0.2, seed=0)  # as the bench: xtr, ytr, xte, yte


def teacher():
    """The bench's resnet_mnist, trained as the bench trains it (4 epochs, lr 2e-3), cached."""
    import torch

    from bench_recover import resnet_mnist
    from deploykit.compress import distill

    m, cache = resnet_mnist(), OUT / "teacher.pt"
    if cache.exists():
        m.load_state_dict(torch.load(cache, weights_only=True))
    else:
        xtr, ytr, _, _ = data()
        torch.set_num_threads(2)
        distill.train(m, xtr, ytr, epochs=4, lr=2e-3)
        OUT.mkdir(parents=True, exist_ok=True)
        torch.save(m.state_dict(), cache)
    return m.eval()


def cosines(student, teach, x) -> tuple[float, float]:
    """(worst, mean) per-input output cosine vs the teacher (deploykit.fidelity.cosine's)."""
    import torch

    with torch.no_grad():
        a = teach(torch.from_numpy(x)).double().numpy()
        b = student(torch.from_numpy(x)).double().numpy()
    c = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(c.min()), float(c.mean())


def int8(path: Path, feeds, calib, workdir: Path) -> Path:
    from deploykit.core import ModelRef
    from deploykit.rewrite import StepContext
    from deploykit.rewrite.recipe import make_step, run_recipe

    res = run_recipe(ModelRef.from_path(path), [make_step("quantize-static",
                                                          {"per_channel": False})],
                     StepContext(feeds=feeds, calibration=calib, calibration_is_synthetic=False,
                                 workdir=workdir))
    return Path(res.final.path)


def timing(args) -> None:
    import torch

    from deploykit.backends import registry as targets
    from deploykit.compress.prune import prune_filters
    from deploykit.core import ModelRef
    from deploykit.export.exporter import export_module
    from deploykit.measure.timing import compare
    from deploykit.onnxio import io_specs, load_onnx
    from deploykit.search.candidates import target_for
    from deploykit.search.result import FINAL_PLAN

    out = OUT / "timing"
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    xtr, _, xte, _ = data()
    t = teacher()
    ex = (torch.from_numpy(xte[:1]),)
    src = out / "fp32.onnx"
    export_module(t, ex, src)
    name = io_specs(load_onnx(src))[0][0].name
    feeds = {name: xte[:1]}
    calib = tuple({name: xtr[i:i + 1]} for i in range(256))
    paths = {"fp32": src, "int8": int8(src, feeds, calib, out / "int8")}
    for r in (float(v) for v in args.ratios.split(",")):
        for res in (False, True):
            tag = f"p{r:g}{'res' if res else ''}"
            m = copy.deepcopy(t)
            prune_filters(m, r, residual=res)
            export_module(m, ex, out / f"{tag}.onnx")
            paths[tag + "+int8"] = int8(out / f"{tag}.onnx", feeds, calib, out / tag)
    names = list(paths)
    tg = targets.get("ort-cpu")
    arts = [target_for("ort-cpu", tg.config, (("threads", 1),)).compile(
        ModelRef.from_path(paths[n])) for n in names]
    try:
        for k in range(args.rounds):
            comp = compare(arts, [feeds] * len(arts), FINAL_PLAN, names=names)
            for i, n in enumerate(names):
                sp = comp.speedup(i, names.index("int8"))
                rep = comp.reports[i]
                print(f"round {k}: {n:14s} {rep.median_ms:.4f} ms  vs int8 {sp[0]:.2f}x "
                      f"({sp[1]:.2f}-{sp[2]:.2f})  under load {rep.contaminated_fraction:.0%}",
                      flush=True)
    finally:
        for a in arts:
            a.close()


def distill(args) -> None:
    import torch

    from bench_recover import cosine_of
    from deploykit.compress.batchnorm import reestimate
    from deploykit.compress.prune import prune_filters
    from deploykit.search import recover

    xtr, _, xte, _ = data()
    t = teacher()
    held = xte[:200]
    x = np.ascontiguousarray(xtr[min(64, max(2, args.calib // 10)):args.calib])
    s, kept = copy.deepcopy(t), {}
    prune_filters(s, args.ratio, residual=args.residual, kept=kept)
    rec = {"args": vars(args), "n_distill": len(x), "pruned": cosines(s, t, held)}
    state = copy.deepcopy(s.state_dict())
    reestimate(s, x)
    rec["bn"] = cosines(s, t, held)
    if rec["bn"][1] < rec["pruned"][1]:
        s.load_state_dict(state)
    t0 = time.monotonic()
    run = recover.distill_for(s, t, x, 0.0, steps=args.steps, kept=kept, hint_weight=args.hint,
                              mix=args.mix, lr=args.lr, batch_size=args.bs, seed=args.seed)
    rec.update(seconds=time.monotonic() - t0, steps=run["steps"], after=cosines(s, t, held),
               train=cosines(s, t, x[:500]))
    trained = copy.deepcopy(s.state_dict())
    reestimate(s, x)
    rec["after_bn"] = cosines(s, t, held)
    s.load_state_dict(trained)
    if args.int8:
        from deploykit.export.exporter import export_module
        from deploykit.onnxio import io_specs, load_onnx

        w = OUT / f"r{args.ratio:g}{'res' if args.residual else ''}_s{args.steps}"
        w.mkdir(parents=True, exist_ok=True)
        ex = (torch.from_numpy(xte[:1]),)
        export_module(t, ex, w / "teacher.onnx")
        export_module(s, ex, w / "student.onnx")
        name = io_specs(load_onnx(w / "teacher.onnx"))[0][0].name
        q = int8(w / "student.onnx", {name: xte[:1]},
                 tuple({name: xtr[i:i + 1]} for i in range(args.calib)), w / "q")
        fn = cosine_of(w / "teacher.onnx", held)
        rec.update(onnx_fp32=fn(str(w / "student.onnx")), onnx_int8=fn(str(q)))
    print(json.dumps(rec), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "results.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")


def main(argv=None) -> int:
    from deploykit.search import recover

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    tp = sub.add_parser("timing", help="time the cuts + int8 vs the unpruned int8")
    tp.add_argument("--ratios", default="0.25,0.5,0.75")
    tp.add_argument("--rounds", type=int, default=2)
    dp = sub.add_parser("distill", help="recover one cut for N steps, score held-out cosine")
    dp.add_argument("--ratio", type=float, default=0.5)
    dp.add_argument("--residual", action="store_true", help="prune the residual streams too")
    dp.add_argument("--steps", type=int, default=2000)
    dp.add_argument("--calib", type=int, default=1000, help="as the bench's --calib")
    dp.add_argument("--hint", type=float, default=recover.HINT_WEIGHT)
    dp.add_argument("--mix", type=float, default=recover.MIX)
    dp.add_argument("--lr", type=float, default=3e-3)
    dp.add_argument("--bs", type=int, default=32)
    dp.add_argument("--seed", type=int, default=0)
    dp.add_argument("--int8", action="store_true", help="also score the ONNX, fp32 and int8")
    args = ap.parse_args(argv)
    (timing if args.cmd == "timing" else distill)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
