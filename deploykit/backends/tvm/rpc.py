"""TVM RPC plumbing: reach a device directly or through a tracker, list a tracker's devices, and
start trackers/servers on loopback (tests, the emulated ARM device).

Security: an RPC server loads and runs whatever library a client uploads. Everything here binds
127.0.0.1 by default; never expose a server or tracker to an untrusted network.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ...errors import InputError, TargetError, first_line

DEFAULT_HOST = "127.0.0.1"


def rpc_key(config: Mapping[str, Any]) -> str | None:
    """The TVM RPC device key (`--device KEY`); a `[device]` table is instead what a board
    reached with --device ssh:// or adb:// needs (bundle/device_sh.py)."""
    key = config.get("device")
    return key if isinstance(key, str) and key else None


def parse_hostport(text: str, what: str = "address") -> tuple[str, int]:
    """"HOST:PORT" -> (host, port), or a one-line InputError."""
    host, sep, port = str(text).rpartition(":")
    try:
        if not sep or not host:
            raise ValueError
        p = int(port)
        if not 0 < p < 65536:
            raise ValueError
    except ValueError:
        raise InputError(f"bad {what} {text!r}: expected HOST:PORT") from None
    return host, p


def check_reachable(host: str, port: int, what: str, timeout: float = 3.0) -> None:
    """Fail in seconds with a clear message, instead of TVM's 60 s of silent retries."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise TargetError(f"{what} {host}:{port} is not reachable ({e.strerror or e}); "
                          f"is it running?") from None


@dataclass(frozen=True)
class DeviceKey:
    """One key of a tracker: how many servers registered it, and how many are free."""

    key: str
    total: int
    free: int
    pending: int  # requests waiting in the queue
    addresses: tuple[str, ...]

    @property
    def busy(self) -> int:
        return self.total - self.free


def tracker_devices(tracker: str) -> list[DeviceKey]:
    """The keys registered with a tracker and their free/busy counts."""
    from tvm import rpc

    host, port = parse_hostport(tracker, "tracker")
    check_reachable(host, port, "RPC tracker")
    try:
        client = rpc.connect_tracker(host, port)
        summary = client.summary()
        client.close()
    except (RuntimeError, OSError) as e:
        raise TargetError(f"RPC tracker {host}:{port} did not answer: "
                          f"{first_line(e)}") from None
    addrs: dict[str, list[str]] = {}
    for item in summary.get("server_info", []):
        key = item["key"].split(":", 1)[-1]  # "server:rasp4" -> "rasp4"
        addrs.setdefault(key, []).append(":".join(map(str, item["addr"])))
    rows = []
    queue = summary.get("queue_info", {})
    for key in sorted(set(addrs) | set(queue)):
        q = queue.get(key, {})
        rows.append(DeviceKey(key, len(addrs.get(key, ())), int(q.get("free", 0)),
                              int(q.get("pending", 0)), tuple(addrs.get(key, ()))))
    return rows


def connect(device_key: str | None, tracker: str | None, server: str | None,
            session_timeout: float = 0, notify=None):
    """An RPC session: through the tracker (any free device of `device_key`, queueing while all
    are busy) or straight to a server HOST:PORT. Returns (session, description)."""
    from tvm import rpc

    if tracker:
        if not device_key:
            raise InputError("--tracker needs --device KEY (see `deploykit devices --tracker ...`)")
        host, port = parse_hostport(tracker, "tracker")
        check_reachable(host, port, "RPC tracker")
        rows = {d.key: d for d in tracker_devices(tracker)}
        if device_key not in rows or rows[device_key].total == 0:
            known = ", ".join(sorted(rows)) or "none"
            raise TargetError(f"no device with key '{device_key}' is registered with tracker "
                              f"{host}:{port} (keys: {known})")
        if rows[device_key].free == 0 and notify:
            notify(f"all {rows[device_key].total} device(s) of key '{device_key}' are busy; "
                   f"queued behind {rows[device_key].pending} request(s)")
        sess, server = request(host, port, device_key, session_timeout)
        return sess, f"key '{device_key}' via tracker {host}:{port} (server {server})"
    if not server:
        raise InputError("a remote target needs --device KEY --tracker HOST:PORT, or an `rpc` "
                         "HOST:PORT in its target file")
    host, port = parse_hostport(server, "RPC server")
    check_reachable(host, port, "RPC server")
    try:
        sess = rpc.connect(host, port, key=device_key or "", session_timeout=session_timeout)
    except (RuntimeError, OSError) as e:
        raise TargetError(f"RPC server {host}:{port} refused the session: {first_line(e)}") \
            from None
    return sess, f"server {host}:{port}"



def request(host: str, port: int, device_key: str, session_timeout: float = 0,
            attempts: int = 2) -> tuple[object, str]:
    """(session, "HOST:PORT" of the server it reached): TVM's TrackerSession.request, which
    keeps the server's address to itself; a result must say which board it ran on (a pool
    spreads a search over several, and a slow or broken board has to be found)."""
    from tvm import rpc
    from tvm.rpc import base

    last: BaseException | None = None
    for _ in range(attempts):
        sock = None
        try:
            sock = socket.create_connection((host, port), timeout=10)
            sock.settimeout(None)  # the request itself waits as long as the queue does
            sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            if struct.unpack("<i", base.recvall(sock, 4))[0] != base.RPC_TRACKER_MAGIC:
                raise RuntimeError(f"{host}:{port} is not an RPC tracker")
            base.sendjson(sock, [base.TrackerCode.REQUEST, device_key, "", 1])
            value = base.recvjson(sock)  # blocks while every device of the key is busy
            if value[0] != base.TrackerCode.SUCCESS:
                raise RuntimeError(f"tracker answered {value!r}")
            url, sport, matchkey = value[1]
            return rpc.connect(url, sport, matchkey, session_timeout), f"{url}:{sport}"
        except (RuntimeError, OSError) as e:  # a server that died after the tracker's pick
            last = e
        finally:
            if sock is not None:
                sock.close()
    raise TargetError(f"could not get a device of key '{device_key}' from tracker "
                      f"{host}:{port}: {first_line(last)}") from None


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TargetError(f"{what} exited with code {proc.returncode} before listening on "
                              f"{host}:{port}")
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TargetError(f"{what} did not listen on {host}:{port} within {timeout:.0f} s")


def start_tracker(port: int | None = None, host: str = DEFAULT_HOST,
                  python: str = sys.executable) -> tuple[subprocess.Popen, int]:
    """`python -m tvm.exec.rpc_tracker` on host:port (a free port by default)."""
    port = port or free_port(host)
    proc = subprocess.Popen([python, "-m", "tvm.exec.rpc_tracker", "--host", host,
                             "--port", str(port), "--port-end", str(port + 1)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # kill its group: it runs in a worker
    wait_port(host, port, proc, 60, "RPC tracker")
    return proc, port


def server_command(python: Sequence[str], host: str, port: int, key: str | None,
                   tracker: str | None) -> list[str]:
    cmd = [*python, "-m", "tvm.exec.rpc_server", "--host", host, "--port", str(port),
           "--port-end", str(port + 1)]
    if tracker:
        cmd += ["--tracker", tracker, "--key", key or "default"]
    elif key:
        cmd += ["--key", key]
    return cmd


def start_server(key: str | None = None, tracker: str | None = None, port: int | None = None,
                 host: str = DEFAULT_HOST, python: Sequence[str] = (sys.executable,),
                 env: dict | None = None, timeout: float = 120,
                 log_path: str | None = None) -> tuple[subprocess.Popen, int]:
    """`python -m tvm.exec.rpc_server` on host:port, registered with `tracker` under `key`.
    Returns once it listens (and, with a tracker, once the tracker lists it)."""
    port = port or free_port(host)
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        raise TargetError(f"{host}:{port} is already in use (another RPC server?)")
    except OSError:
        pass
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(server_command(python, host, port, key, tracker),
                            stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    wait_port(host, port, proc, timeout, f"RPC server ({' '.join(python)})")
    if tracker:
        deadline = time.monotonic() + timeout
        while not any(f"{host}:{port}" in d.addresses for d in tracker_devices(tracker)):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise TargetError(f"RPC server {host}:{port} did not register with tracker "
                                  f"{tracker} as '{key}'")
            time.sleep(0.3)
    return proc, port
