"""Peak steady memory as deploykit reports it against an independent measurement (issue 18).

For three generated models of different sizes (a small CNN whose activations outweigh its
weights, and two MLPs with ~32 MiB and ~192 MiB of weights), on ORT and OpenVINO:

* deploykit: the gate's fresh-process probe (`python -m deploykit.gate.memory_probe`), i.e. the
  same code `deploykit profile` and `check` run: the peak RSS of each phase (10 ms samples and,
  on Linux, the kernel's VmHWM reset per phase), as a delta over the RSS just before loading;
  the figure compared is the largest phase delta (what the process's peak rises by);
* independent: `/usr/bin/time -v` (GNU time, the kernel's ru_maxrss) of a minimal script that
  imports the runtime, loads the model and runs it 50 times, minus that same process's RSS just
  before it loaded the model (VmRSS from /proc/self/status, printed by the script): the same
  definition on both sides, a delta over the process before loading. Both start from a runtime
  that has answered "which devices do you have" (deploykit asks before it loads a model: for
  OpenVINO that loads the CPU plugin, ~19 MiB, which is then not the model's) and has
  numpy.random loaded (numpy imports it lazily, ~7 MiB; deploykit has it from scipy).
  The earlier comparison subtracted the peak of a second script that loads nothing; that peak
  sits above the RSS before loading by what the imports allocated and freed, so it understated
  the model's share (the rows keep that figure as `old_independent_delta_bytes`).
* --explain also runs the minimal script with deploykit's imports, and with deploykit's
  sampler thread around its phases, and the probe itself under `time -v`, to locate where a
  difference comes from.

Each figure is the median of --runs fresh processes. Memory is nearly deterministic, but the
machine may be shared: say so when reporting.

    .venv/bin/python tools/bench_memory.py [--runs 3] [--explain] [--json out.json] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MINIMAL = r"""
import json, sys
import numpy as np


def status():
    # the kernel's own counters for this process (no psutil: the independent side uses none of
    # deploykit's code unless a variant asks for it)
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
    return out


backend, path, variant = sys.argv[1], sys.argv[2], sys.argv[3]
np.random.default_rng(0)  # numpy.random loads lazily (~7 MiB): making inputs is not the model
phase = None
if variant in ("imports", "sampler"):  # what deploykit's probe process has before it loads
    import deploykit.gate.memory_probe, deploykit.gate.rounds  # noqa: F401
    from deploykit.measure import memory as mem
    mem.preload()
    mem.make_rss_reader()
    if variant == "sampler":
        phase = mem.RssSampler
if phase is None:
    import contextlib
    phase = contextlib.nullcontext
peaks = []
if backend == "ort":
    import onnxruntime as ort
    ort.get_available_providers()  # as deploykit's availability check
    before = status()
    if path != "-":
        so = ort.SessionOptions(); so.intra_op_num_threads = 2; so.inter_op_num_threads = 1
        with phase() as p:
            s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        peaks.append(p.phase.peak_bytes if p is not None else 0)
        i = s.get_inputs()[0]
        x = {i.name: np.random.default_rng(0).standard_normal(i.shape).astype(np.float32)}
        with phase() as p:
            for _ in range(50):
                s.run(None, x)
        peaks.append(p.phase.peak_bytes if p is not None else 0)
