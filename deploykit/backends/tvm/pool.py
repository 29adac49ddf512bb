"""Measurement over a pool of TVM RPC devices of one key (`--tracker HOST:PORT --device KEY
--parallel N`), like MetaSchedule's RPC runner: N worker threads, each holding one device session
from the tracker, take measurement jobs from one queue.

Why sessions are held, not requested per job: a TVM RPC server serves one session at a time, so
an interleaved comparison can only run both models on the same board inside one session, and a
worker that let its session go could find every board taken by the others. A job runs with its
worker's device *pinned* to the thread (`pinned()`); RemoteTvmArtifact.open uses that session
instead of asking the tracker, so the Target API (compile, profile) stays as it is.

`aside` takes one board out of the pool for a job of its own while `map` runs on the others (a
search's baseline measured whole beside its layer units); `pool_compare.py` runs an interleaved
comparison on every board at once and pools the rounds.

Why threads: the host's share of a job (building, numpy) is short; the long part is the remote
call, during which TVM's FFI releases the GIL, so N boards really measure at once.

A board that drops out (its server killed, the network gone) fails the job's remote calls; the
pool then probes the session, and when the board is gone the job goes back to the queue for
another board (a free one of the key is requested from the tracker to replace it). Results made
before are kept; the pool gives up, with one line, only when no board is left.

A board that hangs instead (its server stopped, a wedged kernel: the TCP connection stays up)
would block its worker forever: a remote call has no timeout of its own. The remote code marks
each sign of life (`alive_now()`: a session opened, a library loaded, a timing block back); a
board silent for the pool's time budget (the longest measurement its caller asked for) plus
`hang_s` is cut off here (its connection shut down, which fails the blocked call) and then
handled exactly like a board that died. Host-side builds do not count: they run before the
clock starts, in build processes (pool_build.py) when the pool has several boards.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, Sequence, TypeVar

from ...errors import InputError, TargetError, first_line

T = TypeVar("T")
R = TypeVar("R")

_local = threading.local()


@dataclass(frozen=True)
class PoolConfig:
    """Where the boards are and how many to use at once."""

    tracker: str  # HOST:PORT of the RPC tracker
    key: str  # the device key the boards registered with (`rpc_server --key KEY`)
    parallel: int = 1  # boards measuring at once
    hang_s: float = 60.0  # silence beyond the time budget after which a board counts as hung

    def __post_init__(self) -> None:
        from .rpc import parse_hostport

        parse_hostport(self.tracker, "--tracker")
        if not self.key:
            raise InputError("--tracker needs --device KEY (see `deploykit devices --tracker ...`)")
        if not isinstance(self.parallel, int) or self.parallel < 1:
            raise InputError(f"--parallel must be a positive integer, got {self.parallel!r}")
        check_hang_s(self.hang_s)


def check_hang_s(hang_s) -> None:
    """--device-timeout is a positive, finite number of seconds (refused whether or not a pool
    is asked for, rather than ignored)."""
    import math

    if not (isinstance(hang_s, (int, float)) and math.isfinite(hang_s) and hang_s > 0):
        raise InputError(f"--device-timeout must be a positive number of seconds, got "
                         f"{hang_s!r}")


def pool_config(tracker: str | None, key: str | None, parallel: int | None,
                hang_s: float | None = None) -> PoolConfig | None:
    """The pool the CLI's --tracker/--device/--parallel ask for; None without --parallel (one
    device per session, as before). --parallel without --tracker is a usage error."""
    if hang_s is not None:
        check_hang_s(hang_s)
    if parallel is None:
        return None
    if not tracker:
        raise InputError("--parallel measures on several devices of one key: it needs "
                         "--tracker HOST:PORT --device KEY")
    return PoolConfig(tracker, key or "", parallel, **({} if hang_s is None else
                                                         {"hang_s": hang_s}))


def check_target(target) -> None:
    """A pool measures on TVM RPC boards: refuse any other target before anything runs."""
    if target.config.get("backend") != "tvm" or not target.config.get("remote"):
        raise InputError(f"--tracker/--parallel measure on TVM RPC devices; target "
                         f"'{target.name}' is not a remote TVM target (e.g. tvm-aarch64)")


@dataclass
class Device:
    """One board of the pool: its session and which server it is."""

    session: Any
    server: str  # HOST:PORT of the RPC server the tracker handed out
    key: str
    tracker: str

    @property
    def where(self) -> str:
        return f"key '{self.key}' via tracker {self.tracker} (server {self.server})"

    uploaded: set[str] = field(default_factory=set)  # library names already on the board
    jobs: int = 0  # jobs started on this board (a job running: `busy`)
    busy: bool = False
    builder: Any = None  # pool_build.BuildPool of a pool of several boards, else None
    since: float | None = None  # monotonic time of the running job's last sign of life
    hung: str | None = None  # why the pool cut this board off (it stopped answering)

    def first_upload(self, name: str) -> bool:
        """True the first time `name` goes to this session: the board keeps it for the
        session, and a session process whose loaded library is rewritten crashes (qemu and a
        real board alike: the file is mapped)."""
        if name in self.uploaded:
            return False
        self.uploaded.add(name)
        return True

    def alive(self) -> bool:
        """Does the session still answer? A no-op remote call (`exist` is answered locally)."""
        try:
            self.session.cpu(0).sync()
            return True
        except Exception:
            return False


def pinned() -> Device | None:
    """The pool device this thread measures on, or None (outside a pool)."""
    return getattr(_local, "device", None)


def alive_now() -> None:
    """The remote code's sign of life from this thread's board (a session opened, a timing
    block back): the pool's hang clock starts again. A no-op outside a pool."""
    dev = pinned()
    if dev is not None:
        dev.since = time.monotonic()


