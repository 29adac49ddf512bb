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

from ..core import TimingPlan, stable_hash


@dataclass(frozen=True)
class Ceilings:
    fp32_gflops: float
    int8_gops: float
    mem_gbps: float
    threads: int
    clean: bool = True  # False when other processes loaded the CPU during the measurement


def _best_ms(t) -> tuple[float, bool]:
    """A ceiling is what the hardware reaches at best: the fastest clean block's median
    (all blocks when none is clean, reported as not clean)."""
    clean = [b for b in t.blocks if not b.contaminated and b.n]
    use = clean or [b for b in t.blocks if b.n]
    x = np.asarray(t.samples_ms)
    return float(min(np.median(x[b.start:b.start + b.n]) for b in use)), bool(clean)


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


def measure_ceilings(threads: int = 2, sizes: tuple[int, ...] = (1024, 1536),
                     plan: TimingPlan | None = None) -> Ceilings:
    """Time n x n x n GEMMs in ORT (fp32 MatMul, u8s8 MatMulInteger) and a large memory copy;
    each ceiling is the best over the sizes (kernels peak at different shapes)."""
    import onnxruntime as ort

    from .timing import measure_callable

    plan = plan or TimingPlan(warmup_min_s=0.1, warmup_max_s=1.0, max_time_s=3.0,
                              target_rel_ci=0.02, min_samples=10)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    rng = np.random.default_rng(0)
    results, all_clean = {False: 0.0, True: 0.0}, True
    for n, int8 in ((n, q) for n in sizes for q in (False, True)):
        sess = ort.InferenceSession(_gemm_model(n, int8), so, providers=["CPUExecutionProvider"])
        if int8:
            feeds = {"a": rng.integers(0, 255, (n, n), dtype=np.uint8),
                     "b": rng.integers(-127, 127, (n, n), dtype=np.int8)}
        else:
            feeds = {"a": rng.standard_normal((n, n), dtype=np.float32),
                     "b": rng.standard_normal((n, n), dtype=np.float32)}
        best, clean = _best_ms(measure_callable(lambda: sess.run(None, feeds), plan))
        results[int8] = max(results[int8], 2 * n**3 / (best / 1e3) / 1e9)
        all_clean &= clean
    # memory: the better of a copy (read + write) and ORT streaming a large tensor through a
    # reduction (read-only, like batch-1 weight streaming), both on 256 MB
    src = np.ones(256 * 2**20 // 8)
    dst = np.empty_like(src)
    best, clean = _best_ms(measure_callable(lambda: np.copyto(dst, src), plan))
    mem = 2 * src.nbytes / (best / 1e3) / 1e9
    big = np.ones(256 * 2**20 // 4, dtype=np.float32).reshape(-1, 4096)
    sess = ort.InferenceSession(_reduce_model(big.shape), so, providers=["CPUExecutionProvider"])
    best_r, clean_r = _best_ms(measure_callable(lambda: sess.run(None, {"a": big}), plan))
    mem = max(mem, big.nbytes / (best_r / 1e3) / 1e9)
    return Ceilings(results[False], results[True], mem, threads, all_clean and clean and clean_r)


def _reduce_model(shape: tuple[int, int]):
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, shape[1]])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [0])
    node = helper.make_node("ReduceSum", ["a", "axes"], ["y"], keepdims=1)
    graph = helper.make_graph([node], "stream", [a], [y], [axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _cache_file(threads: int) -> Path:
    from platformdirs import user_cache_dir

    from .env import cpu_flags, cpu_model

    key = stable_hash(cpu_model(), cpu_flags(), threads)
    return Path(user_cache_dir("deploykit")) / f"ceilings-{key}.json"


def ceilings(threads: int = 2, refresh: bool = False) -> Ceilings:
    """Cached per machine fingerprint (CPU model, flags, threads); a measurement taken while
    other processes loaded the CPU is used once but never cached."""
    path = _cache_file(threads)
    if path.exists() and not refresh:
        try:
            c = Ceilings(**json.loads(path.read_text()))
            if c.clean:
                return c
        except (ValueError, TypeError):
            pass
    c = measure_ceilings(threads)
    if c.clean:
        from ..fsutil import write_text_atomic

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
