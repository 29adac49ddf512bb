"""Apache TVM targets: ONNX -> Relax (from_onnx) -> build for a JSON target dict -> Relax VM.

Local targets (llvm on this CPU, cuda) run in-process and are timed by deploykit.measure.
Remote targets (`remote = true`, e.g. aarch64) are cross-compiled, uploaded to a device running
`tvm.exec.rpc_server` and timed there with `time_evaluator`. Every build is checked against ORT on
this machine before anything is timed. Untuned CPU code is ~100x slower than ORT, so an untuned
build carries the label "untuned: run deploykit tune" wherever its latency is shown.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from typing import Any, Mapping

import numpy as np

from ..base import Artifact, Target
from ...core import LatencyReport, ModelRef, OpTime, TimingPlan
from ...errors import InputError, TargetError
from .build import EMULATED_LABEL, UNTUNED_LABEL, _to_numpy
from .rpc import rpc_key



def _tvm(threads: int | None = None):
    """Import tvm with the runtime thread pool sized before its first use."""
    if threads:
        os.environ.setdefault("TVM_NUM_THREADS", str(threads))
    try:
        import tvm
    except ImportError:
        raise TargetError("apache-tvm is not installed (pip install 'deploykit[tvm]')") from None
    return tvm


class TvmTarget(Target):
    """A TVM target from its TOML: `tvm_target` (a JSON target dict), `remote`, `rpc`, ..."""

    @property
    def tvm_target(self) -> dict[str, Any]:
        """The target dict with "mcpu = host" resolved to this CPU (znver4 here)."""
        t = dict(self.config.get("tvm_target") or {})
        if not t.get("kind"):
            raise TargetError(f"target '{self.name}' has no [tvm_target] kind")
        if t.get("mcpu") == "host":
            from tvm.target import codegen

            t["mcpu"] = str(codegen.llvm_get_system_cpu())
        if t.get("num-cores") == "threads":
            t["num-cores"] = self.threads
        return t

    @property
    def remote(self) -> bool:
        return bool(self.config.get("remote") or rpc_key(self.config)
                    or self.config.get("tracker"))

    def unavailable_reason(self) -> str | None:
        try:
            tvm = _tvm()
        except TargetError as e:
            return str(e)
        kind = (self.config.get("tvm_target") or {}).get("kind")
        if kind == "cuda":
            if not tvm.runtime.enabled("cuda"):
                return ("this apache-tvm build has no CUDA runtime, or no NVIDIA driver is "
                        "installed (tvm.runtime.enabled('cuda') is False)")
            if not tvm.cuda(0).exist:
                return "no NVIDIA GPU found (tvm.cuda(0) does not exist)"
        cxx = self.config.get("cross_compiler")
        if self.remote and cxx and not shutil.which(cxx):
            return (f"cross compiler {cxx} not found (apt install g++-aarch64-linux-gnu, or "
                    f"run tools/setup_system.sh)")
        return None

    def device(self):
        tvm = _tvm(self.threads)
        return tvm.cuda(0) if self.tvm_target["kind"] == "cuda" else tvm.cpu(0)

    def compile(self, model: ModelRef) -> Artifact:
        from . import build as tvm_build

        if self.remote:
            from .remote import RemoteTvmArtifact

            return RemoteTvmArtifact.build(model, self)
        from dataclasses import replace

        from ...measure.memory import RssSampler
        from .build_memo import MEMO, Entry, build_key

        _tvm(self.threads)
        key = build_key(model, self)
        hit = MEMO.get(key)
        with RssSampler() as load:  # build/load and the VM; not the ORT reference check below
            if hit is not None:  # built earlier in this process: only the VM is new
                art = TvmArtifact(model, self, replace(hit.built, reused=True))
            else:
                built = tvm_build.build(model, self)
                art = TvmArtifact(model, self, built)
        art.load_memory = load.phase
        if hit is not None:  # the same executable on the same CPU: its check stands
            art.check = dict(hit.check)
        else:
            art.check_against_ort()
            MEMO.put(key, Entry(built, check=dict(art.check)))
        return art

    def profile(self, artifact: Artifact, feeds: Mapping[str, np.ndarray],
                plan: TimingPlan = TimingPlan(), *, per_op: bool = True, progress: bool = False,
                trace_path: str | None = None) -> LatencyReport:
        if self.remote:
            from .remote import profile_remote

            return profile_remote(artifact, feeds, plan, progress=progress)
        return super().profile(artifact, feeds, plan, per_op=per_op, progress=progress,
                               trace_path=trace_path)


class TvmArtifact(Artifact):
    """A Relax VM on this machine (cpu or cuda)."""

    def __init__(self, model: ModelRef, target: TvmTarget, built):
        super().__init__(model, target, built.inputs, built.outputs, built.build_ms)
        self.built = built
        self.build_ms = built.build_ms
        self.labels = built.labels
        self.env = {"tvm_target": target.tvm_target, "tvm_build_ms": built.build_ms,
                    "tvm_build_reused": built.reused,
                    "tuning_db": built.tuning_db, "tuning_records": built.tuning_records}
        tvm = _tvm(target.threads)
        from tvm import relax

        t0 = time.perf_counter()
        self.dev = target.device()
        self.vm = relax.VirtualMachine(built.executable, self.dev)
        self._main = self.vm["main"]
        self._tvm = tvm
        if built.reused:
            # this compile's session is the VM made from an earlier build: its creation is the
            # session cost (a cold build's is the build, `build_ms`, which env still carries);
            # the original build time repeated per round would pose as fresh cold-start samples
            self.session_create_ms = (time.perf_counter() - t0) * 1e3

    def _args(self, feeds: Mapping[str, np.ndarray]) -> list:
        args = []
        for spec in self.inputs:
            if spec.name not in feeds:
                raise InputError(f"missing input '{spec.name}'")
            a = np.ascontiguousarray(feeds[spec.name])
            if tuple(a.shape) != tuple(spec.shape):
                raise InputError(f"input '{spec.name}' has shape {list(a.shape)}; this TVM build "
                                 f"is compiled for {list(spec.shape)} (static shapes)")
            args.append(self._tvm.runtime.tensor(a, self.dev))
        return args

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return _to_numpy(self._main(*self._args(feeds)))

    def timed_runner(self, feeds: Mapping[str, np.ndarray]):
        args, main, dev = self._args(feeds), self._main, self.dev
        if self.dev.dlpack_device_type() == 1:  # cpu: the call returns when the work is done
            return lambda: main(*args)
        return lambda: (main(*args), dev.sync())

    def check_against_ort(self) -> None:
        from . import build as tvm_build

        tvm_build.check_outputs(self, self.run)

    def per_op(self, feeds: Mapping[str, np.ndarray], runs: int = 20,
               trace_path: str | None = None) -> list[OpTime]:
        """Time per kernel (one fused TIR function) with the VM's instrument hook: the Relax VM of
        TVM 0.27 ships no profiler. VM builtins (allocation, shape checks) are left out: their
        own time is far below the hook's overhead."""
        args = self._args(feeds)
        stack: list[float] = []
        totals: dict[str, float] = {}
        counts: dict[str, int] = {}
        events: list[dict] = []
        sync = self.dev.sync
        clock = time.perf_counter

        def instrument(func, symbol, before, ret, *rest):
            if symbol.startswith("vm.builtin."):
                return 0
            if before:
                sync()
                stack.append(clock())
            else:
                sync()
                t1 = clock()
                t0 = stack.pop()
                totals[symbol] = totals.get(symbol, 0.0) + (t1 - t0) * 1e3
                counts[symbol] = counts.get(symbol, 0) + 1
                if trace_path is not None:
                    events.append({"name": symbol, "ph": "X", "cat": "Node", "pid": 0, "tid": 0,
                                   "ts": t0 * 1e6, "dur": (t1 - t0) * 1e6,
                                   "args": {"op_name": op_type_of(symbol)}})
            return 0

        from tvm import relax

        vm = relax.VirtualMachine(self.built.executable, self.dev)  # the timed VM stays clean
        main = vm["main"]
        for _ in range(3):
            main(*args)
        vm.set_instrument(instrument)
        for _ in range(runs):
            main(*args)
        if trace_path:
            import json

            from ...fsutil import write_text_atomic

            write_text_atomic(trace_path, json.dumps({"traceEvents": events}))
        grand = sum(totals.values()) or 1.0
        ops = [OpTime(name, op_type_of(name), total / runs, total / grand,
                      max(1, counts[name] // runs)) for name, total in totals.items()]
        return sorted(ops, key=lambda o: -o.total_ms)


def op_type_of(symbol: str) -> str:
    """"fused_conv2d1_add2_relu1" -> "fused_conv2d_add_relu" (numbered copies of one kernel)."""
    return "_".join(re.sub(r"(?<=\D)\d+$", "", part) for part in symbol.split("_"))


__all__ = ["TvmTarget", "TvmArtifact", "UNTUNED_LABEL", "EMULATED_LABEL", "op_type_of"]
