"""The environment fingerprint recorded with every result: a latency without its machine,
threads and library versions is not a number one can compare."""

from __future__ import annotations

import functools
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

# CPU flags that change which kernels a runtime picks.
_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
          "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16", "asimd", "sve")
_PACKAGES = ("deploykit", "onnxruntime", "onnxruntime-gpu", "onnx", "torch", "numpy",
             "apache-tvm", "openvino", "nncf")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "flags", "Features", "CPU implementer", "CPU part") \
                    and key not in info:
                info[key] = value.strip()
    except OSError:
        pass
    return info


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    have = set((_cpuinfo().get("flags") or _cpuinfo().get("Features") or "").split())
    return [f for f in _FLAGS if f in have]


def _governor() -> str | None:
    try:
        return Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    found = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def fingerprint(target_name: str | None = None, target_config: Mapping[str, Any] | None = None,
                threads: int | None = None) -> dict[str, Any]:
    """Everything about this machine and software that can change a latency."""
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": threads,
        "governor": _governor(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": versions(),
        "target": target_name,
        "target_config": dict(target_config or {}),
        "hostname": platform.node(),
    }


# What must match for two measurements to be comparable without an interleaved re-run.
COMPARABLE_KEYS = ("cpu_model", "threads", "machine", "target", "affinity_cores")


def comparable_part(env: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a fingerprint that must be equal for stored samples to be compared."""
    part = {k: env.get(k) for k in COMPARABLE_KEYS}
    vers = env.get("versions") or {}
    part["backend_versions"] = {k: v for k, v in vers.items()
                                if k in ("onnxruntime", "onnxruntime-gpu", "apache-tvm", "openvino")}
    # the target's settings (optimisation level, providers, spinning, precision), not its prose
    part["target_config"] = {k: v for k, v in (env.get("target_config") or {}).items()
                             if k not in ("description", "_file")}
    return part
