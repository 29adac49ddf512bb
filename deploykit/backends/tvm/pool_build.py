"""Host-side builds of a device pool's jobs in separate processes (like MetaSchedule's
LocalBuilder beside its RPC runner), so that N boards are not fed by one serial builder.

Why processes: a job's host share (Relax build ~1.5 s + cross-link ~0.6 s for a small CNN) is
longer than its board share, and two Relax builds cannot run at once in one process ("nested
op_tag is not allowed"; remote.py serialises them with a lock). In worker processes the builds
overlap each other and the boards' measurements.

A worker runs exactly what the in-process path runs (build.build, then remote.export_library):
the same library file in the same cache path, the same labels and records. What crosses the
process boundary is the library's path and the build's metadata; the executable itself stays in
the worker (the board loads the exported file). A failed build raises its own one-line
DeployKitError here, as it would in-process; a worker that dies (killed, out of memory) is a
TargetError naming the model, and the pool is not used again.
"""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from ...core import ModelRef
from ...errors import DeployKitError, TargetError, first_line


def workers_for(boards: int) -> int:
    """Build processes for `boards` boards: one per board, at most one per core; 0 (build in
    this process, as before) for a single board, where nothing could overlap."""
    if boards <= 1:
        return 0
    return max(1, min(boards, os.cpu_count() or 1))


def _init_worker() -> None:
    """Ctrl-C is the parent's to handle (it shuts the pool down): no traceback per worker."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _warm() -> int:
    """Import TVM and its ONNX frontend once per worker while the boards are being reserved."""
    import tvm  # noqa: F401
    from tvm.relax.frontend import onnx  # noqa: F401

    return os.getpid()


def _build_job(model: ModelRef, target) -> tuple[Any, str]:
    """In a worker: build and export as RemoteTvmArtifact.build would; (Built without its
    executable, library path)."""
    from . import build as tvm_build
    from .remote import export_library

    try:
        built = tvm_build.build(model, target)
        lib = export_library(built, target, model)
    except DeployKitError:
        raise
    except Exception as e:  # a type the parent may not unpickle: its message, one line
        raise TargetError(f"{target.name}: TVM build of {model.path.name} failed: "
                          f"{first_line(e)}") from None
    return replace(built, executable=None), str(lib)


class BuildPool:
    """Up to `workers` build processes (spawned: TVM's runtime threads do not survive fork),
    started when the pool opens and warmed with TVM's import."""

    def __init__(self, workers: int):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        self.workers = workers
        self._broken: str | None = None
        self._lock = threading.Lock()
        self._ex = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                       initializer=_init_worker)
        self._warming = [self._ex.submit(_warm) for _ in range(workers)]

    def ready(self) -> bool:
        """Have the workers imported TVM? Until then a job builds in its own process as with
        one board (measured: two workers' spawn and import took ~20 s on the loaded 2-core
        machine, during which the first jobs would otherwise wait)."""
        return self._broken is not None or all(f.done() for f in self._warming)

    def build(self, model: ModelRef, target) -> tuple[Any, Path]:
        """(Built, library path) of `model` for `target`, built in a worker process."""
        from concurrent.futures.process import BrokenProcessPool

        if self._broken:
            raise TargetError(self._broken)
        try:
            built, lib = self._ex.submit(_build_job, model, target).result()
        except BrokenProcessPool as e:
            with self._lock:
                self._broken = self._broken or (
                    f"{target.name}: a build process died while building {model.path.name} "
                    f"({first_line(e) or 'killed'}); nothing more is built in this run")
            raise TargetError(self._broken) from None
        except RuntimeError as e:  # submit after shutdown (the pool is closing)
            raise TargetError(f"{target.name}: build of {model.path.name} not started: "
                              f"{first_line(e)}") from None
        return built, Path(lib)

    def pids(self) -> list[int]:
        """The worker processes' ids (a test kills one)."""
        return sorted(getattr(self._ex, "_processes", None) or {})

    def close(self) -> None:
        """Stop the workers; a build still running is abandoned (its run is ending)."""
        self._ex.shutdown(wait=True, cancel_futures=True)
