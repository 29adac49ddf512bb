"""OpenVINO CPU targets: the ONNX file compiled by OpenVINO's CPU plugin.

Precision is explicit because OpenVINO's own default on CPUs with avx512_bf16/AMX is bf16: a
model "run in fp32" there silently runs in bf16. The target asks for `precision` (f32 or bf16),
reads back what the compiled model actually uses and records it in the artifact's labels and the
report's env, so a bf16 figure can never be reported as fp32.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from typing import Any, Mapping

import numpy as np

from .base import Artifact, Target
from ..core import ModelRef, OpTime
from ..errors import TargetError, first_line

INSTALL_HINT = "openvino not installed: pip install 'deploykit[openvino]'"
PRECISIONS = ("f32", "bf16")
# bf16 keeps 8 mantissa bits: element-wise 1e-4 is out of reach, a wrong kernel still fails this.
_UNCONVERTED = re.compile(r"No conversion rule found for operations?:\s*(.+)")


def _openvino():
    """The openvino module, or a TargetError with the install command."""
    try:
        import openvino
    except ImportError:
        raise TargetError(INSTALL_HINT) from None
    return openvino




def _fidelity_kind(proto, precision: str) -> str:
    """How outputs are judged against ORT fp32: a QDQ model as int8, bf16 compute by cosine."""
    from ..fidelity import QUANTIZED_OPS

    if any(n.op_type in QUANTIZED_OPS for n in proto.graph.node):
        return "int8"
    return "fp32" if precision == "f32" else precision


def _precision_name(t: Any) -> str:
    """OpenVINO element type -> "f32" / "bf16" / ..."""
    return t.get_type_name() if hasattr(t, "get_type_name") else str(t)


class OpenVinoArtifact(Artifact):
    """A compiled OpenVINO model with one reused InferRequest (the fast path that gets timed)."""

    def __init__(self, model: ModelRef, target: "OpenVinoTarget", core, ov_model, compiled,
                 proto, create_ms: float):
        from ..onnxio import io_specs

        super().__init__(model, target, *io_specs(proto), create_ms)
        self._core = core
        self._ov_model = ov_model
        self.compiled = compiled
        self._request = compiled.create_infer_request()
        self._in_ports = [compiled.input(s.name) for s in self.inputs]
        self._out_ports = [compiled.output(s.name) for s in self.outputs]
        self.precision = _precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.fidelity_kind = _fidelity_kind(proto, self.precision)
        self.env = {
            "openvino": _openvino().get_version(),
            "ov_inference_precision": self.precision,
            "ov_num_threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
            "ov_num_streams": int(compiled.get_property("NUM_STREAMS")),
            "ov_performance_hint": str(compiled.get_property("PERFORMANCE_HINT")),
            "ov_cpu_pinning": bool(compiled.get_property("ENABLE_CPU_PINNING")),
        }
        try:  # run-time int8 activations for int8-weight MatMuls (0: off); newer plugins only
            self.env["ov_dynamic_quantization_group_size"] = int(
                compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE"))
        except RuntimeError:
            pass
        self.labels = (f"precision={self.precision}",)
        if self.precision != target.precision:
            self.labels += (f"asked for {target.precision}, OpenVINO runs {self.precision}",)

    def check_fidelity(self, feeds: Mapping[str, np.ndarray]):
        """(Fidelity, reason or None): these outputs against the same file on ORT fp32, judged by
        `fidelity_kind` (fp32 within 1e-4 rel; bf16 and int8 by cosine)."""
        from ..fidelity import compare, judge, run_ort

        fid = compare(run_ort(self.model.path, feeds), self.run(feeds))
        return fid, judge(fid, self.fidelity_kind)

    def _bind(self, request, feeds: Mapping[str, np.ndarray]) -> list:
        """Point the request's inputs at the feed arrays (no copy); returns what must stay alive."""
        ov = _openvino()
        keep = []
        for spec, port in zip(self.inputs, self._in_ports):
            a = np.ascontiguousarray(feeds[spec.name])
            canonical = np.dtype(a.dtype.name)
            if a.dtype.char != canonical.char:  # np.longlong ('q') is int64 to numpy, not to
                a = a.view(canonical)  # OpenVINO's binding ("Unsupported data type: int64")
            keep.append(a)
            request.set_tensor(port, ov.Tensor(a, shared_memory=True))
        return keep

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        self._bind(self._request, feeds)
        self._request.infer()
        return [self._request.get_tensor(p).data.copy() for p in self._out_ports]

    def timed_runner(self, feeds: Mapping[str, np.ndarray]):
        """Its own request with the feeds bound once; outputs stay in OpenVINO's buffers."""
        req = self.compiled.create_infer_request()
        keep = self._bind(req, feeds)  # the default argument keeps the shared arrays alive
        return lambda _keep=keep: req.infer(share_outputs=True)

    def _profiling_request(self, feeds: Mapping[str, np.ndarray]):
        """A second compiled model with PERF_COUNT on, so the timed one carries no counters."""
        props = {**self.target.properties(), "PERF_COUNT": True}
        req = self._core.compile_model(self._ov_model, "CPU", props).create_infer_request()
        return req, self._bind(req, feeds)

    def per_op(self, feeds: Mapping[str, np.ndarray], runs: int = 20,
               trace_path: str | None = None) -> list[OpTime]:
        """Mean time per executed node from OpenVINO's performance counters (nodes fused away
        report NOT_RUN and are left out); `trace_path` keeps the per-node table with the kernel
        OpenVINO chose (its exec_type, e.g. brgconv_avx512_I8, shows the precision really run)."""
        req, _keep = self._profiling_request(feeds)
        for _ in range(3):
            req.infer()
        totals: dict[str, float] = defaultdict(float)
        kinds: dict[str, tuple[str, str]] = {}
        for _ in range(runs):
            req.infer()
            for p in req.get_profiling_info():
                if p.status == p.Status.EXECUTED:
                    totals[p.node_name] += p.real_time.total_seconds() * 1e3
                    kinds[p.node_name] = (p.node_type, p.exec_type)
        grand = sum(totals.values()) or 1.0
        ops = sorted((OpTime(n, kinds[n][0], t / runs, t / grand) for n, t in totals.items()),
                     key=lambda o: -o.total_ms)
        if trace_path:
            from ..fsutil import write_text_atomic

            rows = [{"name": o.name, "node_type": o.op_type, "exec_type": kinds[o.name][1],
                     "mean_ms": o.total_ms, "share": o.share} for o in ops]
            write_text_atomic(trace_path, json.dumps(
                {"backend": "openvino", "runs": runs, "env": self.env, "nodes": rows}, indent=1))
        return ops

    def exec_types(self, feeds: Mapping[str, np.ndarray]) -> dict[str, str]:
        """node name -> OpenVINO kernel (exec_type) of every executed node, from one run."""
        req, _keep = self._profiling_request(feeds)
        req.infer()
        return {p.node_name: p.exec_type for p in req.get_profiling_info()
                if p.status == p.Status.EXECUTED}


