"""Peak resident memory of the process that runs the model on a TVM RPC device.

Why a library of our own: a stock `tvm.exec.rpc_server` runs each session in a forked process
and exposes no memory figure, and its file download reads a file's size from the filesystem
(0 for /proc files). So deploykit compiles a tiny C library with the target's own (cross)
compiler, uploads it like the model's and loads it into the same session process; its two
functions return that process's VmHWM (peak RSS) and VmRSS from the device kernel's
/proc/self/status. They follow TVM-FFI's exported-function ABI (`__tvm_ffi_<name>`: the
TVMFFISafeCallType signature, an int64 result of type index kTVMFFIInt = 1 in a TVMFFIAny of
4 + 4 + 8 bytes), so the loaded module's `["deploykit_vmhwm_kb"]` is an ordinary packed function.

Under qemu-user the figure is the emulator process's (qemu passes /proc/self/status through): the
guest's memory plus qemu's own translation buffers, so it is labelled emulated, not a device's.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

C_SOURCE = r"""
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef struct { int32_t type_index; uint32_t zero_padding; int64_t v_int64; } Any;

static int64_t status_kb(const char* key) {
  FILE* f = fopen("/proc/self/status", "r");
  char line[256];
  int64_t v = -1;
  size_t n = strlen(key);
  if (!f) return -1;
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, key, n) == 0) {
      long long x;
      if (sscanf(line + n, "%lld", &x) == 1) v = (int64_t)x;
      break;
    }
  }
  fclose(f);
  return v;
}

static int put(Any* result, int64_t v) {
  result->type_index = 1; /* kTVMFFIInt */
  result->zero_padding = 0;
  result->v_int64 = v;
  return 0;
}

int __tvm_ffi_deploykit_vmhwm_kb(void* self, const Any* args, int32_t n, Any* result) {
  (void)self; (void)args; (void)n;
  return put(result, status_kb("VmHWM:"));
}

int __tvm_ffi_deploykit_vmrss_kb(void* self, const Any* args, int32_t n, Any* result) {
  (void)self; (void)args; (void)n;
  return put(result, status_kb("VmRSS:"));
}
"""


def library(cxx: str | None) -> Path:
    """The compiled probe library for `cxx` (None: the host's g++), cached by source and
    compiler, written atomically."""
    from platformdirs import user_cache_dir

    from ...errors import TargetError, first_line
    from ...fsutil import atomic_path

    compiler = cxx or "g++"
    key = hashlib.sha256(f"{compiler}\n{C_SOURCE}".encode()).hexdigest()[:16]
    out = Path(user_cache_dir("deploykit")) / "tvm-lib" / f"deploykit-rss-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        src = tmp.with_suffix(".c")
        src.write_text(C_SOURCE)
        try:
            r = subprocess.run([compiler, "-x", "c", "-O2", "-shared", "-fPIC", str(src), "-o",
                                str(tmp)], capture_output=True, text=True, timeout=120)
        except OSError as e:
            raise TargetError(f"compiling the memory probe with {compiler} failed: "
                              f"{first_line(e)}") from None
        finally:
            src.unlink(missing_ok=True)
        if r.returncode != 0:
            raise TargetError(f"compiling the memory probe with {compiler} failed: "
                              f"{(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return out


def load(session, cxx: str | None):
    """Upload the probe library to an RPC session and load it there; returns the remote module."""
    lib = library(cxx)
    session.upload(str(lib))
    return session.load_module(lib.name)


def read(module) -> dict[str, int]:
    """{"peak_bytes", "rss_bytes"} of the session's process, from its own /proc/self/status."""
    rss, hwm = int(module["deploykit_vmrss_kb"]()), int(module["deploykit_vmhwm_kb"]())
    if hwm <= 0 or rss <= 0:
        from ...errors import TargetError

        raise TargetError("the device's /proc/self/status has no VmHWM/VmRSS")
    # two reads: the RSS may have grown past the mark read a moment before it
    return {"peak_bytes": max(hwm, rss) * 1024, "rss_bytes": rss * 1024}


def memory_entry(before: dict[str, int] | None, after: dict[str, int],
                 emulated: bool) -> dict[str, Any]:
    """The report's `memory.device` mapping: the session process's peak RSS when the model had
    been loaded and run (and its RSS before the model was loaded, when read)."""
    d: dict[str, Any] = {
        "source": "VmHWM/VmRSS of the RPC session process (/proc/self/status on the device)",
        "peak_bytes": after["peak_bytes"], "rss_bytes": after["rss_bytes"],
        "emulated": emulated}
    if before:
        d["rss_before_bytes"] = before["rss_bytes"]
        d["peak_delta_bytes"] = after["peak_bytes"] - before["rss_bytes"]
    if emulated:
        d["note"] = ("qemu-user process: the emulator's own memory (translation buffers) is in "
                     "it; not a device's figure")
    return d