def cut(server: str) -> bool:
    """Shut down this process's TCP connection to `server` (HOST:PORT): a call blocked on it
    fails at once, as if the board had died. TVM keeps its sockets to itself, so the
    connection is found among the process's descriptors by its peer address. False when none
    is found (no /dev/fd on this system, or the connection is already gone)."""
    import os
    import socket

    host, _, port = server.rpartition(":")
    try:
        peers = {(a[4][0], int(port)) for a in socket.getaddrinfo(host, int(port),
                                                                    type=socket.SOCK_STREAM)}
    except (OSError, ValueError):
        return False
    fd_dir = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
    try:
        fds = [int(f) for f in os.listdir(fd_dir)]
    except OSError:
        return False
    found = False
    for fd in fds:
        for family in (socket.AF_INET, socket.AF_INET6):
            try:
                s = socket.fromfd(fd, family, socket.SOCK_STREAM)  # a duplicate: closed below
            except OSError:
                break  # not a socket
            try:
                if s.family == family and tuple(s.getpeername()[:2]) in peers:
                    s.shutdown(socket.SHUT_RDWR)  # acts on the connection, not on the dup
                    found = True
            except OSError:
                pass
            finally:
                s.close()
    return found


@contextmanager
def pin(device: Device) -> Iterator[Device]:
    before = pinned()
    _local.device = device
    try:
        yield device
    finally:
        _local.device = before


