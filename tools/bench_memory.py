"""Peak steady memory as deploykit reports it against an independent measurement (issue 18).

For three generated models of different sizes (a small CNN whose activations outweigh its
weights, and two MLPs with ~32 MiB and ~192 MiB of weights), on ORT and OpenVINO:

* deploykit: the gate's fresh-process probe (`python -m deploykit.gate.memory_probe`), i.e. the
  same code `deploykit profile` and `check` run: peak RSS per phase sampled every 10 ms, as a
  delta over the process before loading; the figure compared is the largest phase delta (what
  the process's high-water mark rises by);
* independent: `/usr/bin/time -v` (GNU time, the kernel's ru_maxrss) of a minimal script that
  imports the runtime, loads the model and runs it 50 times, minus the same script that imports
  the runtime and runs nothing: the model's share of the high-water mark. Both sides start from
  a runtime that has answered "which devices do you have" (deploykit asks before it loads a
  model: for OpenVINO that loads the CPU plugin, ~19 MiB, which is then not the model's) and
  has numpy.random loaded (numpy imports it lazily, ~7 MiB; deploykit has it from scipy).

Each figure is the median of --runs fresh processes. Memory is nearly deterministic, but the
machine may be shared: say so when reporting.

    .venv/bin/python tools/bench_memory.py [--runs 3] [--json out.json] [--workdir DIR]
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

MINIMAL = r'''
import sys
import numpy as np
backend, path = sys.argv[1], sys.argv[2]
np.random.default_rng(0)  # numpy.random loads lazily (~7 MiB): making inputs is not the model
if backend == "ort":
    import onnxruntime as ort
    ort.get_available_providers()  # as deploykit's availability check
    if path != "-":
        so = ort.SessionOptions(); so.intra_op_num_threads = 2; so.inter_op_num_threads = 1
        s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        i = s.get_inputs()[0]
        x = {i.name: np.random.default_rng(0).standard_normal(i.shape).astype(np.float32)}
        for _ in range(50):
            s.run(None, x)
else:
    import openvino as ov
    ov.Core().available_devices  # as deploykit's availability check: loads the CPU plugin
    if path != "-":
        core = ov.Core()
        c = core.compile_model(core.read_model(path), "CPU",
                               {"INFERENCE_NUM_THREADS": 2, "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": "f32",
                                "PERFORMANCE_HINT": "LATENCY"})
        r = c.create_infer_request()
        shape = [d.get_length() for d in c.inputs[0].get_partial_shape()]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        for _ in range(50):
            r.infer({0: x})
'''


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
        inits, nodes, x = [], [], "x"
        for i in range(depth):
            w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
            inits.append(numpy_helper.from_array(w, f"w{i}"))
            nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"fc{i}"),
                      helper.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"relu{i}")]
            x = f"r{i}"
        nodes.append(helper.make_node("Identity", [x], ["y"]))
        return save(name, nodes, inits, [1, width], [1, width])

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


def time_v_maxrss(backend: str, path: str) -> int:
    r = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-c", MINIMAL, backend, path],
                       capture_output=True, text=True, check=True)
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    return int(m.group(1)) * 1024


def deploykit_probe(target: str, path: str) -> dict:
    from deploykit.gate.memory_probe import run_fresh

    return run_fresh(target, 2, path, {"seed": 0})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json")
    ap.add_argument("--workdir")
    a = ap.parse_args()
    if not os.path.exists("/usr/bin/time"):
        sys.exit("needs GNU time at /usr/bin/time (tools/setup_system.sh installs it)")
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    models = make_models(work)
    rows = []
    for backend, target in (("ort", "ort-cpu"), ("openvino", "ov-cpu")):
        empty = median(time_v_maxrss(backend, "-") for _ in range(a.runs))
        for name, path in models.items():
            indep = [time_v_maxrss(backend, path) - empty for _ in range(a.runs)]
            probes = [deploykit_probe(target, path) for _ in range(a.runs)]
            dk = [max(p[k] for k in ("load_delta_bytes", "first_delta_bytes",
                                     "steady_delta_bytes")) for p in probes]
            steady = [p["steady_delta_bytes"] for p in probes]
            row = {"backend": target, "model": name, "weight_bytes": probes[0]["weight_bytes"],
                   "independent_delta_bytes": median(indep),
                   "deploykit_peak_delta_bytes": median(dk),
                   "deploykit_steady_delta_bytes": median(steady),
                   "deploykit_steady_peak_bytes": median(p["steady_peak_bytes"] for p in probes),
                   "runs_independent": indep, "runs_deploykit": dk}
            row["rel_diff"] = row["deploykit_peak_delta_bytes"] / row["independent_delta_bytes"] - 1
            rows.append(row)
            print(f"{target:8s} {name:48s} weights {row['weight_bytes'] / 2**20:7.1f} MiB | "
                  f"time -v delta {row['independent_delta_bytes'] / 2**20:7.1f} MiB | deploykit "
                  f"peak delta {row['deploykit_peak_delta_bytes'] / 2**20:7.1f} MiB "
                  f"(steady {row['deploykit_steady_delta_bytes'] / 2**20:7.1f}) | "
                  f"{row['rel_diff']:+.1%}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
