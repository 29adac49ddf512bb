"""ONNX Runtime targets (CPU and CUDA execution providers)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import defaultdict
from typing import Mapping


from .base import Artifact, Target
from ..core import ModelRef, OpTime
from ..errors import TargetError
from ..onnxio import io_specs, load_onnx

_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
           "extended": "ORT_ENABLE_EXTENDED", "layout": "ORT_ENABLE_LAYOUT", "all": "ORT_ENABLE_ALL"}


def session_options(config: Mapping, *, profiling: bool = False):
    import onnxruntime as ort

    opts = config.get("options", {})
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(config.get("threads", 2))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    level = opts.get("graph_optimization_level", "all")
    if level not in _LEVELS:
        raise TargetError(f"unknown graph_optimization_level {level!r} (one of {', '.join(_LEVELS)})")
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[level])
    spin = "1" if config.get("allow_spinning", opts.get("allow_spinning", True)) else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.log_severity_level = 3
    if profiling:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="deploykit-prof-"), "ort")
    return so


class OrtArtifact(Artifact):
    """An ORT InferenceSession; the timed runner holds the output names and feeds dict once."""

    def __init__(self, model: ModelRef, target: "OrtTarget", session, inputs, outputs,
                 create_ms: float):
        super().__init__(model, target, inputs, outputs, create_ms)
        self.session = session
        self.providers = tuple(session.get_providers())
        self._names = [o.name for o in session.get_outputs()]

    def run(self, feeds):
        return self.session.run(self._names, dict(feeds))

    def timed_runner(self, feeds):
        run, names, f = self.session.run, self._names, dict(feeds)
        return lambda: run(names, f)

    def per_op(self, feeds, runs: int = 20, trace_path: str | None = None) -> list[OpTime]:
        """Time per node from ORT's own profiler (a separate profiling session, so the timed
        session stays unprofiled); optionally keep ORT's Chrome trace for Perfetto."""
        import onnxruntime as ort

        from .op_names import name_ops, name_trace_events

        so = session_options(self.target.config, profiling=True)
        # the graph ORT runs, to name its fused / renamed nodes after the model's (op_names.py)
        optimized = os.path.join(os.path.dirname(so.profile_file_prefix), "optimized.onnx")
        so.optimized_model_filepath = optimized
        sess = ort.InferenceSession(str(self.model.path), so, providers=list(self.providers))
        f = dict(feeds)
        for _ in range(3):  # warm-up runs, dropped by aggregate_node_events
            sess.run(None, f)
        for _ in range(runs):
            sess.run(None, f)
        path = sess.end_profiling()
        try:
            with open(path) as fh:
                events = json.load(fh)
            self.runtime_memory = allocator_stats(events)
            names = _names(self.model.path, optimized)
            if trace_path:
                from ..fsutil import dumps_json, write_text_atomic

                write_text_atomic(trace_path, dumps_json(name_trace_events(events, names), None))
        finally:
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)
        return name_ops(aggregate_node_events(events, runs_skip=3, runs=runs), names)


def _names(model_path, optimized_path) -> dict:
    """op_names.name_map of the model and the graph ORT saved; {} when it saved none."""
    from .op_names import name_map

    if not os.path.exists(optimized_path):
        return {}
    from ..onnxio import load_onnx

    try:
        return name_map(load_onnx(model_path, load_external=False),
                        load_onnx(optimized_path, load_external=False))
    except Exception:  # naming is a convenience: a graph that does not load keeps ORT's names
        return {}


