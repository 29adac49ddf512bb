"""Reaching a device without TVM RPC: `--device ssh://USER@HOST[:PORT][/DIR]` and
`--device adb://SERIAL[/DIR]` (DIR: where bundles and runs live on the device; default
~/.deploykit over ssh, /data/local/tmp/deploykit over adb).

Both drive the system's own programs (ssh/scp with the user's ssh config and keys; adb), never a
password prompt: ssh runs with BatchMode=yes and a ConnectTimeout, and every call has a timeout.
Extra ssh options (e.g. `-F CONFIG`, `-i KEY`) come from $DEPLOYKIT_SSH_OPTIONS. A device that
cannot be reached, times out or disconnects is a one-line DeviceError (exit 2).
A `--device` value without a scheme is a TVM RPC device key and is not handled here.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import DeviceError, InputError

CONNECT_TIMEOUT_S = 10
_SSH = re.compile(r"^ssh://(?:(?P<user>[A-Za-z0-9._-]+)@)?(?P<host>[A-Za-z0-9._-]+|\[[0-9a-fA-F:]+\])"
                  r"(?::(?P<port>[0-9]{1,5}))?(?P<dir>/[^\s'\"]*)?$")
_ADB = re.compile(r"^adb://(?P<serial>[A-Za-z0-9._:-]+)(?P<dir>/[^\s'\"]*)?$")


def is_url(device: str | None) -> bool:
    return bool(device) and "://" in str(device)


def _dir(path: str | None) -> str | None:
    """The folder on the device from the URL's path (absolute), or None for the default."""
    return path.rstrip("/") or None if path and path != "/" else None


def parse(device: str) -> "Transport":
    """ssh://USER@HOST[:PORT][/DIR] or adb://SERIAL[/DIR]; anything else with a scheme is a usage error."""
    m = _SSH.match(device)
    if m:
        port = int(m["port"]) if m["port"] else None
        if port is not None and not 0 < port < 65536:
            raise InputError(f"--device {device}: port must be 1-65535")
        return Ssh(m["host"].strip("[]"), m["user"], port, _dir(m["dir"]))
    m = _ADB.match(device)
    if m:
        return Adb(m["serial"], _dir(m["dir"]))
    raise InputError(f"--device {device!r}: expected ssh://USER@HOST[:PORT], adb://SERIAL, or a "
                     "TVM RPC device key (with --tracker)")


@dataclass
class Result:
    rc: int
    out: str
    err: str


class Transport:
    """Run a shell command on the device, push files to it."""

    where: str
    root: str  # where bundles and runs live on the device
    kind: str

    def _exec(self, argv: Sequence[str], timeout: float, what: str, stdin: bytes | None = None,
              connection_rc: int | None = None) -> Result:
        try:
            p = subprocess.run(list(argv), input=stdin, capture_output=True, timeout=timeout)
        except FileNotFoundError:
            raise DeviceError(f"{self.where}: the '{argv[0]}' program is not installed here") \
                from None
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.where}: no answer within {timeout:g} s ({what}); earlier "
                              "results are kept") from None
        out, err = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
        if connection_rc is not None and p.returncode == connection_rc:
            last = ([ln for ln in err.splitlines() if ln.strip()] or ["connection failed"])[-1]
            raise DeviceError(f"{self.where}: {what} failed: {last.strip()}")
        return Result(p.returncode, out, err)

    def shell(self, command: str, timeout: float, what: str) -> Result:
        raise NotImplementedError

    def push(self, files: Sequence[tuple[Path, str]], timeout: float) -> None:
        """Copy local files to remote paths (relative to `root`); parent folders exist."""
        raise NotImplementedError


class Ssh(Transport):
    kind = "ssh"

    def __init__(self, host: str, user: str | None, port: int | None, root: str | None = None):
        self.host, self.user, self.port = host, user, port
        self.where = f"ssh://{user + '@' if user else ''}{host}{':' + str(port) if port else ''}"
        self.root = root or ".deploykit"  # default: relative to the login folder

    def _opts(self) -> list[str]:
        return ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
                *shlex.split(os.environ.get("DEPLOYKIT_SSH_OPTIONS", ""))]

    @property
    def dest(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def ssh_argv(self, command: str) -> list[str]:
        port = ["-p", str(self.port)] if self.port else []
        return ["ssh", *self._opts(), *port, self.dest, command]

    def shell(self, command: str, timeout: float, what: str) -> Result:
        return self._exec(self.ssh_argv(command), timeout, what, connection_rc=255)

    def push(self, files: Sequence[tuple[Path, str]], timeout: float) -> None:
        by_dir: dict[str, list[Path]] = {}
        for local, remote in files:
            by_dir.setdefault(str(Path(self.root, remote).parent), []).append(local)
        port = ["-P", str(self.port)] if self.port else []
        for folder, locals_ in sorted(by_dir.items()):
            host = f"[{self.host}]" if ":" in self.host else self.host
            dest = f"{self.user + '@' if self.user else ''}{host}:{folder}/"
            r = self._exec(["scp", "-q", "-p", *self._opts(), *port, *map(str, locals_), dest],
                           timeout, "scp")
            if r.rc != 0:
                last = ([ln for ln in r.err.splitlines() if ln.strip()] or ["failed"])[-1]
                raise DeviceError(f"{self.where}: copying the bundle failed: {last.strip()}")


class Adb(Transport):
    """adb push / adb shell. Not yet run on hardware: tested against a stand-in `adb`."""

    kind = "adb"

    def __init__(self, serial: str, root: str | None = None):
        self.serial = serial
        self.where = f"adb://{serial}"
        self.root = root or "/data/local/tmp/deploykit"

    def shell(self, command: str, timeout: float, what: str) -> Result:
        # `adb shell` returns the remote exit status (adb >= 1.0.35); adb's own failures
        # ("device not found", "device offline") come as rc 1 with "adb:"/"error:" on stderr.
        r = self._exec(["adb", "-s", self.serial, "shell", command], timeout, what)
        if r.rc != 0 and re.search(r"^(adb: |error: )", r.err, re.M):
            raise DeviceError(f"{self.where}: {what} failed: {r.err.strip().splitlines()[-1]}")
        return r

    def push(self, files: Sequence[tuple[Path, str]], timeout: float) -> None:
        for local, remote in files:
            r = self._exec(["adb", "-s", self.serial, "push", str(local), f"{self.root}/{remote}"],
                           timeout, "adb push")
            if r.rc != 0:
                last = ([ln for ln in r.err.splitlines() if ln.strip()] or ["failed"])[-1]
                raise DeviceError(f"{self.where}: adb push failed: {last.strip()}")
