"""This machine's ceilings (fp32 and int8 GEMM throughput, memory bandwidth), measured once per
machine fingerprint and cached, and a model's roofline time: the fastest it could possibly run.

efficiency = roofline time / measured median: 1.0 means the runtime is at the hardware limit and
only fewer FLOPs, cheaper FLOPs (int8) or fewer bytes can make it faster.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from .core import TimingPlan, stable_hash


@dataclass(frozen=True)
class Ceilings:
    fp32_gflops: float
    int8_gops: float
    mem_gbps: float
    threads: int


def _gemm_model(n: int, int8: bool):
    from onnx import TensorProto, helper

    if int8:
        a = helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])
        b = helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])
        y = helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
    else:
        a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])
        b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
    graph = helper.make_graph([node], "gemm", [a, b], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def measure_ceilings(threads: int = 2, n: int = 1024, plan: TimingPlan | None = None) -> Ceilings:
    """Time an n x n x n GEMM in ORT (fp32 MatMul, u8s8 MatMulInteger) and a large memory copy."""
    import onnxruntime as ort

    from .measure import measure_callable

    plan = plan or TimingPlan(warmup_min_s=0.1, warmup_max_s=1.0, max_time_s=3.0,
                              target_rel_ci=0.02, min_samples=10)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    rng = np.random.default_rng(0)
    results = {}
    for int8 in (False, True):
        sess = ort.InferenceSession(_gemm_model(n, int8), so, providers=["CPUExecutionProvider"])
        if int8:
            feeds = {"a": rng.integers(0, 255, (n, n), dtype=np.uint8),
                     "b": rng.integers(-127, 127, (n, n), dtype=np.int8)}
        else:
            feeds = {"a": rng.standard_normal((n, n), dtype=np.float32),
                     "b": rng.standard_normal((n, n), dtype=np.float32)}
        t = measure_callable(lambda: sess.run(None, feeds), plan)
        results[int8] = 2 * n**3 / (float(np.median(t.samples_ms)) / 1e3) / 1e9
    src = np.ones(64 * 2**20 // 8)
    dst = np.empty_like(src)
    t = measure_callable(lambda: np.copyto(dst, src), plan)
    mem = 2 * src.nbytes / (float(np.median(t.samples_ms)) / 1e3) / 1e9  # read + write
    return Ceilings(results[False], results[True], mem, threads)


def _cache_file(threads: int) -> Path:
    from platformdirs import user_cache_dir

    from .envinfo import cpu_flags, cpu_model

    key = stable_hash(cpu_model(), cpu_flags(), threads)
    return Path(user_cache_dir("deploykit")) / f"ceilings-{key}.json"


def ceilings(threads: int = 2, refresh: bool = False) -> Ceilings:
    """Cached per machine fingerprint (CPU model, flags, threads)."""
    path = _cache_file(threads)
    if path.exists() and not refresh:
        try:
            return Ceilings(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            pass
    c = measure_ceilings(threads)
    from .fsutil import write_text_atomic

    write_text_atomic(path, json.dumps(asdict(c)))
    return c


def roofline_ms(fp_flops: float, int8_ops: float, bytes_moved: float, c: Ceilings) -> float:
    """Lower bound on latency: compute time at the ceilings, or memory time, whichever is larger."""
    compute_s = fp_flops / (c.fp32_gflops * 1e9) + int8_ops / (c.int8_gops * 1e9)
    memory_s = bytes_moved / (c.mem_gbps * 1e9)
    return 1e3 * max(compute_s, memory_s)


def model_roofline_ms(facts: Mapping, c: Ceilings) -> float | None:
    """Roofline time from `deploykit.facts.model_facts` output (None when FLOPs are unknown)."""
    total = facts.get("flops")
    if not total:
        return None
    int8 = facts.get("int8_flops", 0.0) or 0.0
    return roofline_ms(total - int8, int8, facts.get("weight_bytes", 0) or 0, c)
