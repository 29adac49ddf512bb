"""TVM bundle contents: the compiled library for the target, the TVM runtime libraries for the
device's architecture, and a small C++ runner (runners/tvm_runner.cc) built against them —
cross-compiled for aarch64 — with its build command written out.

The runner needs only libtvm_runtime.so + libtvm_ffi.so, shipped in lib/ (found through the
runner's rpath), so a board without Python can run its self-test. The aarch64 libraries come
from the aarch64 apache-tvm wheels (the same ones the emulated device installs).
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any, Mapping

from ..core import ModelRef
from ..backends.base import Target
from ..errors import TargetError
from .runners import RUNNER_HEADERS, RUNNER_SOURCE
from .runners.selftest import RUNNER

RUNTIME_LIBS = {"libtvm_runtime.so": "tvm/lib/libtvm_runtime.so",
                "libtvm_ffi.so": "tvm_ffi/lib/libtvm_ffi.so"}
CXX = {"aarch64": "aarch64-linux-gnu-g++"}
QEMU = {"aarch64": "qemu-aarch64"}
SYSROOTS = {"aarch64": ("/usr/aarch64-linux-gnu",)}  # Debian's cross toolchain ships the libc


def host_arch() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def tvm_target_dict(target: Target) -> dict[str, Any]:
    if hasattr(target, "tvm_target"):  # backends.tvm.TvmTarget resolves "mcpu = host" etc.
        return dict(target.tvm_target)
    cfg = target.config
    found = cfg.get("tvm_target") or cfg.get("options", {}).get("target") or cfg.get("target")
    if not isinstance(found, Mapping):
        raise TargetError(f"target '{target.name}' has no TVM target dict")
    return dict(found)


def target_arch(target: Target) -> str:
    triple = str(tvm_target_dict(target).get("mtriple", ""))
    return triple.split("-")[0] if triple else host_arch()


_ELF_MACHINE = {"x86_64": 0x3E, "aarch64": 0xB7}


def runtime_libs(arch: str, hint: str | None = None) -> dict[str, Path]:
    """libtvm_runtime.so and libtvm_ffi.so built for `arch`: this machine's own when the arch
    matches; else from `hint`, $DEPLOYKIT_TVM_RUNTIME_<ARCH>, the emulated device's install
    (tools/arm_device.py) or deploykit's cache, downloading the wheels with pip as a last resort."""
    if arch == host_arch():
        import tvm
        import tvm_ffi

        libs = {"libtvm_runtime.so": Path(tvm.__file__).parent / "lib" / "libtvm_runtime.so",
                "libtvm_ffi.so": Path(tvm_ffi.__file__).parent / "lib" / "libtvm_ffi.so"}
    else:
        from platformdirs import user_cache_dir

        cache = Path(user_cache_dir("deploykit"))
        extract = cache / "tvm-runtime" / arch
        if hint:
            libs = _find_libs(Path(hint), arch, extract)
            if libs is None:
                raise TargetError(f"--tvm-runtime {hint}: no {arch} libtvm_runtime.so and "
                                  f"libtvm_ffi.so (flat, site-packages or wheels)")
        else:
            device = Path(os.environ.get("DEPLOYKIT_ARM_DEVICE", cache / "arm-device"))
            cands = [os.environ.get(f"DEPLOYKIT_TVM_RUNTIME_{arch.upper()}"), extract,
                     device / "site", device / "wheels"]
            libs = next(filter(None, (_find_libs(Path(c), arch, extract) for c in cands if c)),
                        None)
            if libs is None:
                _download_wheels(arch, extract / "wheels")
                libs = _find_libs(extract / "wheels", arch, extract)
    for name, path in (libs or {}).items():
        if not path.is_file():
            raise TargetError(f"{arch} TVM runtime library missing: {path}")
        if _elf_machine(path) != _ELF_MACHINE.get(arch):
            raise TargetError(f"{path} is not an {arch} library")
    if not libs:
        raise TargetError(f"no {arch} TVM runtime libraries found")
    return libs


def _elf_machine(path: Path) -> int | None:
    head = path.read_bytes()[:20] if path.stat().st_size >= 20 else b""
    return int.from_bytes(head[18:20], "little") if head[:4] == b"\x7fELF" else None


def _find_libs(folder: Path, arch: str, extract: Path) -> dict[str, Path] | None:
    """Flat folder, site-packages folder, or folder of wheels (unpacked into `extract`)."""
    for layout in ({n: folder / n for n in RUNTIME_LIBS},
                   {n: folder / rel for n, rel in RUNTIME_LIBS.items()}):
        if all(p.is_file() for p in layout.values()):
            return layout
    for w in sorted(folder.glob(f"apache_tvm*{arch}*.whl")) if folder.is_dir() else []:
        with zipfile.ZipFile(w) as z:
            for name, rel in RUNTIME_LIBS.items():
                if rel in z.namelist():
                    extract.mkdir(parents=True, exist_ok=True)
                    (extract / name).write_bytes(z.read(rel))
    flat = {n: extract / n for n in RUNTIME_LIBS}
    return flat if all(p.is_file() for p in flat.values()) else None


