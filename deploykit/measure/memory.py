"""Resident memory per phase (load, first inference, steady inference), sampled from the OS.

Why sampling and not the runtimes' own counters: ORT's arena statistics, OpenVINO's and TVM's
allocators each count something different and none counts everything the process maps (weights
mmapped, kernels JITted, thread stacks), while the OS's resident set size is what a device runs
out of. A thread reads this process's RSS (psutil) every ~10 ms while a phase runs and keeps the
peak; it never runs while a timed block is measured: the load phase and the first inference are
sampled as they happen (they are timed once, so its few microseconds every 10 ms are within the
noise of a one-shot measurement) and the steady phase is its own pass after timing. On Linux,
in a process deploykit owns (the CLI, the gate's probes), the kernel's high-water mark (VmHWM,
reset per phase through /proc/self/clear_refs) is read as well, so a peak shorter than the
interval is not missed; the report names its source.

Deltas are over the RSS just before loading, so they are what the model costs, not the Python
interpreter and the imported runtime. The absolute peaks are what `/usr/bin/time -v` would show
for a process that did only this (tools/bench_memory.py compares them).
Freed memory that the allocator keeps (glibc arenas) is reused by later phases: in one process,
measure one model per process for numbers that add up (the gate does, gate/memory_probe.py).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

INTERVAL_S = 0.01
STEADY_MIN_S = 0.2  # the steady pass runs at least this long and at least STEADY_MIN_RUNS calls
STEADY_MIN_RUNS = 10


def _psutil_rss() -> Callable[[], int]:
    import psutil

    proc = psutil.Process(os.getpid())
    return lambda: int(proc.memory_info().rss)


# The seam for the RSS reader: tests plant a scripted reader (the machine's numbers are not ours).
make_rss_reader: Callable[[], Callable[[], int]] = _psutil_rss


def preload() -> None:
    """Import what timing imports later (scipy.stats, rich's progress bar) before a model is
    loaded, so that their tens of MiB do not count as the model's in the later phases' deltas."""
    import scipy.stats  # noqa: F401
    import rich.progress  # noqa: F401


@dataclass(frozen=True)
class Phase:
    """Peak RSS of one phase, the RSS when it began, and how many samples the peak rests on;
    `kernel_peak_bytes` is the kernel's own high-water mark of the phase where it was read
    (then `peak_bytes` includes it), None where it was not."""

    start_bytes: int
    peak_bytes: int
    samples: int
    kernel_peak_bytes: int | None = None
    sampled_peak_bytes: int | None = None  # the samples' own peak (None: same as peak_bytes)


_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def _reset_kernel_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0: "5" > clear_refs)."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _kernel_peak() -> int | None:
    """This process's VmHWM in bytes, from the kernel (None off Linux)."""
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


_kernel_depth = 0  # samplers inside a sampler: only the outermost resets the kernel's mark
# Resetting VmHWM also resets what `/usr/bin/time -v` (ru_maxrss) reports for the process
# (measured: tools/bench_memory.py --explain), so it is done only where deploykit owns the
# process: the CLI and the gate's fresh probe processes call own_process(); deploykit used as a
# library inside someone else's program samples only.
_kernel_enabled = False


def own_process(enabled: bool = True) -> None:
    """Allow the samplers to reset and read this process's kernel high-water mark."""
    global _kernel_enabled
    _kernel_enabled = enabled


class RssSampler:
    """A context manager: samples RSS every `interval_s` on a daemon thread from enter to exit
    (and once at each end, so a phase shorter than the interval still has two samples).

    Where the kernel keeps a resettable high-water mark (Linux), the phase's peak is also read
    from it: VmHWM is reset when the phase begins and read when it ends, so an allocation that
    lives shorter than the sampling interval still counts. Only in a process deploykit owns
    (own_process()); a planted `reader` (tests) turns it off as well."""

    def __init__(self, interval_s: float = INTERVAL_S, reader: Callable[[], int] | None = None):
        self.interval_s = interval_s
        self.read = reader or make_rss_reader()
        self._use_kernel = reader is None and _kernel_enabled
        self._kernel = False
        self.kernel_peak_bytes: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.start_bytes = 0
        self.peak_bytes = 0
        self.samples = 0

    def _take(self) -> None:
        v = self.read()
        self.samples += 1
        if v > self.peak_bytes:
            self.peak_bytes = v

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._take()

    def __enter__(self) -> "RssSampler":
        global _kernel_depth
        if self._use_kernel and _kernel_depth == 0:
            self._kernel = _reset_kernel_peak()
        _kernel_depth += 1
        self.start_bytes = self.read()
        self.peak_bytes, self.samples = self.start_bytes, 1
        self._thread = threading.Thread(target=self._loop, name="deploykit-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        global _kernel_depth
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self._take()
        _kernel_depth -= 1
        if self._kernel:
            self.kernel_peak_bytes = _kernel_peak()

    @property
    def phase(self) -> Phase:
        """The phase: its peak is the larger of the samples' and the kernel's."""
        k = self.kernel_peak_bytes
        return Phase(self.start_bytes, self.peak_bytes if k is None else max(k, self.peak_bytes),
                     self.samples, k, self.peak_bytes)


def steady_pass(fn: Callable[[], object], min_s: float = STEADY_MIN_S,
                min_runs: int = STEADY_MIN_RUNS) -> Phase:
    """Peak RSS while `fn` runs repeatedly, untimed (after the timed blocks, never during)."""
    with RssSampler() as s:
        t_end = time.perf_counter() + min_s
        n = 0
        while n < min_runs or time.perf_counter() < t_end:
            fn()
            n += 1
    return s.phase


def weight_bytes(path: str) -> int | None:
    """Bytes of the model's initializers (external data included), without loading tensors."""
    try:
        from ..onnxio import load_onnx

        proto = load_onnx(path, load_external=False)
    except Exception:  # a model that is not ONNX (a TVM .so): no weight count
        return None
    import numpy as np
    from onnx import helper

    total = 0
    for t in proto.graph.initializer:
        n = int(np.prod(t.dims)) if len(t.dims) else 1
        try:
            total += n * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        except (KeyError, TypeError, ValueError):
            continue
    return total


def file_bytes(path: str) -> int | None:
    """The model file's size on disk."""
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def memory_dict(before: int, load: Phase | None, first: Phase | None, steady: Phase | None,
                model_path: str) -> dict[str, Any]:
    """The report's `memory` mapping (plain JSON: absolute bytes and deltas over `before`)."""
    phases = [p for p in (load, first, steady) if p is not None]
    kernel = bool(phases) and all(p.kernel_peak_bytes is not None for p in phases)
    d: dict[str, Any] = {"rss_before_bytes": before,
                         "source": ("kernel VmHWM per phase + psutil rss" if kernel
                                    else "psutil rss"),
                         "interval_ms": INTERVAL_S * 1e3}
    for name, ph in (("load", load), ("first", first), ("steady", steady)):
        if ph is not None:
            d[f"{name}_peak_bytes"] = ph.peak_bytes
            d[f"{name}_delta_bytes"] = ph.peak_bytes - before
            d[f"{name}_samples"] = ph.samples
            if ph.kernel_peak_bytes is not None:  # and what the 10 ms samples alone saw
                d[f"{name}_sampled_peak_bytes"] = ph.sampled_peak_bytes
    d["weight_bytes"] = weight_bytes(model_path)
    d["file_bytes"] = file_bytes(model_path)
    return d


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{sign}{n / size:.1f} {unit}"
    return f"{sign}{int(n)} B"