class OpenVinoTarget(Target):
    """`precision` ("f32" default, or "bf16") and `threads` come from the TOML; one stream,
    latency hint, so a batch-1 inference uses exactly `threads` cores like the ORT targets."""

    def __init__(self, name: str, config: Mapping[str, Any]):
        super().__init__(name, config)
        if self.precision not in PRECISIONS:
            raise TargetError(f"target '{name}': precision must be one of {', '.join(PRECISIONS)}, "
                              f"got {self.precision!r}")

    @property
    def precision(self) -> str:
        return str(self.config.get("precision", "f32"))

    def properties(self) -> dict[str, Any]:
        return {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_NUM_THREADS": self.threads, "NUM_STREAMS": 1}

    def unavailable_reason(self) -> str | None:
        try:
            ov = _openvino()
        except TargetError as e:
            return str(e)
        core = ov.Core()
        if "CPU" not in core.available_devices:
            return "OpenVINO sees no CPU device"
        if self.precision == "bf16" and \
                "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            return "this CPU has no bf16 support in OpenVINO (needs avx512_bf16 or AMX)"
        return None

    def compile(self, model: ModelRef) -> OpenVinoArtifact:
        import onnx

        from ..measure.memory import RssSampler

        ov = _openvino()
        with RssSampler() as load:  # from the Core on: the runtime's own start counts as load
            core = ov.Core()
            t0 = time.perf_counter()
            try:
                ov_model = core.read_model(str(model.path))
            except RuntimeError as e:
                raise TargetError(f"{self.name} cannot compile {model.path.name}: "
                                  f"{_conversion_failure(e)}") from None
            try:
                compiled = core.compile_model(ov_model, "CPU", self.properties())
            except RuntimeError as e:
                raise TargetError(f"{self.name} cannot compile {model.path.name}: "
                                  f"{_unsupported_nodes(core, ov_model) or first_line(e)}") \
                    from None
            create_ms = (time.perf_counter() - t0) * 1e3
        proto = onnx.load(str(model.path), load_external_data=False)
        art = OpenVinoArtifact(model, self, core, ov_model, compiled, proto, create_ms)
        art.load_memory = load.phase
        return art


def _conversion_failure(e: RuntimeError) -> str:
    """The ops OpenVINO's ONNX frontend has no conversion for, named; else its first line."""
    m = _UNCONVERTED.search(str(e))
    if m:
        return f"OpenVINO has no conversion for op {m.group(1).strip()}"
    return first_line(e)


def _unsupported_nodes(core, ov_model) -> str | None:
    """Nodes the CPU plugin reports it cannot run (query_model), as 'Type name' pairs."""
    try:
        supported = core.query_model(ov_model, "CPU")
    except RuntimeError:
        return None
    bad = [f"{op.get_type_name()} '{op.get_friendly_name()}'" for op in ov_model.get_ops()
           if op.get_friendly_name() not in supported
           and op.get_type_name() not in ("Parameter", "Result", "Constant")]
    return f"the OpenVINO CPU plugin cannot run {', '.join(bad[:3])}" if bad else None
