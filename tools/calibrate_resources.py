"""A/A false alarms and planted regressions for the memory and cold-start gates of `deploykit check`.

    .venv/bin/python tools/calibrate_resources.py [--aa 20] [--trials 5] [--out FILE]

1. Makes a model (default: an MLP with two 2048x2048 MatMuls, 32 MiB of weights, ~1 ms; or
   --model FILE with one input and one output of static shape).
2. Plants two regressions into copies of it, each leaving the output unchanged (up to float32
   rounding of the added and subtracted constant, ~1e-4 relative):
   * memory: a constant B[k, *output shape] of --plant-mib MiB added to the output and
     subtracted back, averaged over its first axis: the session keeps B and the two
     intermediates as big as B alive;
   * cold start: a chain of --init-steps n x n MatMuls over initializers only, multiplied by zero
     and added to the output: the runtime folds it while it creates the session, so only the
     cold start pays for it.
3. Records one baseline of the model, then runs `deploykit check` as CI would (a fresh process
   each time, interleaved against the old model with --against) in random order: --aa A/A checks
   (a byte-identical copy against the model), --trials checks of each planted regression.
4. Writes every verdict (latency, memory, cold start) with the 1-min load average at the start
   and end of each check to --out, and prints a table with exact binomial 95% intervals.
A false alarm is an A/A check whose memory or cold-start verdict is "regression"; a planted
regression is caught when its own gate says "regression".
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CLI = [sys.executable, "-m", "deploykit"]


def make_mlp(path: Path, width: int = 2048, depth: int = 2,
             rng: np.random.Generator | None = None) -> Path:
    """MatMul+Relu x depth on [1, width] (also bench_memory.py's MLPs; weights from `rng`)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0) if rng is None else rng
    inits, nodes, x = [], [], "x"
    for i in range(depth):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"fc{i}"),
                  helper.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    nodes.append(helper.make_node("Identity", [x], ["y"], name="out"))
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                       [1, width])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
                          inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _output_rewired(src: Path):
    """(model, output name, new name of the old output producer, output shape, opset)."""
    import onnx

    m = onnx.load(str(src))
    g = m.graph
    if len(g.output) != 1:
        raise SystemExit(f"{src}: planting needs one output, it has {len(g.output)}")
    y = g.output[0].name
    shape = [d.dim_value for d in g.output[0].type.tensor_type.shape.dim]
    if not shape or any(v <= 0 for v in shape):
        raise SystemExit(f"{src}: planting needs a static output shape, got {shape}")
    for node in g.node:
        node.output[:] = [f"{y}__orig" if o == y else o for o in node.output]
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 17)
    return m, y, f"{y}__orig", shape, opset


def _reduce_mean_axis0(helper, opset: int, src: str, dst: str, g) -> object:
    from onnx import TensorProto

    if opset >= 18:  # axes became an input in opset 18
        g.initializer.append(helper.make_tensor("plant_axes", TensorProto.INT64, [1], [0]))
        return helper.make_node("ReduceMean", [src, "plant_axes"], [dst], keepdims=0,
                                name="plant_mean")
    return helper.make_node("ReduceMean", [src], [dst], axes=[0], keepdims=0, name="plant_mean")


def plant_memory(src: Path, dst: Path, mib: float) -> Path:
    """`src` whose output goes through a really-used constant of `mib` MiB (see the docstring)."""
    import onnx
    from onnx import helper, numpy_helper

    m, y, orig, shape, opset = _output_rewired(src)
    per_copy = int(np.prod(shape)) * 4
    copies = max(1, int(mib * 2 ** 20 // per_copy))
    b = (np.random.default_rng(1).standard_normal((copies, *shape)) * 1e-3).astype(np.float32)
    g = m.graph
    g.initializer.append(numpy_helper.from_array(b, "plant_big"))
    g.node.extend([helper.make_node("Add", [orig, "plant_big"], ["plant_s"], name="plant_add"),
                   helper.make_node("Sub", ["plant_s", "plant_big"], ["plant_t"],
                                    name="plant_sub"),
                   _reduce_mean_axis0(helper, opset, "plant_t", y, g)])
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))
    return dst


