"""A bundle on a device reached over ssh:// or adb://: check it here, push what changed, run its
self-test there, optionally its timing mode, and read the result back.

Order: the bundle's integrity is checked here first (nothing of a changed bundle goes anywhere);
then the device is asked whether it has the runtime (ORT / OpenVINO bundles: python3 + numpy +
onnxruntime / openvino; TVM bundles: a shell with sha256sum and the bundle's architecture,
device_sh.py; a one-line error if not); then its copy of the bundle is compared file by file (sha256, computed on the
device) and only what differs is pushed, files the bundle does not list are removed there (the
device's self-test would otherwise refuse the extra files); then the bundle's self-test runs
there (`selftest.py`, or `selftest.sh` and the C++ runner), and with timing its timing mode
(`--time`), whose JSON is pulled and validated (device_timing.py).
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import DeviceError, InputError
from . import device_sh, device_timing
from .runners import selftest as st
from .transport import Transport

PROBE_TIMEOUT_S = 60
PUSH_TIMEOUT_S = 600
# A round of `--against` (two session creations, first inferences, warm-ups and timed
# sub-blocks) bounded in units of one self-test (interpreter start, session, one inference):
# generous, it only has to catch a device that hangs.
ROUND_COST_SELFTESTS = 8

# Runs on the device with its python3: make the folder, drop files the bundle does not list,
# print {relative path: sha256} of what is there.
_SYNC = r"""
import hashlib, json, os, sys
root, keep = sys.argv[1], set(sys.argv[2:])
os.makedirs(root, exist_ok=True)
have = {}
for d, _, names in os.walk(root):
    for n in names:
        p = os.path.join(d, n)
        rel = os.path.relpath(p, root).replace(os.sep, "/")
        if rel not in keep:
            os.remove(p)
            continue
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for c in iter(lambda: f.read(1 << 20), b""):
                h.update(c)
        have[rel] = h.hexdigest()
for rel in keep:
    os.makedirs(os.path.dirname(os.path.join(root, rel)) or root, exist_ok=True)
print(json.dumps(have))
"""
_RUNTIME = {"ort": "onnxruntime", "openvino": "openvino"}  # the module a Python bundle needs
_PROBE = ("import sys, platform, numpy, {m}; "
          "print(platform.machine(), getattr({m}, '__version__', None) or {m}.get_version(), "
          "sys.version.split()[0])")


@dataclass(frozen=True)
class DeviceRun:
    """What one visit to the device did."""

    where: str
    remote_dir: str
    pushed: tuple[str, ...]
    problems: tuple[str, ...]
    rows: tuple[Mapping[str, Any], ...]
    output: str
    runtime: str  # "aarch64, onnxruntime 1.32.0, python 3.11.2" / "aarch64, TVM C++ runner"
    report: Any = None  # LatencyReport with timing; (old, new) with `against`
    manifest: Any = None
    seconds: float = 0.0  # wall time of the run on the device (self-test, and timing if asked)


def _python(manifest: Mapping[str, Any]) -> str:
    """The device's python command: $DEPLOYKIT_DEVICE_PYTHON, else the target's
    `[device] python` recorded in the bundle, else python3."""
    import os

    dev = ((manifest.get("target") or {}).get("config") or {}).get("device") or {}
    return os.environ.get("DEPLOYKIT_DEVICE_PYTHON") or str(
        dev.get("python", "python3") if isinstance(dev, Mapping) else "python3")


def probe(t: Transport, python: str, backend: str = "ort") -> str:
    """The device's machine + runtime version, or a one-line error that names what is
    missing."""
    module = _RUNTIME[backend]
    r = t.shell(f"{python} -c {shlex.quote(_PROBE.format(m=module))}", PROBE_TIMEOUT_S,
                "the runtime check")
    if r.rc != 0:
        lines = [ln for ln in (r.err + r.out).splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else f"exit status {r.rc}"
        kind = "ORT" if backend == "ort" else "OpenVINO"
        raise DeviceError(f"{t.where}: the device cannot run {kind} bundles with {python} "
                          f"(it needs python3, numpy and {module}): {last}")
    words = r.out.split()
    if len(words) != 3:
        raise DeviceError(f"{t.where}: unexpected answer to the runtime check: {r.out.strip()!r}")
    return f"{words[0]}, {module} {words[1]}, python {words[2]}"


def emulated(config: Mapping[str, Any]) -> bool:
    """Whether a target's ssh:// / adb:// device is emulated: its `[device] emulated`, or the
    target's own `emulated` unless that describes its TVM RPC default device (`rpc = ...`)."""
    dev = config.get("device")
    dev = dev if isinstance(dev, Mapping) else {}
    return bool(dev.get("emulated") or (config.get("emulated") and not config.get("rpc")))


