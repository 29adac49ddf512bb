"""`deploykit verify`: a bundle's self-test run here, under emulation, or on a device over TVM RPC.

Integrity (every file of the folder listed, every listed file present inside the bundle with its
sha256, every path the manifest uses a listed file, the manifest digest) is always checked first,
with deploykit's own copy of runners/selftest.py, never the bundle's; a bundle that fails it is
reported and nothing of it is loaded or executed. Otherwise the model runs on its golden inputs:
ORT bundles in onnxruntime, OpenVINO bundles in its CPU plugin; TVM bundles through their C++
runner (native, or under qemu-user for another architecture), the tvm Python runtime
(--python), or uploaded to a device over RPC. With --device ssh:// or adb:// every kind runs on
the device (device_run.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..core import Result
from ..errors import InputError
from .runners import selftest as st


@dataclass(frozen=True)
class VerifyResult(Result):
    problems: tuple[str, ...]
    rows: tuple[Mapping[str, Any], ...]
    how: str
    seconds: float
    timing: str | None = None
    labels: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.rows) and all(r["ok"] for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": list(self.problems), "rows": list(self.rows),
                "how": self.how, "seconds": self.seconds, "timing": self.timing,
                "labels": list(self.labels)}

    def lines(self) -> list[str]:
        return st.report_lines(self.problems, self.rows)


def _rpc_runner(device: str, tracker: str, timeout_s: int):
    """A selftest runner that uploads the library to a device of `device` key and runs it there.
    Connects first, so that an unreachable tracker or device is a usage error (exit 2)."""
    from ..backends.tvm.rpc import connect

    remote, where = connect(device, tracker, None, session_timeout=timeout_s)
    held = {"remote": remote}
    del remote

    def run(bundle: Path, manifest: Mapping[str, Any], feeds: Mapping[str, Any]):
        import tvm
        from tvm import relax

        remote = held["remote"]
        lib = bundle / manifest["runtime"]["model"]
        remote.upload(str(lib))
        dev = remote.cpu()
        vm = relax.VirtualMachine(remote.load_module(lib.name), dev)
        out = vm["main"](*[tvm.runtime.tensor(v, dev) for v in feeds.values()])
        return st.flatten_tvm(out)

    def release() -> None:
        """Hand the device back now: the session ends when its last remote object is gone (a
        leaked one holds the device, and every later request queues, until its timeout)."""
        import gc

        held.clear()
        gc.collect()

    return run, release, where


def verify(bundle: str | Path, *, device: str | None = None, tracker: str | None = None,
           python: bool = False, repeat: int = 1, timeout_s: int = 600) -> VerifyResult:
    """Run the self-test; raises InputError (exit 2) when the folder is not a usable bundle."""
    bundle = Path(bundle)
    try:
        manifest = st.load_manifest(bundle)
    except st.BundleUnusable as e:
        raise InputError(str(e)) from None
    backend = manifest["runtime"].get("backend")
    if backend not in st.RUNNERS:
        raise InputError(f"{bundle}: unknown bundle runtime '{backend}'")
    from .transport import is_url

    if is_url(device):  # ssh:// or adb://: integrity here, then push, self-test there (ORT, TVM)
        from .device_run import run_on_device
        from .transport import parse

        if tracker is not None:
            raise InputError("--tracker is for TVM RPC device keys, not for ssh:// or adb://")
        t0 = time.perf_counter()
        r = run_on_device(parse(device), bundle)
        runtime = {"tvm": "the C++ runner", "openvino": "openvino"}.get(backend, "onnxruntime")
        how = f"{runtime} on {r.where} ({r.runtime})" if r.runtime else \
            "integrity check only (nothing pushed or run)"
        return VerifyResult(r.problems, r.rows, how, time.perf_counter() - t0)
    if (device is None) != (tracker is None):
        raise InputError("--device and --tracker go together")
    t0 = time.perf_counter()
    if device:
        if backend != "tvm":
            raise InputError(f"--device/--tracker run TVM bundles over RPC; this is an "
                             f"{'ORT' if backend == 'ort' else 'OpenVINO'} bundle")
        run, release, where = _rpc_runner(device, tracker, timeout_s)
        try:
            problems, rows = st.selftest(bundle, run)
        finally:
            release()
        return VerifyResult(tuple(problems), tuple(rows), f"TVM RPC device {where}",
                            time.perf_counter() - t0)
    if backend in ("ort", "openvino") or python:
        if python and backend == "tvm":
            from .tvm import host_arch

            if manifest["runtime"]["arch"] != host_arch():  # checked before anything loads
                raise InputError(f"--python runs the library in this machine's tvm; the bundle "
                                 f"is for {manifest['runtime']['arch']}")
        problems, rows = st.selftest(bundle)
        how = {"ort": "onnxruntime (Python)", "openvino": "OpenVINO CPU plugin (Python)"}.get(
            backend, "tvm runtime (Python)")
        return VerifyResult(tuple(problems), tuple(rows), how, time.perf_counter() - t0)

    from .tvm import run_runner

    problems = st.check_integrity(bundle, manifest)
    if problems:  # never execute the runner (or load its libraries) of a changed bundle
        return VerifyResult(tuple(problems), (), "integrity check only (nothing run)",
                            time.perf_counter() - t0)
    res = run_runner(bundle, manifest, repeat)
    if res["error"]:
        problems.append(f"runner failed on {manifest['runtime']['model']}: {res['error']}")
    labels = ("emulated",) if "emulated" in res["how"] else ()
    return VerifyResult(tuple(problems), tuple(res["rows"]), res["how"],
                        time.perf_counter() - t0, res["timing"], labels)
