#!/usr/bin/env python3
"""An emulated aarch64 device for deploykit's TVM RPC path, built from registry packages only:
Debian qemu-user (+ binfmt), a minimal arm64 rootfs with python3 (debootstrap), and the aarch64
apache-tvm wheels (pip download). Cached under ~/.cache/deploykit/arm-device.

    python tools/arm_device.py start [--port 9190] [--tracker HOST:PORT --key aarch64-emu]
    python tools/arm_device.py setup | status | stop [--port 9190]
    python tools/arm_device.py ort-python    # prints the emulated python3 + onnxruntime command
    python tools/arm_device.py ov-python     # prints the emulated python3 + openvino command
    python tools/arm_device.py runner-shell  # prints the emulated sh that runs TVM bundles' runners

`start` builds what is missing (about a minute the first time), then runs
`python -m tvm.exec.rpc_server` under qemu on 127.0.0.1 and returns once it listens. SECURITY: an
RPC server executes any library a client uploads; keep it on loopback (the default) or a
trusted network, never on an untrusted one. Emulated latency is not the speed of a real board
(~1000x off, noisy): deploykit labels it "emulated"; use it for correctness and the pipeline.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SUITE = "bookworm"  # python3.11, matching the cp311 aarch64 wheels
PYVER = "3.11"
MIRROR = os.environ.get("DEPLOYKIT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
DEFAULT_PORT = 9190
DEFAULT_KEY = "aarch64-emu"  # "emu" in a key makes deploykit label its timings "emulated"
OV_PLATFORM = "manylinux_2_35_aarch64"  # the tag openvino 2026 publishes (bookworm: glibc 2.36)


def cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(os.environ.get("DEPLOYKIT_ARM_DEVICE", Path(user_cache_dir("deploykit"))
                               / "arm-device"))


def _sudo() -> list[str]:
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo"):
        return ["sudo", "-n"]
    sys.exit("arm_device: needs root (or passwordless sudo) for debootstrap and binfmt")


def _run(cmd: list[str], what: str, **kw) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        sys.exit(f"arm_device: {what} failed ({r.returncode}): {' | '.join(tail)}")


def ensure_system_packages() -> None:
    need = ("qemu-aarch64", "aarch64-linux-gnu-g++", "debootstrap", "update-binfmts")
    if all(shutil.which(t) or Path("/usr/sbin", t).exists() for t in need):
        return
    _run(["bash", str(REPO / "tools" / "setup_system.sh")], "tools/setup_system.sh")


def ensure_binfmt() -> None:
    """The RPC server re-executes its own (aarch64) interpreter: the kernel must hand aarch64
    ELF files to qemu."""
    misc = Path("/proc/sys/fs/binfmt_misc")
    if (misc / "qemu-aarch64").exists():
        return
    if not (misc / "register").exists():
        _run([*_sudo(), "mount", "-t", "binfmt_misc", "binfmt_misc", str(misc)],
             "mounting binfmt_misc")
    _run([*_sudo(), "update-binfmts", "--enable", "qemu-aarch64"],
         "registering the qemu-aarch64 binfmt handler")


def ensure_rootfs(root: Path) -> Path:
    """A minimal arm64 Debian with python3: debootstrap's first stage, then the .debs it only
    downloaded unpacked in place (no second stage: nothing needs configuring)."""
    rootfs = root / "rootfs"
    if (rootfs / ".complete").exists():
        return rootfs
    tmp = root / "rootfs.partial"
    if tmp.exists():
        _run([*_sudo(), "rm", "-rf", str(tmp)], "removing a partial rootfs")
    root.mkdir(parents=True, exist_ok=True)
    _run([*_sudo(), "debootstrap", "--foreign", "--arch=arm64", "--variant=minbase",
          "--include=python3", SUITE, str(tmp), MIRROR], "debootstrap")
    debs = sorted((tmp / "var/cache/apt/archives").glob("*.deb"))
    for deb in debs:
        _run(["bash", "-c", f"dpkg-deb --fsys-tarfile '{deb}' | {' '.join(_sudo())} tar -xf - "
                            f"-C '{tmp}' --keep-directory-symlink"], f"unpacking {deb.name}")
    for deb in debs:
        deb.unlink()
    if not (tmp / "usr/bin" / f"python{PYVER}").exists():
        sys.exit(f"arm_device: the rootfs has no python{PYVER}")
    _precompile(tmp / "usr/lib" / f"python{PYVER}")
    (tmp / ".complete").write_text(SUITE + "\n")
    tmp.rename(rootfs)
    return rootfs


def ensure_site(root: Path) -> Path:
    """The aarch64 apache-tvm (same versions as this machine's) + numpy etc., installed into a
    folder the emulated python gets on PYTHONPATH."""
    site = root / "site"
    if (site / ".complete").exists():
        return site
    wheels = root / "wheels"
    pins = [f"apache-tvm=={metadata.version('apache-tvm')}",
            f"apache-tvm-ffi=={metadata.version('apache-tvm-ffi')}",
            f"numpy=={metadata.version('numpy')}", "psutil", "cloudpickle"]
    plat = ["--platform", "manylinux_2_28_aarch64", "--python-version", PYVER,
            "--only-binary=:all:"]
    _run([sys.executable, "-m", "pip", "download", "-q", *plat, "-d", str(wheels), *pins],
         "pip download of the aarch64 wheels")
    return _install(wheels, site, plat, pins, "the aarch64 wheels")


def _install(wheels: Path, site: Path, plat: list[str], pins: list[str], what: str) -> Path:
    """The downloaded `wheels` installed into `site` (no dependencies, bytecode precompiled),
    whole or not at all: built in SITE.partial, marked complete, then renamed into place."""
    tmp = site.with_name(f"{site.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-compile",
          "--target", str(tmp), *plat, *map(str, sorted(wheels.glob("*.whl")))],
         f"installing {what}")
    _precompile(tmp)
    (tmp / ".complete").write_text("\n".join(pins) + "\n")
    shutil.rmtree(site, ignore_errors=True)
    tmp.rename(site)
    return site


def _precompile(folder: Path) -> None:
    """Bytecode is the same on every architecture: compile natively here rather than have the
    emulated python do it at every start (minutes under qemu on a busy machine)."""
    if sys.version_info[:2] == tuple(map(int, PYVER.split("."))):
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", str(folder)],
                       capture_output=True)


def setup() -> tuple[Path, Path]:
    ensure_system_packages()
    ensure_binfmt()
    root = cache_dir()
    return ensure_rootfs(root), ensure_site(root)


def python_command(rootfs: Path) -> list[str]:
    return [shutil.which("qemu-aarch64") or "qemu-aarch64", "-L", str(rootfs),
            str(rootfs / "usr/bin" / f"python{PYVER}")]


# onnxruntime's aarch64 wheel reads /proc/cpuinfo at start-up and crashes on the host's x86 one
# (FACTS.md): the qemu prefix of the ORT "device" shadows it with a Cortex-A72's (2 cores).
_CPUINFO = "".join(f"processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm crc32 "
                   "cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\n"
                   "CPU part\t: 0xd08\nCPU revision\t: 3\n\n" for i in range(2))


def _wheel_site(root: Path, name: str, pins: list[str], platform: str) -> Path:
    """aarch64 wheels (`pins`, no dependencies) installed into root/site-NAME, so that bundles'
    self-tests and timing mode run on the emulated device with that runtime."""
    site = root / f"site-{name}"
    if (site / ".complete").exists():
        return site
    plat = ["--platform", platform, "--python-version", PYVER, "--only-binary=:all:"]
    wheels = root / f"wheels-{name}"
    _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *plat, "-d", str(wheels),
          *pins], f"pip download of the aarch64 {name} wheel")
    return _install(wheels, site, plat, pins, f"the aarch64 {name} wheel")


def ensure_ort(root: Path) -> Path:
    """The aarch64 onnxruntime wheel (this machine's version)."""
    return _wheel_site(root, "ort", [f"onnxruntime=={metadata.version('onnxruntime')}"],
                       "manylinux_2_28_aarch64")


def ensure_ov(root: Path) -> Path:
    """The aarch64 openvino wheel (this machine's version) and its pure-Python dependency."""
    return _wheel_site(root, "ov", [f"openvino=={metadata.version('openvino')}",
                                    "openvino-telemetry"], OV_PLATFORM)


def ensure_prefix(root: Path, rootfs: Path) -> Path:
    """A qemu -L prefix: the rootfs by symlinks, plus a regular proc/cpuinfo file (the rootfs's
    /proc is the host's)."""
    prefix = root / "prefix-ort"
    if (prefix / ".complete").exists():
        return prefix
    tmp = root / "prefix-ort.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "proc").mkdir(parents=True)
    for entry in rootfs.iterdir():
        if entry.name != "proc":
            (tmp / entry.name).symlink_to(entry)
    (tmp / "proc" / "cpuinfo").write_text(_CPUINFO)
    (tmp / ".complete").write_text("\n")
    shutil.rmtree(prefix, ignore_errors=True)
    tmp.rename(prefix)
    return prefix


def _emulated_python(ensure_runtime) -> str:
    """The shell command of the emulated device's python3 with numpy and the runtime whose
    site-packages `ensure_runtime(cache root)` provides, under qemu-aarch64 with the rootfs
    prefix."""
    import shlex

    rootfs, site = setup()
    root = cache_dir()
    rt_site, prefix = ensure_runtime(root), ensure_prefix(root, rootfs)
    qemu = shutil.which("qemu-aarch64") or "qemu-aarch64"
    return (f"env PYTHONPATH={shlex.quote(f'{rt_site}:{site}')} {shlex.quote(qemu)} -L "
            f"{shlex.quote(str(prefix))} {shlex.quote(str(rootfs / 'usr/bin' / f'python{PYVER}'))}")


def ort_python() -> str:
    """A shell command that is the emulated device's python3 with numpy + onnxruntime: what an
    ORT target's `[device] python` names when its --device ssh:// is this machine."""
    return _emulated_python(ensure_ort)


def ov_python() -> str:
    """The emulated device's python3 with numpy + openvino (the same qemu prefix as ORT's)."""
    return _emulated_python(ensure_ov)


def runner_shell() -> str:
    """A shell command that is the emulated device's sh for a TVM bundle's selftest.sh: the arm64
    rootfs's sh under qemu-aarch64, with QEMU_LD_PREFIX in its environment so that the bundle's
    aarch64 runner, which it executes, is run by the binfmt handler against the rootfs's libc and
    libstdc++. (Other programs it calls, sha256sum, are the host's: qemu-user does not redirect
    exec; the device's `uname -m` is therefore the host's, and the target says `emulated`.)"""
    import shlex

    rootfs, _ = setup()
    qemu = shutil.which("qemu-aarch64") or "qemu-aarch64"
    return (f"env QEMU_LD_PREFIX={shlex.quote(str(rootfs))} {shlex.quote(qemu)} "
            f"{shlex.quote(str(rootfs / 'bin/sh'))}")


def pid_file(port: int) -> Path:
    return cache_dir() / f"rpc-server-{port}.pid"


def start(port: int = DEFAULT_PORT, tracker: str | None = None, key: str | None = None,
          host: str = "127.0.0.1", timeout: float = 300):
    """Set up if needed and start the emulated RPC server; returns (Popen, port)."""
    from deploykit.backends.tvm import rpc

    rootfs, site = setup()
    env = {"QEMU_LD_PREFIX": str(rootfs), "PYTHONPATH": str(site), "TVM_NUM_THREADS": "1"}
    log = cache_dir() / f"rpc-server-{port}.log"
    proc, port = rpc.start_server(key=key or (DEFAULT_KEY if tracker else None), tracker=tracker,
                                  port=port, host=host, python=python_command(rootfs), env=env,
                                  timeout=timeout, log_path=str(log))
    pid_file(port).write_text(str(proc.pid))
    return proc, port


def stop(port: int = DEFAULT_PORT) -> bool:
    f = pid_file(port)
    if not f.exists():
        return False
    pid = int(f.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)  # its own session: the server and its forked workers
    except ProcessLookupError:
        pass
    f.unlink()
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["setup", "start", "stop", "status", "ort-python",
                                      "ov-python", "runner-shell"])
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--host", default="127.0.0.1",
                   help="bind address (default loopback; an RPC server runs uploaded code)")
    p.add_argument("--tracker", metavar="HOST:PORT", help="register with this RPC tracker")
    p.add_argument("--key", default=None, help=f"device key (default {DEFAULT_KEY})")
    args = p.parse_args(argv)
    if args.action == "setup":
        t0 = time.perf_counter()
        rootfs, site = setup()
        print(f"emulated aarch64 device ready in {time.perf_counter() - t0:.0f} s: {rootfs}, {site}")
    elif args.action == "start":
        t0 = time.perf_counter()
        proc, port = start(args.port, args.tracker, args.key, args.host)
        where = f", registered with {args.tracker} as '{args.key or DEFAULT_KEY}'" \
            if args.tracker else ""
        print(f"emulated aarch64 RPC server pid {proc.pid} on {args.host}:{port}{where} "
              f"(ready in {time.perf_counter() - t0:.0f} s); stop: python tools/arm_device.py "
              f"stop --port {port}")
    elif args.action == "ort-python":
        print(ort_python())
    elif args.action == "ov-python":
        print(ov_python())
    elif args.action == "runner-shell":
        print(runner_shell())
    elif args.action == "stop":
        print("stopped" if stop(args.port) else f"no server recorded on port {args.port}")
    else:
        f = pid_file(args.port)
        alive = f.exists() and Path(f"/proc/{f.read_text().strip()}").exists()
        print(f"cache {cache_dir()}: rootfs {'ready' if (cache_dir() / 'rootfs/.complete').exists() else 'missing'}, "
              f"server on port {args.port} {'running' if alive else 'not running'}")
    return 0


if __name__ == "__main__":
    from deploykit.errors import DeployKitError

    try:
        sys.exit(main())
    except DeployKitError as e:
        sys.exit(f"arm_device: {e}")