def device_labels(config: Mapping[str, Any]) -> tuple[str, ...]:
    return ("emulated",) if emulated(config) else ()


def _wanted(bundle: Path, manifest: Mapping[str, Any]) -> dict[str, str]:
    want = dict(manifest["files"])
    want[st.MANIFEST] = st.sha256_file(bundle / st.MANIFEST)
    return want


def _push_changed(t: Transport, bundle: Path, want: Mapping[str, str], have: Mapping[str, str],
                  remote_dir: str) -> tuple[str, ...]:
    changed = sorted(rel for rel, h in want.items() if have.get(rel) != h)
    # the manifest last: a copy interrupted half-way is never a complete-looking bundle
    changed.sort(key=lambda rel: rel == st.MANIFEST)
    if changed:
        t.push([(bundle / rel, f"{remote_dir}/{rel}") for rel in changed], PUSH_TIMEOUT_S)
    return tuple(changed)


def sync(t: Transport, bundle: Path, manifest: Mapping[str, Any], python: str,
         remote_dir: str) -> tuple[str, ...]:
    """Push the files whose sha256 differs on the device; returns what was pushed."""
    want = _wanted(bundle, manifest)
    args = " ".join(shlex.quote(x) for x in [f"{t.root}/{remote_dir}", *sorted(want)])
    r = t.shell(f"{python} -c {shlex.quote(_SYNC)} {args}", PROBE_TIMEOUT_S,
                "listing the device's copy")
    try:
        have = json.loads(r.out.strip().splitlines()[-1]) if r.rc == 0 else None
    except (ValueError, IndexError):
        have = None
    if not isinstance(have, dict):
        raise DeviceError(f"{t.where}: could not list the bundle folder on the device: "
                          f"{(r.err.strip().splitlines() or ['no answer'])[-1]}")
    return _push_changed(t, bundle, want, have, remote_dir)


def _last_line(r) -> str:
    """The device's own last word: stderr's last line, else stdout's."""
    for text in (r.err, r.out):
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if lines:
            return lines[-1]
    return f"exit status {r.rc}"


def parse_lines(text: str) -> tuple[list[str], list[dict[str, Any]]]:
    """(problems, rows) from the self-test's printed lines (report_lines)."""
    problems, rows = [], []
    for line in text.splitlines():
        if line.startswith("integrity: "):
            problems.append(line[len("integrity: "):])
        elif line.startswith("output "):
            name, _, rest = line[len("output "):].partition(": ")
            verdict, _, detail = rest.partition(": ")
            rows.append({"name": name, "ok": verdict == "ok", "detail": detail})
    return problems, rows