def plant_cold_start(src: Path, dst: Path, steps: int, n: int) -> Path:
    """`src` plus a constant folded at session creation (see the docstring)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m, y, orig, _, _ = _output_rewired(src)
    g = m.graph
    q, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((n, n)))
    g.initializer.append(numpy_helper.from_array(q.astype(np.float32), "plant_q"))
    g.initializer.append(helper.make_tensor("plant_zero", TensorProto.FLOAT, [], [0.0]))
    c = "plant_q"
    for i in range(steps):
        g.node.append(helper.make_node("MatMul", [c, "plant_q"], [f"plant_c{i}"],
                                       name=f"plant_fold{i}"))
        c = f"plant_c{i}"
    g.node.extend([helper.make_node("ReduceMean", [c], ["plant_cm"], keepdims=0,
                                    name="plant_cmean"),
                   helper.make_node("Mul", ["plant_cm", "plant_zero"], ["plant_cz"],
                                    name="plant_czero"),
                   helper.make_node("Add", [orig, "plant_cz"], [y], name="plant_out")])
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))
    return dst


def cli(*args: str, timeout: float = 900) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    p = subprocess.run([*CLI, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    return p.returncode, time.perf_counter() - t0, p.stderr.strip()


def clopper_pearson(k: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    from scipy.stats import beta

    a = (1 - conf) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


GATES = (("latency", "status", "ratio"), ("memory", "memory", "ratio"),
         ("cold start", "cold_start", "ratio"))


def table(results: list[dict]) -> str:
    lines = ["| check | n | gate | flagged as regression | rate (95% CI) | change (median) | "
             "errors | median wall time | load avg (median, max) |",
             "|---|---:|---|---:|---|---:|---:|---:|---|"]
    for cond in ("A/A", "planted memory", "planted cold start"):
        rows = [r for r in results if r["condition"] == cond]
        if not rows:
            continue
        ok = [r for r in rows if r.get("verdicts")]
        wall = np.median([r["wall_s"] for r in rows])
        loads = [max(r["loadavg"]) for r in rows]
        for gate, _, _ in GATES:
            k = sum(r["verdicts"][gate]["status"] == "regression" for r in ok)
            lo, hi = clopper_pearson(k, len(ok)) if ok else (float("nan"),) * 2
            ratios = [r["verdicts"][gate]["ratio"] for r in ok
                      if r["verdicts"][gate]["ratio"] is not None]
            change = f"{np.median(ratios) - 1:+.1%}" if ratios else "—"
            lines.append(f"| {cond} | {len(ok)} | {gate} | {k} | {k / max(len(ok), 1):.0%} "
                         f"({lo:.1%}–{hi:.1%}) | {change} | {len(rows) - len(ok)} | "
                         f"{wall:.1f} s | {np.median(loads):.1f}, {max(loads):.1f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="one-input one-output .onnx (default: the 32 MiB MLP)")
    ap.add_argument("--aa", type=int, default=20, help="A/A checks (default 20)")
    ap.add_argument("--trials", type=int, default=5, help="checks per planted regression")
    ap.add_argument("--plant-mib", type=float, default=4.0, help="planted constant (MiB)")
    ap.add_argument("--init-steps", type=int, default=24)
    ap.add_argument("--init-n", type=int, default=384)
    ap.add_argument("--memory-runs", default="3", help="check's --memory-runs (default 3)")
    ap.add_argument("--max-time", default="3", help="check's --max-time (default 3)")
    ap.add_argument("--check-args", default="", help="extra arguments for every check")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/calibrate_resources.json")
    ap.add_argument("--workdir")
    ap.add_argument("--summarize", metavar="JSON", help="only print the table of a --out file")
    a = ap.parse_args()
    if a.summarize:
        print(table(json.loads(Path(a.summarize).read_text())["results"]))
        return 0
    work = Path(a.workdir or tempfile.mkdtemp(prefix="deploykit-calres-"))
    work.mkdir(parents=True, exist_ok=True)
    base = work / "base.onnx"
    if a.model:
        shutil.copy(a.model, base)
    else:
        make_mlp(base)
    shutil.copy(base, work / "same.onnx")
    models = {"A/A": work / "same.onnx",
              "planted memory": plant_memory(base, work / "memory.onnx", a.plant_mib),
              "planted cold start": plant_cold_start(base, work / "init.onnx", a.init_steps,
                                                     a.init_n)}
    baseline = work / "baseline.json"
    common = ["-q", "--no-store", "--max-time", a.max_time, "--memory-runs", a.memory_runs]
    rc, wall, err = cli("baseline", str(base), "-o", str(baseline), "--no-strict", *common)
    if rc:
        raise SystemExit(f"baseline failed: {err}")
    print(f"baseline recorded in {wall:.1f} s", flush=True)
    jobs = ["A/A"] * a.aa + ["planted memory"] * a.trials + ["planted cold start"] * a.trials
    random.Random(a.seed).shuffle(jobs)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plan = {k: getattr(a, k) for k in ("aa", "trials", "plant_mib", "init_steps", "init_n",
                                       "memory_runs", "max_time", "check_args", "seed")}
    results: list[dict] = []
    for i, cond in enumerate(jobs):
        v = work / "v.json"
        v.unlink(missing_ok=True)
        load1 = os.getloadavg()[0]
        rc, wall, err = cli("check", str(models[cond]), "--baseline", str(baseline),
                            "--against", str(base), "--json", str(v), *common,
                            *a.check_args.split())
        row = {"condition": cond, "rc": rc, "wall_s": wall, "loadavg": [load1, os.getloadavg()[0]]}
        if rc in (0, 1) and v.exists():
            d = json.loads(v.read_text())
            row["verdicts"] = {
                "latency": {"status": d["status"], "ratio": d.get("ratio")},
                "memory": {k: d["memory"].get(k) for k in ("status", "ratio", "old", "new")},
                "cold start": {k: d["cold_start"].get(k) for k in ("status", "ratio", "old",
                                                                   "new")}}
        else:
            row["error"] = err.splitlines()[-1] if err else f"exit {rc}"
        results.append(row)
        from deploykit.fsutil import write_text_atomic

        write_text_atomic(out, json.dumps({"plan": plan, "results": results}, indent=1))
        vs = row.get("verdicts")
        print(f"[{i + 1}/{len(jobs)}] {cond}: " + (
            ", ".join(f"{g} {vs[g]['status']}" for g, _, _ in GATES) if vs else
            f"ERROR {row['error']}") + f" ({wall:.1f} s, load {max(row['loadavg']):.1f})",
            flush=True)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