class DevicePool:
    """N device sessions of one key; `map` runs jobs on them, `run` runs one job on one board.
    Use as a context manager: the boards go back to the tracker on exit."""

    def __init__(self, cfg: PoolConfig, notify: Callable[[str], None] | None = None,
                 budget_s: float = 0.0):
        self.cfg = cfg
        self.notify = notify or (lambda msg: print(f"deploykit: {msg}", file=sys.stderr))
        # the longest stretch a job may run without a sign of life (alive_now): the longest
        # measurement the caller will ask for (an interleaved comparison has none inside)
        self.budget_s = float(budget_s)
        self.devices: list[Device] = []
        self.lost: list[str] = []  # servers that dropped out, in order
        self.builder = None  # pool_build.BuildPool with several boards
        self._aside: list[Aside] = []  # `aside` jobs, their boards out of `devices`
        self._lock = threading.Lock()

    @property
    def hang_after_s(self) -> float:
        """Seconds without a sign of life after which a running job's board counts as hung."""
        return self.budget_s + self.cfg.hang_s

    def __enter__(self) -> "DevicePool":
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        from .rpc import check_reachable, parse_hostport, tracker_devices

        host, port = parse_hostport(self.cfg.tracker, "tracker")
        check_reachable(host, port, "RPC tracker")
        rows = {d.key: d for d in tracker_devices(self.cfg.tracker)}
        total = rows[self.cfg.key].total if self.cfg.key in rows else 0
        if total == 0:
            known = ", ".join(sorted(rows)) or "none"
            raise TargetError(f"no device with key '{self.cfg.key}' is registered with tracker "
                              f"{self.cfg.tracker} (keys: {known})")
        n = min(self.cfg.parallel, total)
        if n < self.cfg.parallel:
            self.notify(f"--parallel {self.cfg.parallel}: only {total} device(s) of key "
                        f"'{self.cfg.key}' are registered with tracker {self.cfg.tracker}; "
                        f"measuring on {n}")
        if rows[self.cfg.key].free < n:
            self.notify(f"{n - rows[self.cfg.key].free} of the {n} device(s) are busy; "
                        f"waiting for them")
        from .pool_build import BuildPool, workers_for

        if workers_for(n):  # started first: their TVM import overlaps the boards' requests
            self.builder = BuildPool(workers_for(n))
        try:
            self.devices = [self._request() for _ in range(n)]
        except BaseException:  # no board (or Ctrl-C while queued): nothing left running
            self.close()
            raise

    def _request(self) -> Device:
        from .rpc import parse_hostport, request

        host, port = parse_hostport(self.cfg.tracker, "tracker")
        session, server = request(host, port, self.cfg.key)
        return Device(session, server, self.cfg.key, self.cfg.tracker, builder=self.builder)

    def _replacement(self) -> Device | None:
        """A free board of the key, if the tracker has one now (never waits in its queue: the
        other boards are this pool's own)."""
        from .rpc import tracker_devices

        try:
            free = {d.key: d.free for d in tracker_devices(self.cfg.tracker)}.get(self.cfg.key, 0)
            return self._request() if free > 0 else None
        except TargetError:
            return None

    def close(self) -> None:
        import gc

        self.devices = []
        gc.collect()  # the sessions close with their last reference: the boards are free again
        if self.builder is not None:
            self.builder.close()
            self.builder = None

    def summary(self) -> dict[str, Any]:
        """Which boards measured (a result's device fingerprint) and which dropped out."""
        return {"tracker": self.cfg.tracker, "key": self.cfg.key, "parallel": self.cfg.parallel,
                "servers": [d.server for d in self.devices], "lost": list(self.lost)}

    def run(self, fn: Callable[[], R]) -> R:
        """`fn()` on one board, pinned for all its compiles: an interleaved comparison (the
        gate, a recommendation's confirmation) runs both models on the same device."""
        return self.map(lambda _: fn(), [None])[0]

    def aside(self, fn: Callable[[], R]) -> "Aside[R]":
        """Start `fn()` on one board, in a thread of its own, and take that board out of the
        pool until `result()` is called: `map` meanwhile runs on the others (a search measures
        its baseline whole while its layer units go to the other boards). The pool must have
        at least two boards (one is left for `map`)."""
        with self._lock:
            if len(self.devices) < 2:
                raise ValueError("aside needs a pool of at least two boards")
            dev = self.devices.pop()
            job = Aside(self, dev, fn)
            self._aside.append(job)
        job.start()
        return job

    def map(self, fn: Callable[[T], R], jobs: Sequence[T],
            on_result: Callable[[int, R], None] | None = None,
            progress: str | None = None) -> list[R]:
        """[fn(job)] in the order of `jobs`, up to N at once, each on a board pinned to its
        worker. `on_result(i, result)` runs in this (the calling) thread as each finishes, so a
        caller's store never sees another thread. A job whose board dropped out is retried on
        another; any other exception stops the pool (jobs already running finish) and is raised."""
        if not self.devices and not self._aside:
            raise TargetError(f"no device of key '{self.cfg.key}' is left in the pool")
        todo: queue.Queue[int] = queue.Queue()
        for i in range(len(jobs)):
            todo.put(i)
        done: queue.Queue[tuple[int, str, Any]] = queue.Queue()  # (index, kind, value)
        stop = threading.Event()
        unfinished = [len(jobs)]  # a job a lost board gave back is not finished: wait for it

        def finish(i: int, kind: str, value: Any) -> None:
            with self._lock:
                unfinished[0] -= 1
            done.put((i, kind, value))

        def worker(dev: Device) -> None:
            with pin(dev):
                while not stop.is_set():
                    try:
                        i = todo.get(timeout=0.05)
                    except queue.Empty:
                        if unfinished[0] == 0:
                            break
                        continue
                    dev.since, dev.busy, dev.jobs = None, True, dev.jobs + 1
                    try:
                        finish(i, "ok", fn(jobs[i]))
                        continue
                    except BaseException as e:  # noqa: BLE001 (judged below, re-raised there)
                        err = e
                    finally:
                        dev.busy, dev.since = False, None
                    if dev.hung is None and dev.alive():
                        stop.set()
                        finish(i, "error", err)
                        break
                    todo.put(i)  # its board is gone: another one measures it
                    done.put((i, "lost", f"{dev.server} ({dev.hung or first_line(err)})"))
                    dev = self._replacement() or dev
                    if not dev.alive():
                        break
                    _local.device = dev
                    with self._lock:
                        self.devices.append(dev)
            done.put((-1, "exit", dev))

        threads = [threading.Thread(target=worker, args=(d,), daemon=True) for d in self.devices]
        for t in threads:
            t.start()
        results: dict[int, R] = {}
        errors: dict[int, BaseException] = {}
        running = len(threads)
        from ...progress import progress_bar

        with progress_bar(bool(progress), count=True) as bar, _joined(threads, stop):
            task = bar.add_task(progress or "", total=len(jobs),
                                info=f"on {len(self.devices)} device(s)") if bar else None
            while True:
                if not running:  # every board dropped out: one running an `aside` job takes
                    dev = None   # over when that job is done (else the jobs left are lost)
                    while dev is None and self._aside and not errors and len(results) < len(jobs):
                        dev = self._aside[0].give_back()
                    if dev is None:
                        break
                    threads.append(threading.Thread(target=worker, args=(dev,), daemon=True))
                    threads[-1].start()
                    running += 1
                try:
                    i, kind, value = done.get(timeout=0.5)
                except queue.Empty:
                    self._watch()
                    continue
                if kind == "exit":
                    running -= 1
                elif kind == "ok":
                    results[i] = value
                    if on_result is not None:
                        on_result(i, value)
                    if bar:
                        bar.advance(task)
                elif kind == "error":
                    errors[i] = value
                else:
                    self._drop(value)
                    if bar:
                        bar.update(task, info=f"on {len(self.devices)} device(s); lost {value}")
        if errors:
            raise errors[min(errors)]
        if len(results) < len(jobs):
            raise TargetError(
                f"every device of key '{self.cfg.key}' dropped out ({', '.join(self.lost)}); "
                f"{len(jobs) - len(results)} of {len(jobs)} measurements not made (the "
                f"{len(results)} made are kept)")
        return [results[i] for i in range(len(jobs))]

    def _watch(self) -> None:
        """Cut off a board whose running job has been silent too long (see the docstring)."""
        now = time.monotonic()
        for dev in list(self.devices) + [a.dev for a in self._aside]:
            since = dev.since
            if dev.busy and since is not None and dev.hung is None \
                    and now - since > self.hang_after_s:
                dev.hung = (f"no answer for {now - since:.0f} s, more than the time budget "
                            f"{self.budget_s:.0f} s + --device-timeout {self.cfg.hang_s:g} s: "
                            f"hung")
                if not cut(dev.server):
                    self.notify(f"device {dev.server} stopped answering, and its connection "
                                f"could not be shut down from here; waiting for it")

    def _drop(self, what: str) -> None:
        server = what.split(" ", 1)[0]
        with self._lock:
            self.devices = [d for d in self.devices
                            if d.server != server or (d.hung is None and d.alive())]
        self.lost.append(server)
        self.notify(f"device {what} dropped out; its measurement is retried on another one")