def run_on_device(t: Transport, bundle: str | Path, *, timing: bool = False,
                  max_time_s: float = 30.0, threads: int | None = None,
                  rel_ci: float = 0.01, labels: tuple[str, ...] = (),
                  against: DeviceRun | None = None, rounds_args: str = "",
                  min_rounds: int = 0) -> DeviceRun:
    """Self-test (and with `timing`, time) `bundle` on the device. With `against` (the
    DeviceRun of an old bundle already pushed and self-tested there), time both in the gate's
    interleaved rounds instead; the report is then (old report, new report)."""
    bundle = Path(bundle)
    try:
        manifest = st.load_manifest(bundle)
    except st.BundleUnusable as e:
        raise InputError(str(e)) from None
    backend = manifest["runtime"]["backend"]
    if backend not in ("ort", "tvm", "openvino"):
        raise InputError(f"{bundle}: ssh:// and adb:// devices run ORT, OpenVINO and TVM "
                         f"bundles, not '{backend}'")
    tvm = backend == "tvm"
    if tvm and against is not None:
        raise InputError("interleaved rounds on an ssh:// or adb:// device (check --against) run "
                         "ORT bundles; a TVM bundle is profiled there one at a time")
    problems = st.check_integrity(bundle, manifest)
    if problems:  # nothing of a changed bundle is pushed or run
        return DeviceRun(t.where, "", (), tuple(problems), (), "", "", None, manifest)
    # a Python bundle's timing mode is the package dk_timing/ (dk_timing.py in older bundles)
    timing_files = ("runner/dk_timing.h",) if tvm else ("dk_timing/__init__.py", "dk_timing.py")
    if timing and not any(f in manifest["files"] for f in timing_files):
        raise InputError(f"{bundle} has no timing mode (packaged before it): re-package it")
    remote_dir = remote_name(manifest)
    where_dir = f"{t.root}/{remote_dir}"
    if tvm:
        sh = device_sh.shell(manifest)
        config = (manifest.get("target") or {}).get("config") or {}
        runtime = device_sh.probe(t, sh, manifest["runtime"]["arch"], emulated(config),
                                  PROBE_TIMEOUT_S)
        want = _wanted(bundle, manifest)
        have = device_sh.sync(t, bundle, want, sh, remote_dir, PROBE_TIMEOUT_S)
        pushed = _push_changed(t, bundle, want, have, remote_dir)
        cmd = device_sh.command(where_dir, sh, st.RUNNER)
        labels = tuple(dict.fromkeys((*labels, *((manifest.get("tvm") or {}).get("labels")
                                                 or []))))
    else:
        python = _python(manifest)
        runtime = probe(t, python, backend)
        pushed = sync(t, bundle, manifest, python, remote_dir)
        cmd = f"cd {shlex.quote(where_dir)} && {python} -B selftest.py ."
    run_file = f"../../runs/{int(time.time() * 1000)}.json"
    timeout = PROBE_TIMEOUT_S + 60
    if timing:
        cmd = (f"mkdir -p {shlex.quote(t.root)}/runs && {cmd} --time {run_file} "
               f"--max-time {max_time_s:g} --rel-ci {rel_ci:g}"
               + (f" --threads {int(threads)}" if threads else ""))
        if against is not None:
            cmd += f" --against ../{against.remote_dir.rsplit('/', 1)[-1]} {rounds_args}"
            # at least `min_rounds` rounds, whatever --max-time: each makes two fresh sessions,
            # warms both up and times them; on a slow (or emulated, or busy) device a round costs
            # several of the old bundle's own self-tests, measured just before on that device
            timeout += 2 * max_time_s + min_rounds * ROUND_COST_SELFTESTS * against.seconds
        timeout += max_time_s + 30  # warm-up (<= 5 s), the last block, session creation
    t0 = time.perf_counter()
    r = t.shell(cmd, timeout, "the self-test" + (" and timing" if timing else ""))
    seconds = time.perf_counter() - t0
    problems2, rows = device_sh.parse_output(r.out) if tvm else parse_lines(r.out)
    if r.rc == 2 or (r.rc != 0 and not rows and not problems2):
        raise DeviceError(f"{t.where}: the self-test could not run: {_last_line(r)}")
    report = None
    if timing and r.rc != 0 and not problems2 and rows and all(x["ok"] for x in rows):
        raise DeviceError(f"{t.where}: the self-test passed but the timing failed on the "
                          f"device: {_last_line(r)}")
    if timing and r.rc == 0:
        got = t.shell(f"cd {shlex.quote(where_dir)} && cat {run_file} && rm -f {run_file}",
                      PROBE_TIMEOUT_S, "fetching the timing")
        if got.rc != 0:
            raise DeviceError(f"{t.where}: the timing file is missing on the device: "
                              f"{(got.err.strip().splitlines() or ['?'])[-1]}")
        if against is not None:
            report = device_timing.parse_rounds(got.out, against.manifest, manifest,
                                                where=t.where, labels=labels)
        else:
            report = device_timing.parse(got.out, manifest, where=t.where, labels=labels)
    return DeviceRun(t.where, where_dir, pushed, tuple(problems2), tuple(rows), r.out, runtime,
                     report, manifest, seconds)


def remote_name(manifest: Mapping[str, Any]) -> str:
    """The bundle's folder on the device, by its manifest digest."""
    return f"bundles/{manifest['manifest_sha256'][:16]}"


def passed(run: DeviceRun) -> bool:
    return not run.problems and bool(run.rows) and all(r["ok"] for r in run.rows)


def first_problem(run: DeviceRun) -> str:
    bad = list(run.problems) + [f"output {r['name']}: {r['detail']}" for r in run.rows
                                if not r["ok"]]
    return bad[0] if bad else "no outputs"