def aggregate_node_events(events: list[dict], runs: int, runs_skip: int = 0) -> list[OpTime]:
    """Per-node mean time per inference from ORT profiler events (cat "Node", *_kernel_time).

    Events of the first `runs_skip` model runs are dropped (they are warm-up); the rest must be
    `runs` inferences.
    """
    runs_seen = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    cutoff = runs_seen[runs_skip]["ts"] if len(runs_seen) > runs_skip and runs_skip else None
    totals: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    types: dict[str, str] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if cutoff is not None and e["ts"] < cutoff:
            continue
        name = e["name"][: -len("_kernel_time")]
        totals[name] += e["dur"] / 1000.0
        calls[name] += 1
        types[name] = e.get("args", {}).get("op_name", "?")
    grand = sum(totals.values()) or 1.0
    ops = [OpTime(n, types[n], totals[n] / runs, totals[n] / grand, max(1, calls[n] // runs))
           for n in totals]
    return sorted(ops, key=lambda o: -o.total_ms)


# What ORT's profiler writes into every node event's args from the session's CPU allocator
# (its BFC arena's statistics): the only allocator statistics its Python API lets one read.
_ALLOCATOR_KEYS = {"mem_in_use_peak": "arena_in_use_peak_bytes",
                   "mem_arena_held": "arena_held_bytes",
                   "mem_bytes_in_use": "arena_in_use_bytes",
                   "mem_bytes_requested_in_use": "arena_requested_in_use_bytes"}


def allocator_stats(events: list[dict]) -> dict | None:
    """The largest value of each allocator statistic over the profiled runs (None when this ORT
    build writes none): bytes the arena handed out at its peak and bytes it holds from the OS."""
    out: dict = {}
    for e in events:
        args = e.get("args") or {}
        for key, name in _ALLOCATOR_KEYS.items():
            try:
                v = int(args[key])
            except (KeyError, TypeError, ValueError):
                continue
            out[name] = max(out.get(name, 0), v)
    if not out:
        return None
    return {"source": "onnxruntime profiler (CPU arena statistics, profiling session)", **out}


def by_op_type(ops: list[OpTime]) -> list[OpTime]:
    """Fold a per-node breakdown into one row per op type."""
    acc: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
    for o in ops:
        a = acc[o.op_type]
        a[0] += o.total_ms
        a[1] += o.share
        a[2] += 1
    return sorted((OpTime(t, t, v[0], v[1], int(v[2])) for t, v in acc.items()),
                  key=lambda o: -o.total_ms)


class OrtTarget(Target):
    def unavailable_reason(self) -> str | None:
        try:
            import onnxruntime as ort
        except ImportError:
            return "onnxruntime is not installed"
        wanted = self.config.get("options", {}).get("providers", ["CPUExecutionProvider"])
        have = set(ort.get_available_providers())
        missing = [p for p in wanted if p not in have]
        if missing:
            nice = {"CUDAExecutionProvider": "no CUDA provider (install onnxruntime-gpu on a "
                                             "machine with an NVIDIA GPU)"}
            return "; ".join(nice.get(p, f"no {p}") for p in missing)
        if "CUDAExecutionProvider" in wanted and not _cuda_device_present():
            return "no CUDA provider usable: no NVIDIA GPU found"
        return None

    def compile(self, model: ModelRef) -> OrtArtifact:
        import onnxruntime as ort

        from ..measure.memory import RssSampler

        # the file is not parsed here before the session (see _session_specs); ORT's own
        # refusal of a bad file becomes the one-line TargetError below, and every verb's intake
        # (intake.py) has checked the file before it gets here
        so = session_options(self.config)
        providers = self.config.get("options", {}).get("providers", ["CPUExecutionProvider"])
        with RssSampler() as load:
            t0 = time.perf_counter()
            try:
                sess = ort.InferenceSession(str(model.path), so, providers=providers)
            except Exception as e:  # ORT raises its own exception types per failure
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise TargetError(f"{self.name}: onnxruntime cannot load {model.path}: "
                                  f"{first}") from None
            create_ms = (time.perf_counter() - t0) * 1e3
        inputs, outputs = _session_specs(sess, model.path)
        art = OrtArtifact(model, self, sess, inputs, outputs, create_ms)
        art.load_memory = load.phase
        if providers[0] not in art.providers:
            raise TargetError(f"{self.name}: {providers[0]} was not used by the session")
        return art


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(bfloat16)": "bfloat16", "tensor(bool)": "bool", "tensor(int8)": "int8",
              "tensor(uint8)": "uint8", "tensor(int16)": "int16", "tensor(uint16)": "uint16",
              "tensor(int32)": "int32", "tensor(uint32)": "uint32", "tensor(int64)": "int64",
              "tensor(uint64)": "uint64"}
_FLOATS = ("float32", "float16", "float64", "bfloat16")


def _session_specs(sess, path):
    """Input and output specs from the session, not from parsing the file: parsing (and freeing)
    the weights before the session is created changes the allocator's state (glibc's dynamic
    mmap threshold), which measurably moved the session's resident memory (+2.2 MiB, and +16 MiB
    in 2 of 7 processes, on a 32 MiB MLP: tools/bench_memory.py, README "Memory per phase").
    The file is parsed, after the session, only for what the session cannot say: index ranges
    of integer inputs, and element types it names differently."""
    from ..core import TensorSpec

    def spec(arg):
        dims = tuple(d if isinstance(d, int) else (d or "?") for d in (arg.shape or ()))
        return TensorSpec(arg.name, dims, _ORT_TYPES.get(arg.type, ""))

    ins, outs = [spec(a) for a in sess.get_inputs()], [spec(a) for a in sess.get_outputs()]
    if all(s.dtype in _FLOATS for s in ins) and all(s.dtype for s in outs):
        return ins, outs
    return io_specs(load_onnx(path, load_external=False))


def _cuda_device_present() -> bool:
    return any(os.path.exists(p) for p in ("/dev/nvidia0", "/proc/driver/nvidia/version"))

