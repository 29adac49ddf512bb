"""The device half of a TVM bundle reached over ssh:// or adb://: nothing but a POSIX shell,
`sha256sum` (coreutils, busybox, toybox) and the bundle's own C++ runner there -- no Python.

The shell that runs the bundle's `selftest.sh` is the target's `[device] shell` (default `sh`;
$DEPLOYKIT_DEVICE_SHELL overrides it), so an emulated board can name a qemu-user command. The
copy on the device is listed and pruned with sha256sum (same protocol as device_run's Python
listing: only files whose hash differs are pushed, files the bundle does not list are removed).
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any, Mapping

from ..errors import DeviceError
from .transport import Transport

# sh -c SCRIPT sh ROOT FILE...: make ROOT, drop what is not listed, print `sha256sum` lines of
# what stays, make the listed files' folders, end with a marker (a truncated answer is no answer).
_SYNC = r"""
set -e
root="$1"; shift
mkdir -p "$root"; cd "$root"
find . ! -type d | sed 's|^\./||' | while IFS= read -r f; do
  keep=no
  for k in "$@"; do if [ "$k" = "$f" ]; then keep=yes; break; fi; done
  if [ "$keep" = yes ]; then sha256sum "./$f"; else rm -f "./$f"; fi
done
for k in "$@"; do mkdir -p "$(dirname "./$k")"; done
echo DK-SYNC-OK
"""
_PROBE = ('command -v sha256sum >/dev/null 2>&1 || { echo "no sha256sum on the device (coreutils '
          'or busybox)" >&2; exit 3; }; uname -m')
_LINE = re.compile(r"^([0-9a-f]{64}) [ *]\./(.+)$")


def shell(manifest: Mapping[str, Any]) -> str:
    """$DEPLOYKIT_DEVICE_SHELL, else the target's `[device] shell` recorded in the bundle, else sh."""
    dev = ((manifest.get("target") or {}).get("config") or {}).get("device") or {}
    return os.environ.get("DEPLOYKIT_DEVICE_SHELL") or str(
        dev.get("shell", "sh") if isinstance(dev, Mapping) else "sh")


def _arch(machine: str) -> str:
    m = machine.strip().lower()
    return {"amd64": "x86_64", "arm64": "aarch64", "armv8l": "aarch64"}.get(m, m)


def probe(t: Transport, sh: str, arch: str, emulated: bool, timeout: float) -> str:
    """What the device says it is; a one-line error when it lacks sha256sum or is another
    architecture than the bundle's (an emulated device's shell reports its host's, so there
    the runner itself is the test)."""
    r = t.shell(f"{sh} -c {shlex.quote(_PROBE)}", timeout, "the runtime check")
    lines = [ln.strip() for ln in (r.err + r.out).splitlines() if ln.strip()]
    if r.rc != 0:
        raise DeviceError(f"{t.where}: the device cannot run TVM bundles with {sh!r}: "
                          f"{lines[-1] if lines else f'exit status {r.rc}'}")
    machine = (r.out.split() or ["?"])[-1]
    if _arch(machine) != arch and not emulated:
        raise DeviceError(f"{t.where}: the bundle is for {arch}, the device is {machine} "
                          f"(uname -m): package it for the device's target")
    return f"{machine}{' (emulated ' + arch + ')' if _arch(machine) != arch else ''}, " \
           f"TVM C++ runner"


def sync(t: Transport, bundle: Path, want: Mapping[str, str], sh: str, remote_dir: str,
         timeout: float) -> dict[str, str]:
    """{relative path: sha256} of the device's copy after removing files `want` does not list."""
    args = " ".join(shlex.quote(x) for x in ["sh", f"{t.root}/{remote_dir}", *sorted(want)])
    r = t.shell(f"{sh} -c {shlex.quote(_SYNC)} {args}", timeout, "listing the device's copy")
    out = r.out.strip().splitlines()
    if r.rc != 0 or not out or out[-1] != "DK-SYNC-OK":
        raise DeviceError(f"{t.where}: could not list the bundle folder on the device: "
                          f"{(r.err.strip().splitlines() or ['no answer'])[-1]}")
    have = {}
    for line in out[:-1]:
        m = _LINE.match(line.strip())
        if m:
            have[m[2]] = m[1]
    return have


def command(where_dir: str, sh: str, runner: str) -> str:
    """The self-test as the device runs it: the runner made executable (a copy may drop the
    mode; the hash is unchanged), then the bundle's selftest.sh (sha256sum -c, the runner)."""
    return (f"cd {shlex.quote(where_dir)} && chmod 755 {shlex.quote(runner)} && "
            f"{sh} selftest.sh")


def parse_output(text: str) -> tuple[list[str], list[dict[str, Any]]]:
    """(integrity problems, per-output rows) from selftest.sh's output: sha256sum's
    "FILE: FAILED" lines, then the runner's rows."""
    from .tvm import parse_runner_output

    problems = [f"{ln.split(':')[0].strip()}: sha256 mismatch on the device"
                for ln in text.splitlines() if re.search(r": FAILED( open or read)?$", ln.strip())]
    rows, _ = parse_runner_output(text)
    return problems, rows
