"""Calibrate `deploykit check` on this machine: false-alarm rate, detection power, wall time.

    .venv/bin/python tools/calibrate_gate.py [--aa 40] [--trials 20] [--slowdowns 5,10,20]

1. Exports the bundled ~5 ms model (deploykit/examples/tinyresnet.py) unless --model is given.
2. Injects slowdowns: an extra chain of `Sin` ops on a slice of the input, folded into the output
   as y + 1e-30 * sum(chain) (so ORT cannot drop it, and outputs do not change). The cost of one
   op is measured with the gate's own interleaved rounds, and the chain length is set
   to cost 5% / 10% / 20% of the model's time. The slowdown actually injected is reported as the
   median of the checks' own estimates.
3. Records one baseline, then runs `deploykit check` as CI would (a fresh process each time) in
   random order: A/A (the model against itself, interleaved), each injected slowdown, and a few
   A/A checks against the stored samples (no interleaving) to show why interleaving matters.
4. Prints a Markdown table for the README and writes every verdict to --out (JSON).
Exact binomial (Clopper-Pearson) 95% intervals are given for every rate: with n trials and zero
false alarms the upper bound is ~3.7/n, so say how many trials a figure rests on.
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
CLI = [sys.executable, "-m", "deploykit"]
SLICE = 2048  # elements per injected op: ~2-4 us each, so 5% of 5 ms is dozens of ops


def inject_chain(src: Path, dst: Path, n_ops: int) -> Path:
    """Copy of `src` whose first output also depends on `n_ops` chained Sin ops on an input
    slice."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load(str(src))
    g = m.graph
    x, y = g.input[0].name, g.output[0].name
    for node in g.node:  # rename the producer of the output
        node.output[:] = [f"{y}__orig" if o == y else o for o in node.output]
    consts = {"inj_flat": [-1], "inj_start": [0], "inj_end": [SLICE], "inj_axes": [0]}
    for name, v in consts.items():
        g.initializer.append(helper.make_tensor(name, TensorProto.INT64, [1], v))
    g.initializer.append(helper.make_tensor("inj_eps", TensorProto.FLOAT, [], [1e-30]))
    nodes = [helper.make_node("Reshape", [x, "inj_flat"], ["inj_r"], name="inj_reshape"),
             helper.make_node("Slice", ["inj_r", "inj_start", "inj_end", "inj_axes"], ["inj_0"],
                              name="inj_slice")]
    for i in range(n_ops):
        nodes.append(helper.make_node("Sin", [f"inj_{i}"], [f"inj_{i + 1}"], name=f"inj_sin{i}"))
    nodes += [helper.make_node("ReduceSum", [f"inj_{n_ops}"], ["inj_sum"], keepdims=0,
                               name="inj_sum"),
              helper.make_node("Mul", ["inj_sum", "inj_eps"], ["inj_tiny"], name="inj_scale"),
              helper.make_node("Add", [f"{y}__orig", "inj_tiny"], [y], name="inj_add")]
    g.node.extend(nodes)
    onnx.checker.check_model(m)
    onnx.save(m, str(dst))
    return dst