else:
    import openvino as ov
    ov.Core().available_devices  # as deploykit's availability check: loads the CPU plugin
    before = status()
    if path != "-":
        with phase() as p:
            core = ov.Core()
            c = core.compile_model(core.read_model(path), "CPU",
                                   {"INFERENCE_NUM_THREADS": 2, "NUM_STREAMS": 1,
                                    "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
        peaks.append(p.phase.peak_bytes if p is not None else 0)
        r = c.create_infer_request()
        shape = [d.get_length() for d in c.inputs[0].get_partial_shape()]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        with phase() as p:
            for _ in range(50):
                r.infer({0: x})
        peaks.append(p.phase.peak_bytes if p is not None else 0)
end = status()
print(json.dumps({"rss_before": before["VmRSS"], "hwm_before": before["VmHWM"],
                  "rss_end": end["VmRSS"], "hwm_end": end["VmHWM"],
                  "sampler_peak": max(peaks) if peaks else None}))
"""


def make_models(d: Path) -> dict[str, str]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def save(name, nodes, inits, x_shape, y_shape):
        g = helper.make_graph(nodes, name,
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                              inits)
        p = d / f"{name}.onnx"
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(p))
        return str(p)

    def mlp(name, width, depth):
        from calibrate_resources import make_mlp

        return str(make_mlp(d / f"{name}.onnx", width, depth, rng))

    def cnn():
        inits, nodes, x, c = [], [], "x", 3
        for i, co in enumerate((32, 64, 64, 128)):
            w = (rng.standard_normal((co, c, 3, 3)) * 0.1).astype(np.float32)
            inits.append(numpy_helper.from_array(w, f"w{i}"))
            nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
                      helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
            x, c = f"r{i}", co
        nodes.append(helper.make_node("GlobalAveragePool", [x], ["y"]))
        return save("cnn_small", nodes, inits, [1, 3, 224, 224], [1, 128, 1, 1])

    return {"cnn_small (0.4 MiB weights, 224x224 activations)": cnn(),
            "mlp_32MiB": mlp("mlp_32MiB", 2048, 2),
            "mlp_192MiB": mlp("mlp_192MiB", 4096, 3)}


def _time_v(argv: list[str], env: dict | None = None) -> tuple[int, str]:
    """(max RSS in bytes as GNU time reports it, the command's stdout)."""
    r = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True, env=env)
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    if r.returncode != 0 or not m:
        sys.exit(f"{' '.join(argv[:4])} failed: {r.stderr.strip().splitlines()[-3:]}")
    return int(m.group(1)) * 1024, r.stdout


def minimal(backend: str, path: str, variant: str = "minimal") -> dict:
    """One run of the minimal script under `time -v`: its max RSS and its own /proc figures."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    maxrss, out = _time_v([sys.executable, "-c", MINIMAL, backend, path, variant], env)
    d = json.loads(out.strip().splitlines()[-1])
    if path != "-" and maxrss <= d["hwm_before"]:  # the process peaked before the model loaded
        sys.exit(f"{path}: the model never raised the process's peak; time -v cannot see it")
    return {**d, "maxrss": maxrss, "delta": maxrss - d["rss_before"]}


def probe(target: str, path: str) -> dict:
    """deploykit's fresh-process probe (the gate's and profile's code) under `time -v`."""
    from deploykit.gate.memory_probe import parse_probe_output, probe_command

    argv, env = probe_command(target, 2, path, {"seed": 0})
    r = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True, env=env)
    d = parse_probe_output(r.returncode, r.stdout, r.stderr, path)
    maxrss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
    before = d["rss_before_bytes"]
    phases = ("load", "first", "steady")
    d["sampled_delta"] = max(d[f"{k}_delta_bytes"] for k in phases)  # as reported
    d["samples_only_delta"] = max(d.get(f"{k}_sampled_peak_bytes", d[f"{k}_peak_bytes"])
                                  for k in phases) - before  # the 10 ms samples alone
    d["maxrss"] = maxrss * 1024
    d["kernel_delta"] = d["maxrss"] - before
    return d


MiB = 2 ** 20


def mib(v: float) -> str:
    return f"{v / MiB:7.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json")
    ap.add_argument("--workdir")
    ap.add_argument("--explain", action="store_true",
                    help="also run the minimal script with deploykit's imports, and with its "
                         "sampler thread, to locate a difference")
    ap.add_argument("--backends", default="ort,openvino", help="ort,openvino (default both)")
    a = ap.parse_args()
    if not os.path.exists("/usr/bin/time"):
        sys.exit("needs GNU time at /usr/bin/time (tools/setup_system.sh installs it)")
    if not os.path.exists("/proc/self/status"):
        sys.exit("needs Linux /proc/self/status (VmRSS, VmHWM)")
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    models = make_models(work)
    variants = ("minimal", "imports", "sampler") if a.explain else ("minimal",)
    rows = []
    for backend, target in (("ort", "ort-cpu"), ("openvino", "ov-cpu")):
        if backend not in a.backends.split(","):
            continue
        empty = [minimal(backend, "-") for _ in range(a.runs)]
        empty_hwm = median(e["maxrss"] for e in empty)
        for name, path in models.items():
            runs = {v: [minimal(backend, path, v) for _ in range(a.runs)] for v in variants}
            probes = [probe(target, path) for _ in range(a.runs)]
            ind = runs["minimal"]
            row = {"backend": target, "model": name, "weight_bytes": probes[0]["weight_bytes"],
                   # the comparison: both sides as a delta over the RSS just before loading
                   "independent_delta_bytes": median(r["delta"] for r in ind),
                   "deploykit_peak_delta_bytes": median(p["sampled_delta"] for p in probes),
                   "deploykit_steady_delta_bytes": median(p["steady_delta_bytes"] for p in probes),
                   "deploykit_source": probes[0]["source"],
                   "deploykit_samples_only_delta_bytes": median(p["samples_only_delta"]
                                                                for p in probes),
                   "deploykit_steady_peak_bytes": median(p["steady_peak_bytes"] for p in probes),
                   # deploykit's own process under time -v: what its sampler could have seen
                   "deploykit_process_kernel_delta_bytes": median(p["kernel_delta"] for p in probes),
                   # the earlier comparison: minus the high-water mark of an empty script
                   "old_independent_delta_bytes": median(r["maxrss"] for r in ind) - empty_hwm,
                   # how far the minimal script's high-water mark is above its RSS before loading
                   "hwm_over_rss_before_load_bytes": median(r["hwm_before"] - r["rss_before"]
                                                            for r in ind),
                   "empty_hwm_over_rss_bytes": median(e["hwm_end"] - e["rss_end"] for e in empty),
                   "runs_independent": [r["delta"] for r in ind],
                   "runs_deploykit": [p["sampled_delta"] for p in probes],
                   "runs_deploykit_kernel": [p["kernel_delta"] for p in probes]}
            for v in variants[1:]:
                row[f"{v}_delta_bytes"] = median(r["delta"] for r in runs[v])
                if v == "sampler":
                    row["sampler_variant_sampled_delta_bytes"] = median(
                        r["sampler_peak"] - r["rss_before"] for r in runs[v])
            row["rel_diff"] = row["deploykit_peak_delta_bytes"] / row["independent_delta_bytes"] - 1
            row["old_rel_diff"] = (row["deploykit_peak_delta_bytes"]
                                   / row["old_independent_delta_bytes"] - 1)
            rows.append(row)
            extra = "".join(f" | {v} {mib(row[f'{v}_delta_bytes'])}" for v in variants[1:])
            print(f"{target:8s} {name[:24]:24s} w {mib(row['weight_bytes'])} MiB | time -v delta "
                  f"{mib(row['independent_delta_bytes'])} | deploykit {mib(row['deploykit_peak_delta_bytes'])}"
                  f" (samples only {mib(row['deploykit_samples_only_delta_bytes'])}, steady "
                  f"{mib(row['deploykit_steady_delta_bytes'])}, its process time -v "
                  f"{mib(row['deploykit_process_kernel_delta_bytes'])}) | {row['rel_diff']:+.1%}"
                  f" | old method {mib(row['old_independent_delta_bytes'])} {row['old_rel_diff']:+.1%}"
                  f" | hwm-rss before load {mib(row['hwm_over_rss_before_load_bytes'])}{extra}",
                  flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
