"""TVM over RPC: cross-compile, export with the target's cross compiler, upload to a device running
`tvm.exec.rpc_server`, check outputs against ORT on this machine, time with `time_evaluator`.

The device is reached directly (`rpc = "HOST:PORT"` in the target file) or through a tracker
(`device` key + `tracker` HOST:PORT, e.g. `deploykit profile --device KEY --tracker HOST:PORT`),
which hands out any free device of that key and queues the request while all are busy. The session
is held for the artifact's lifetime, so the device stays reserved until `close()`.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from ..base import Artifact
from ...core import Block, LatencyReport, ModelRef, OpTime, TimingPlan, stable_hash
from ...errors import DeployKitError, TargetError, first_line
from . import build as tvm_build
from .build import EMULATED_LABEL, _to_numpy
from .pool import alive_now, pinned
from .rpc import rpc_key

_BUILD_LOCK = threading.Lock()


def _server(where: str) -> str | None:
    """The server's HOST:PORT in an artifact's `where` (the device's identity in a report)."""
    if where.startswith("server "):
        return where.split()[1]
    return where.rpartition("(server ")[2].rstrip(")") if "(server " in where else None


def export_library(built: tvm_build.Built, target, model: ModelRef) -> Path:
    """The shared library for the device, cached by (model, target dict), written atomically."""
    from platformdirs import user_cache_dir
    from tvm.support import cc

    from ...fsutil import atomic_path

    tdict = target.tvm_target
    out = (Path(user_cache_dir("deploykit")) / "tvm-lib"
           / f"{model.sha256[:16]}-{stable_hash(tdict, built.tuning_records, n=12)}.so")
    cxx = target.config.get("cross_compiler")
    kw = {"fcompile": cc.cross_compiler(cxx)} if cxx else {}
    try:
        with atomic_path(out) as tmp:
            lib = tmp.with_suffix(".so")  # the exporter picks its output format by suffix
            try:
                built.executable.export_library(str(lib), **kw)
                lib.replace(tmp)
            finally:
                lib.unlink(missing_ok=True)
    except DeployKitError:
        raise
    except Exception as e:
        raise TargetError(f"{target.name}: exporting the library with {cxx or 'the host compiler'}"
                          f" failed: {first_line(e)}") from None
    return out


class RemoteTvmArtifact(Artifact):
    """A Relax VM living on a remote device; inputs are copied there once per `run`."""

    def __init__(self, model: ModelRef, target, built: tvm_build.Built, lib: Path):
        super().__init__(model, target, built.inputs, built.outputs, built.build_ms)
        self.built, self.lib, self.build_ms = built, lib, built.build_ms
        self.session = None
        self.where = ""
        self.connect_ms = self.upload_ms = self.first_ms = float("nan")
        key = rpc_key(target.config) or ""
        self.emulated = bool(target.config.get("emulated")) if not key else "emu" in key
        self.labels = built.labels + ((EMULATED_LABEL,) if self.emulated else ())
        self._rss_probe = self._rss_before = None
        self.memory_error = "the device session was not opened"

    @classmethod
    def build(cls, model: ModelRef, target) -> "RemoteTvmArtifact":
        from dataclasses import replace

        from .build_memo import MEMO, Entry, build_key

        key = build_key(model, target)
        hit = MEMO.get(key)
        if hit is not None and hit.lib is not None and hit.lib.is_file():
            # built and exported earlier in this process: only the device session is new (its
            # check below runs again: it checks this board, and times the first inference)
            art = cls(model, target, replace(hit.built, reused=True), hit.lib)
            t0 = time.perf_counter()
            art.open()
            # the session's cost: upload (once per board session) and load into a VM; not the
            # wait for a device (connect_ms: a tracker queues while every board is busy)
            art.session_create_ms = (time.perf_counter() - t0) * 1e3 - art.connect_ms
            art.check = tvm_build.check_outputs(art, art._timed_first_run,
                                                where=f" on {art.where}")
            return art
        device = pinned()
        if device is not None and device.builder is not None and device.builder.ready():
            # a pool's build processes (pool_build.py), once they have started
            built, lib = device.builder.build(model, target)
        else:
            # a one-board pool's worker and the caller's thread may build at once: two relax
            # builds at once in one process fail ("nested op_tag is not allowed"); the export
            # (a cross-linker run) may overlap
            with _BUILD_LOCK:
                built = tvm_build.build(model, target)
            lib = export_library(built, target, model)
        art = cls(model, target, built, lib)
        art.open()
        art.check = tvm_build.check_outputs(art, art._timed_first_run, where=f" on {art.where}")
        MEMO.put(key, Entry(replace(built, executable=None), lib=lib))
        return art

    def _fail(self, stage: str, e: BaseException) -> TargetError:
        return TargetError(f"device {self.where} failed during {stage}: {first_line(e)} "
                           f"(a retry gets another device of the same key, if there is one)")

    def open(self) -> None:
        """Reserve a device, upload the library and load it into a VM there."""
        from tvm import relax

        from . import rpc

        cfg = self.target.config
        t0 = time.perf_counter()
        device = pinned()
        alive_now()  # a pool's hang clock (pool.py) runs from here: the host's build is done
        if device is not None:  # a pool's board (pool.py): its session, held by the pool
            self.session, self.where = device.session, device.where
        else:
            self.session, self.where = rpc.connect(
                rpc_key(cfg), cfg.get("tracker"), cfg.get("rpc"),
                session_timeout=float(cfg.get("session_timeout", 0)),
                notify=lambda msg: print(f"deploykit: {msg}", file=sys.stderr))
        self.connect_ms = (time.perf_counter() - t0) * 1e3
        tdict = self.target.tvm_target
        self.env = {"machine": str(tdict.get("mtriple", "")).split("-")[0] or None,
                    "cpu_model": f"remote {tdict.get('mcpu', '?')} ({self.where})",
                    "tvm_target": tdict, "tvm_build_ms": self.build_ms,
                    "tvm_build_reused": self.built.reused,
                    "tuning_records": self.built.tuning_records,
                    "remote": {"where": self.where, "emulated": self.emulated,
                               "connect_ms": self.connect_ms, "server": _server(self.where),
                               "pooled": device is not None}}
        t0 = time.perf_counter()
        try:
            # once per session: rewriting a library the session process has loaded crashes it
            if device is None or device.first_upload(self.lib.name):
                self.session.upload(str(self.lib))
        except Exception as e:
            raise self._fail(f"upload of {self.lib.name}", e) from None
        self.upload_ms = (time.perf_counter() - t0) * 1e3
        alive_now()
        self.env["remote"]["upload_ms"] = self.upload_ms
        self._open_memory_probe()
        try:
            rlib = self.session.load_module(self.lib.name)
            self.dev = self.session.cpu(0)
            self.vm = relax.VirtualMachine(rlib, self.dev)
            self._main = self.vm["main"]
        except Exception as e:
            raise self._fail(f"loading {self.lib.name}", e) from None
        alive_now()

    def _open_memory_probe(self) -> None:
        """Load deploykit's /proc reader into the session process (device_memory.py) and read
        the process's RSS before the model is loaded; a device where that fails still runs,
        its report says why there is no memory figure."""
        from . import device_memory

        self._rss_probe = self._rss_before = None
        self.memory_error = None
        if pinned() is not None:
            self.memory_error = ("the device pool shares one session per board between models, "
                                 "so its peak RSS would cover earlier ones (profile without "
                                 "--parallel for a memory figure)")
            return
        try:
            self._rss_probe = device_memory.load(self.session,
                                                 self.target.config.get("cross_compiler"))
            self._rss_before = device_memory.read(self._rss_probe)
        except Exception as e:  # no compiler, a non-Linux device, a server without dlopen
            self._rss_probe, self.memory_error = None, first_line(e)

    def device_memory(self) -> dict:
        """The report's `memory` for this device: its session process's peak RSS so far."""
        from . import device_memory

        if self._rss_probe is None:
            return {"device": {"error": f"not measured: {self.memory_error}"}}
        try:
            after = device_memory.read(self._rss_probe)
        except Exception as e:
            return {"device": {"error": f"not measured: {first_line(e)}"}}
        return {"device": device_memory.memory_entry(self._rss_before, after, self.emulated)}

    def _args(self, feeds: Mapping[str, np.ndarray]) -> list:
        import tvm

        try:
            return [tvm.runtime.tensor(np.ascontiguousarray(feeds[s.name]), self.dev)
                    for s in self.inputs]
        except Exception as e:
            raise self._fail("input upload", e) from None

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        args = self._args(feeds)
        try:
            out = _to_numpy(self._main(*args))
        except Exception as e:
            raise self._fail("inference", e) from None
        alive_now()
        return out

    def _timed_first_run(self, feeds):
        t0 = time.perf_counter()
        out = self.run(feeds)
        self.first_ms = (time.perf_counter() - t0) * 1e3
        return out

    def timed_runner(self, feeds: Mapping[str, np.ndarray]):
        """One remote call per invocation, RPC round trip included (interleaved comparisons);
        `profile` uses the device-side `time_evaluator` instead."""
        args, main = self._args(feeds), self._main
        return lambda: main(*args)

    def per_op(self, feeds, runs: int = 20, trace_path: str | None = None) -> list[OpTime]:
        return []  # the VM's instrument hook is a local callback; it cannot run on the device

    def close(self) -> None:
        """Release the device (the tracker hands it to the next request): the connection closes
        when the last remote object of the session is gone."""
        import gc

        self.vm = self._main = self.session = self.dev = self._rss_probe = None
        gc.collect()


def profile_remote(artifact: RemoteTvmArtifact, feeds: Mapping[str, np.ndarray],
                   plan: TimingPlan = TimingPlan(), progress: bool = False) -> LatencyReport:
    """Device-side timing: `time_evaluator` repeats (number=1), one sample per repeat, one block
    per call, until the CI over block medians is within plan.target_rel_ci (measure.converged)
    or a cap is hit."""
    from ...measure.env import fingerprint
    from ...measure.timing import converged

    if not isinstance(artifact, RemoteTvmArtifact):
        raise TargetError(f"{artifact.target.name}: expected a remote TVM artifact")
    a = artifact
    try:
        a.vm.set_input("main", *a._args(feeds))
        timer = a.vm.time_evaluator("invoke_stateful", a.dev, number=1, repeat=1)
        timer("main")  # warm-up call (time_evaluator also discards its own first run)
        alive_now()
    except DeployKitError:
        raise
    except Exception as e:
        raise a._fail("timing warm-up", e) from None

    samples: list[float] = []
    blocks: list[Block] = []  # one per time_evaluator call; the device's load is not observable
    start = time.perf_counter()
    per_block = 5
    stop = "time-cap"
    shown = _progress(progress, f"timing on {a.where}")
    while True:
        t0 = time.perf_counter()
        try:
            res = a.vm.time_evaluator("invoke_stateful", a.dev, number=1,
                                      repeat=per_block)("main")
        except Exception as e:
            raise a._fail(f"timing (after {len(samples)} samples)", e) from None
        alive_now()
        blocks.append(Block(len(samples), len(res.results), 0.0, False))
        samples.extend(float(x) * 1e3 for x in res.results)
        took = time.perf_counter() - t0
        per_block = int(min(max(5, per_block * plan.block_s / max(took, 1e-6)), 1000))
        if shown:
            shown(len(samples))
        n = len(samples)
        if converged(samples, blocks, plan):
            stop = "ci-reached"
            break
        if n >= plan.max_samples:
            stop = "sample-cap"
            break
        if time.perf_counter() - start > plan.max_time_s:
            break
    memory = a.device_memory()  # after the timed runs: the peak covers load, first and steady
    t = a.target
    env = {**fingerprint(t.name, t.config, t.threads),
           **{k: v for k, v in a.env.items() if v is not None}}
    batch = int(next(iter(feeds.values())).shape[0]) if feeds else 1
    return LatencyReport(
        samples_ms=tuple(samples), target=t.name, target_config=dict(t.config),
        artifact_id=a.id, model_sha256=a.model.sha256, model_path=str(a.model.path), env=env,
        stop_reason=stop, session_create_ms=a.session_create_ms, first_inference_ms=a.first_ms,
        warmup_samples=1, batch=batch, blocks=tuple(blocks), labels=tuple(a.labels),
        memory=memory)


def _progress(enabled: bool, what: str):
    if not enabled:
        return None
    from rich.console import Console

    console = Console(stderr=True)

    def show(n: int) -> None:
        console.print(f"  {what}: {n} samples", end="\r")

    return show