def cli(*args: str, timeout: float = 300) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    p = subprocess.run([*CLI, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return p.returncode, time.perf_counter() - t0, p.stderr.strip()


def cost_per_op_ms(base: Path, work: Path, probe_ops: int, max_time: float) -> tuple[float, float]:
    """(model median ms, ms per injected op), from the gate's own interleaved rounds."""
    from deploykit.gate.rounds import gate_target, load_model, measure_rounds
    from deploykit.gate.decision import interleaved_estimate

    probe = inject_chain(base, work / "probe.onnx", probe_ops)
    old, new = measure_rounds(gate_target("ort-cpu", None),
                              [load_model(str(base))[0], load_model(str(probe))[0]], {},
                              max_time, 0.5)
    est = interleaved_estimate(old, new)
    return old.median_ms, (est.ratio - 1) * old.median_ms / probe_ops


def clopper_pearson(k: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    from scipy.stats import beta

    a = (1 - conf) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help=".onnx model (default: export the bundled ~5 ms TinyResNet)")
    ap.add_argument("--aa", type=int, default=40, help="interleaved A/A checks (default 40)")
    ap.add_argument("--trials", type=int, default=20, help="checks per injected slowdown")
    ap.add_argument("--stored-aa", type=int, default=8, help="A/A checks against stored samples")
    ap.add_argument("--slowdowns", default="5,10,20", help="injected slowdowns in %% (5,10,20)")
    ap.add_argument("--threshold", default="5%", help="check's --max-slowdown (default 5%%)")
    ap.add_argument("--check-args", default="", help="extra arguments for every check")
    ap.add_argument("--probe-ops", type=int, default=200)
    ap.add_argument("--chain-ops", help="comma-separated chain lengths to inject instead of "
                                        "probing (e.g. from an earlier run's measured slowdowns)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/calibrate_gate.json")
    ap.add_argument("--workdir", help="keep models and baseline here (default: a temp dir)")
    ap.add_argument("--resume", action="store_true",
                    help="continue an interrupted run (same --workdir, --out, --seed and counts)")
    ap.add_argument("--summarize", metavar="JSON",
                    help="only print the table of an earlier (or still running) run's --out file")
    args = ap.parse_args()
    if args.summarize:
        d = json.loads(Path(args.summarize).read_text())
        print(table(d["results"], d["base_ms"], d["threshold"]))
        return 0

    work = Path(args.workdir or tempfile.mkdtemp(prefix="deploykit-cal-"))
    work.mkdir(parents=True, exist_ok=True)
    base = work / "base.onnx"
    out = Path(args.out)
    baseline = work / "baseline.json"
    store = work / "cal.sqlite"
    results: list[dict] = []
    plan = {"seed": args.seed, "aa": args.aa, "stored_aa": args.stored_aa,
            "trials": args.trials, "threshold": args.threshold}
    if args.resume:  # same workdir, --out, seed and counts: continue the shuffled job list
        if not out.exists():
            raise SystemExit(f"--resume: {out} does not exist (nothing to resume)")
        d = json.loads(out.read_text())
        if any(d.get("plan", plan).get(k) != v for k, v in plan.items()):
            raise SystemExit(f"--resume: {out} was written with {d['plan']}; give the same "
                             f"--seed/--aa/--stored-aa/--trials/--threshold")
        base_ms, op_ms, results = d["base_ms"], d["op_us"] / 1e3, d["results"]
        variants = {k: Path(v) for k, v in d["variants"].items()}
        if not baseline.exists() or not all(v.exists() for v in variants.values()):
            raise SystemExit(f"--resume: {work} lacks the baseline or the injected models")
        print(f"resuming after {len(results)} checks", flush=True)
    else:
        if args.model:
            shutil.copy(args.model, base)
        else:
            rc, _, err = cli("export", "deploykit/examples/tinyresnet.py:build", "-o", str(base))
            if rc:
                raise SystemExit(f"export failed: {err}")
        variants = {}
        if args.chain_ops:
            base_ms = op_ms = float("nan")
            for n in (int(v) for v in args.chain_ops.split(",")):
                variants[f"{n} ops"] = inject_chain(base, work / f"chain{n}.onnx", n)
        else:
            base_ms, op_ms = cost_per_op_ms(base, work, args.probe_ops, 15)
            print(f"model median {base_ms:.3f} ms; one injected op costs {op_ms * 1e3:.2f} us",
                  flush=True)
            if op_ms <= 0:
                raise SystemExit("could not measure the injected op's cost (machine too noisy?)")
            for s in (float(v) for v in args.slowdowns.split(",")):
                n = max(1, round(s / 100 * base_ms / op_ms))
                variants[f"+{s:g}%"] = inject_chain(base, work / f"slow{s:g}.onnx", n)
                print(f"+{s:g}%: {n} ops", flush=True)
        shutil.copy(base, work / "same.onnx")
        # --no-strict: a baseline taken under load is still written (with its state); the
        # stored-mode checks below then report "refused" instead of a verdict
        rc, wall, err = cli("baseline", str(base), "-o", str(baseline), "-q", "--store", str(store),
                            "--no-strict")
        if rc:
            raise SystemExit(f"baseline failed: {err}")
        print(f"baseline recorded in {wall:.1f} s", flush=True)
    jobs = [("A/A interleaved", str(work / "same.onnx"), ["--against", str(base)])] * args.aa
    jobs += [("A/A stored samples", str(base), [])] * args.stored_aa
    for name, path in variants.items():
        jobs += [(name, str(path), [])] * args.trials
    random.Random(args.seed).shuffle(jobs)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every check, so an interrupted run still leaves its verdicts
        from deploykit.fsutil import write_text_atomic

        write_text_atomic(out, json.dumps({"base_ms": base_ms, "op_us": op_ms * 1e3,
                                           "threshold": args.threshold, "plan": plan,
                                           "variants": {k: str(v) for k, v in variants.items()},
                                           "results": results}, indent=1))

    if any(r["condition"] != job[0] for r, job in zip(results, jobs)):
        raise SystemExit(f"--resume: the verdicts in {out} do not follow this job order")
    save()  # from the start: a run killed during its first check can be resumed

    for i, (cond, model, extra) in enumerate(jobs):
        if i < len(results):
            continue
        while (work / "PAUSE").exists():  # `touch WORKDIR/PAUSE` frees the machine between checks
            time.sleep(2)
        load1 = os.getloadavg()[0]
        v = work / "v.json"
        v.unlink(missing_ok=True)
        rc, wall, err = cli("check", model, "--baseline", str(baseline), "--max-slowdown",
                            args.threshold, "-q", "--store", str(store), "--json", str(v),
                            *extra, *args.check_args.split())
        row = {"condition": cond, "rc": rc, "wall_s": wall,
               "loadavg": [load1, os.getloadavg()[0]]}
        if v.exists() and rc in (0, 1):
            d = json.loads(v.read_text())
            row.update(status=d["status"], ratio=d["ratio"], ci=d["ratio_ci"], mode=d["mode"],
                       n_units=d["n_units"])
        elif rc == 2 and "measurement is contaminated" in err:  # stored mode under load
            row.update(status="refused", error=err)
        else:
            row.update(status="error", error=err)
        results.append(row)
        save()
        print(f"[{i + 1}/{len(jobs)}] {cond}: {row['status']} "
              f"{row.get('ratio', float('nan')):.4f} {row.get('ci', '')} ({wall:.1f} s)",
              flush=True)

    print(table(results, base_ms, args.threshold))
    return 0


QUIET_LOAD = 2.5  # 1-min load average at the start and end of a check; the check itself adds ~2


def table(results: list[dict], base_ms: float, threshold: str) -> str:
    """One row per condition, and beside it the same split by machine load: power depends on the
    load (a loaded machine widens every interval), the false-alarm rate should not."""
    order = ["A/A interleaved", "A/A stored samples"] + sorted(
        {r["condition"] for r in results if not r["condition"].startswith("A/A")},
        key=lambda c: float(c.strip("+% ops")))
    aa = [r["ratio"] for r in results if r["condition"] == "A/A interleaved" and "ratio" in r]
    lines = [f"Model {base_ms:.2f} ms (median at probe time), threshold {threshold}, 2 threads, "
             f"shared machine; largest A/A estimate {max(aa, default=float('nan')) - 1:+.1%}; "
             f"quiet = 1-min load average <= {QUIET_LOAD} at the start and end of the check.",
             "", "| check | machine | n | flagged as regression | rate (95% CI) | injected "
             "slowdown measured (median) | median CI width | errors | median wall time | "
             "load avg (median, max) |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---|"]
    for cond in order:
        rows = [r for r in results if r["condition"] == cond]
        if not rows:
            continue
        quiet = [r for r in rows if "loadavg" in r and max(r["loadavg"]) <= QUIET_LOAD]
        loaded = [r for r in rows if "loadavg" in r and max(r["loadavg"]) > QUIET_LOAD]
        for label, part in (("all", rows), ("quiet", quiet), ("loaded", loaded)):
            if part and (label == "all" or len(part) < len(rows)):
                lines.append(_row(cond, label, part))
    return "\n".join(lines)


def _row(cond: str, machine: str, rows: list[dict]) -> str:
    ok = [r for r in rows if r["status"] not in ("error", "refused")]  # verdicts only
    k = sum(r["status"] == "regression" for r in ok)
    lo, hi = clopper_pearson(k, len(ok)) if ok else (float("nan"),) * 2
    ratio = np.median([r["ratio"] for r in ok]) - 1 if ok else float("nan")
    width = np.median([r["ci"][1] - r["ci"][0] for r in ok]) if ok else float("nan")
    wall = np.median([r["wall_s"] for r in rows])
    loads = [max(r["loadavg"]) for r in rows if "loadavg" in r]
    load = f"{np.median(loads):.1f}, {max(loads):.1f}" if loads else "—"
    return (f"| {cond} | {machine} | {len(ok)} | {k} | {k / max(len(ok), 1):.0%} "
            f"({lo:.1%}–{hi:.1%}) | {ratio:+.1%} | {width:.1%} | {len(rows) - len(ok)} | "
            f"{wall:.1f} s | {load} |")


if __name__ == "__main__":
    sys.exit(main())