def _download_wheels(arch: str, dest: Path) -> None:
    """The aarch64 apache-tvm wheels of the installed versions, with pip (a registry client)."""
    from importlib import metadata
    import sys

    pins = [f"apache-tvm=={metadata.version('apache-tvm')}",
            f"apache-tvm-ffi=={metadata.version('apache-tvm-ffi')}"]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--platform", f"manylinux_2_28_{arch}", "--python-version",
           f"{sys.version_info.major}.{sys.version_info.minor}", "-d", str(dest), *pins]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise TargetError(f"cannot fetch the {arch} TVM runtime ({' '.join(pins)}): {last}; "
                          f"pass --tvm-runtime DIR with libtvm_runtime.so and libtvm_ffi.so")


def _include_dirs() -> list[Path]:
    import tvm_ffi

    root = Path(tvm_ffi.__file__).parent
    dirs = [root / "include", root / "3rdparty" / "dlpack" / "include"]
    for d in dirs:
        if not d.is_dir():
            raise TargetError(f"tvm-ffi headers missing: {d}")
    return dirs


def runner_command(arch: str, src: str, out: str, includes: list[str], libdir: str) -> list[str]:
    cxx = CXX.get(arch, "g++") if arch != host_arch() else "g++"
    return [cxx, "-std=c++17", "-O2", "-o", out, src, *[f"-I{d}" for d in includes],
            f"-L{libdir}", "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi",
            "-Wl,-rpath,$ORIGIN/../lib"]


def build(model: ModelRef, target: Target, stage: Path, *,
          runtime_hint: str | None = None) -> dict[str, Any]:
    """model.so, lib/, runner/ into `stage`; returns the manifest's "tvm" section. The library is
    the TVM backend's own build (its tuning database applied when one exists)."""
    from ..backends.tvm import build as tvm_build
    from ..backends.tvm.remote import export_library

    arch = target_arch(target)
    cxx = CXX.get(arch) if arch != host_arch() else None
    if cxx and not shutil.which(cxx):
        raise TargetError(f"cross compiler {cxx} not found (run tools/setup_system.sh)")
    built = tvm_build.build(model, target)
    shutil.copyfile(export_library(built, target, model), stage / "model.so")

    libs = runtime_libs(arch, runtime_hint)
    (stage / "lib").mkdir()
    for name, src in libs.items():
        shutil.copyfile(src, stage / "lib" / name)
    (stage / "runner").mkdir()
    shutil.copyfile(RUNNER_SOURCE, stage / "runner" / RUNNER_SOURCE.name)
    for header in RUNNER_HEADERS:  # included as "NAME" from the source's own folder
        shutil.copyfile(header, stage / "runner" / header.name)
    includes = [str(d) for d in _include_dirs()]
    cmd = runner_command(arch, f"runner/{RUNNER_SOURCE.name}", RUNNER, includes, "lib")
    proc = subprocess.run(cmd, cwd=stage, capture_output=True, text=True)
    if proc.returncode:
        err = next((ln for ln in proc.stderr.splitlines() if "error" in ln), proc.stderr.strip())
        raise TargetError(f"building the {arch} runner failed: {err[:300]}")
    portable = runner_command(arch, f"runner/{RUNNER_SOURCE.name}", RUNNER,
                              ["$TVM_FFI/include", "$TVM_FFI/3rdparty/dlpack/include"], "lib")
    (stage / "runner" / "build.sh").write_text(
        "#!/bin/sh\n# Rebuild the runner from the bundle folder. TVM_FFI: the tvm_ffi package folder\n"
        "# of the apache-tvm-ffi wheel (headers are the same for every architecture).\n"
        "set -e\ncd \"$(dirname \"$0\")/..\"\n"
        ': "${TVM_FFI:=$(python3 -c \'import tvm_ffi, os; print(os.path.dirname(tvm_ffi.__file__))\')}"\n'
        + " ".join(_sh(a) for a in portable) + "\n")
    from importlib import metadata

    return {"arch": arch, "tvm_target": tvm_target_dict(target),
            "tvm_version": metadata.version("apache-tvm"),
            "compiled_shapes": {s.name: list(s.shape) for s in built.inputs},
            "labels": list(built.labels), "tuning_records": built.tuning_records,
            "build_ms": built.build_ms,
            "files": {"library": "model.so", "runner": RUNNER,
                      "runner_source": f"runner/{RUNNER_SOURCE.name}",
                      "runner_headers": [f"runner/{h.name}" for h in RUNNER_HEADERS],
                      "runtime_libs": [f"lib/{n}" for n in RUNTIME_LIBS]},
            "runner_build_command": " ".join(shlex.quote(a) for a in cmd),
            "runner_build_script": "runner/build.sh"}


def _sh(arg: str) -> str:
    """Quote for sh but keep $VARS expandable."""
    return f'"{arg}"' if "$" in arg and "$ORIGIN" not in arg else shlex.quote(arg)