class Aside(Generic[R]):
    """A job running on one board taken out of its pool (`DevicePool.aside`)."""

    def __init__(self, pool: DevicePool, dev: Device, fn: Callable[[], R]):
        self.pool, self.dev, self.fn = pool, dev, fn
        self._got: list[tuple[bool, Any]] = []
        self._back: bool | None = None  # the board went back to the pool (None: not yet)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        dev = self.dev
        with pin(dev):
            dev.since, dev.busy, dev.jobs = None, True, dev.jobs + 1
            try:
                self._got.append((True, self.fn()))
            except BaseException as e:  # noqa: BLE001 (judged in result(), re-raised there)
                self._got.append((False, e))
            finally:
                dev.busy, dev.since = False, None

    def give_back(self) -> Device | None:
        """Wait for the job (watching its board for a hang) and put its board back in the pool
        when it still answers; returns that board (None: it dropped out, and is reported lost).
        Once: a later call (`result`, after `map` took the board over) says what the first did."""
        while self._thread.is_alive():
            self._thread.join(timeout=0.5)
            self.pool._watch()
        pool, dev = self.pool, self.dev
        if self._back is None:
            ok, value = self._got[0]
            back = ok or (dev.hung is None and dev.alive())
            with pool._lock:
                pool._aside.remove(self)
                if back:
                    pool.devices.append(dev)
            self._back = back
            if not back:
                pool.lost.append(dev.server)
                pool.notify(f"device {dev.server} ({dev.hung or first_line(value)}) dropped "
                            f"out; its measurement is retried on another one")
        return dev if self._back else None

    def result(self) -> R:
        """Wait for the job, give the board back to the pool and return the job's result;
        when the board dropped out, the job is run again on another board of the pool (as
        `map` would), and a failure of the job itself is raised."""
        back = self.give_back()
        ok, value = self._got[0]
        if back is None:
            return self.pool.run(self.fn)
        if ok:
            return value
        raise value


@contextmanager
def _joined(threads: list[threading.Thread], stop: threading.Event) -> Iterator[None]:
    """The workers are joined however the caller's loop ends; when it fails (a store write in
    `on_result`, Ctrl-C) they take no new job, and the running ones finish first."""
    try:
        yield
    except BaseException:
        stop.set()
        raise
    finally:
        for t in threads:
            t.join()