def runner_args(manifest: Mapping[str, Any]) -> list[str]:
    g = manifest["golden"]
    args = [manifest["runtime"]["model"], g["inputs"], g["outputs"]]
    for name, t in g["tolerance"].items():
        args += ["--tol", f"{name}:{t['atol']!r}:{t['rtol']!r}"]
    return args


def write_selftest(stage: Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """selftest.sh (sha256sum -c, then the runner) and SHA256SUMS, for a device without Python."""
    from .runners.selftest import sha256_file

    cmd = " ".join(shlex.quote(a) for a in [f"./{RUNNER}", *runner_args(manifest)])
    (stage / "selftest.sh").write_text(
        "#!/bin/sh\n# Device self-test without Python: file hashes, then golden outputs.\n"
        "set -e\ncd \"$(dirname \"$0\")\"\n"
        "# plain -c: not every sha256sum (busybox, toybox: small boards, Android) takes --quiet\n"
        "sha256sum -c SHA256SUMS\n"
        f"exec {cmd} \"$@\"\n")
    sums = sorted(p for p in stage.rglob("*") if p.is_file())
    (stage / "SHA256SUMS").write_text("".join(
        f"{sha256_file(p)}  {p.relative_to(stage).as_posix()}\n" for p in sums))
    return {"command": "sh selftest.sh  (add --repeat N to time N runs)", "runner_command": cmd,
            "timing": "sh selftest.sh --time OUT.json [--max-time S] [--threads N] [--rel-ci X]",
            "python_command": "python3 selftest.py", "needs": "nothing but the bundle "
            "(python3 selftest.py needs numpy and the tvm runtime)"}


def emulator(arch: str) -> list[str] | None:
    """qemu-user prefix that runs `arch` binaries here, or None."""
    qemu = shutil.which(QEMU.get(arch, f"qemu-{arch}"))
    sysroot = os.environ.get(f"DEPLOYKIT_QEMU_SYSROOT_{arch.upper()}")
    roots = [sysroot] if sysroot else list(SYSROOTS.get(arch, ()))
    root = next((r for r in roots if r and Path(r, "lib").is_dir()), None)
    return [qemu, "-L", root] if qemu and root else None


_ROW = re.compile(r"^output (?P<name>.+) max_abs_err=(?P<err>\S+) atol=\S+ rtol=\S+ "
                  r"mismatched=(?P<bad>\d+)/(?P<n>\d+) (?P<status>ok|FAIL)$")


def parse_runner_output(stdout: str) -> tuple[list[dict[str, Any]], str | None]:
    """(per-output rows, the "runs=..." line) from what the C++ runner printed."""
    rows, timing = [], None
    for line in stdout.splitlines():
        m = _ROW.match(line.strip())
        if m:
            rows.append({"name": m["name"], "ok": m["status"] == "ok",
                         "max_abs_err": float(m["err"]), "mismatched": int(m["bad"]),
                         "size": int(m["n"]),
                         "detail": line.strip()[len(f"output {m['name']} "):-len(m["status"]) - 1]})
        elif line.startswith("runs="):
            timing = line.strip()
    return rows, timing


def run_runner(bundle: Path, manifest: Mapping[str, Any], repeat: int = 1) -> dict[str, Any]:
    """Run the bundle's C++ runner here (under qemu when built for another architecture)."""
    arch = manifest["runtime"]["arch"]
    prefix: list[str] = []
    how = f"C++ runner ({arch}, native)"
    if arch != host_arch():
        prefix = emulator(arch) or []
        if not prefix:
            raise TargetError(f"bundle is for {arch}: run it on the device (--device/--tracker) "
                              f"or install qemu-user and the {arch} cross toolchain to emulate it")
        how = f"C++ runner ({arch}, emulated: {' '.join(prefix)})"
    cmd = [*prefix, f"./{RUNNER}", *runner_args(manifest), "--repeat", str(repeat)]
    proc = subprocess.run(cmd, cwd=bundle, capture_output=True, text=True)
    rows, timing = parse_runner_output(proc.stdout)
    error = None
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and not rows):
        error = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    return {"rows": rows, "how": how, "timing": timing, "error": error,
            "returncode": proc.returncode}


def check_here(stage: Path, manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    """The fresh bundle's runner against the golden outputs, when this machine can run it."""
    import numpy as np

    arch = manifest["runtime"]["arch"]
    if arch != host_arch() and emulator(arch) is None:
        return None
    res = run_runner(stage, manifest, repeat=1)
    if res["error"]:
        raise TargetError(f"the bundle's runner failed ({res['how']}): {res['error']}")
    from .runners.selftest import load_npz

    golden = load_npz(stage / manifest["golden"]["outputs"])
    max_rel = max((r["max_abs_err"] / max(float(np.max(np.abs(golden[r["name"]]))), 1e-30)
                   for r in res["rows"]), default=0.0)
    bad = [r["detail"] for r in res["rows"] if not r["ok"]]
    return {"ok": not bad and bool(res["rows"]), "detail": "; ".join(bad) or "no outputs",
            "how": res["how"], "max_abs": max((r["max_abs_err"] for r in res["rows"]), default=0.0),
            "max_rel": max_rel}
