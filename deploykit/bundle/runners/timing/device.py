"""What the device is and what the run cost it: CPU, cores, frequency policy, OS and runtime
versions (the report's fingerprint), and the peak RSS of the timing process."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def peak_rss_kb() -> int | None:
    """VmHWM of this process (Linux / Android), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def fingerprint(backend: str = "ort") -> dict[str, Any]:
    """What this device is: CPU, cores, frequency policy, OS, runtime versions."""
    import numpy as np

    info: dict[str, str] = {}
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        k, _, v = line.partition(":")
        k = k.strip()
        if k in ("model name", "Hardware", "CPU implementer", "CPU part", "Features", "flags") \
                and k not in info:
            info[k] = v.strip()
    cpu = info.get("model name") or info.get("Hardware") or (
        f"implementer {info['CPU implementer']} part {info['CPU part']}"
        if "CPU part" in info else platform.processor() or platform.machine())
    cpufreq = "/sys/devices/system/cpu/cpu0/cpufreq/"
    cur = _read(cpufreq + "scaling_cur_freq")
    mx = _read(cpufreq + "cpuinfo_max_freq")
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {"cpu_model": cpu, "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "cpu_affinity": affinity,
            "cpu_flags": sorted(set((info.get("flags") or info.get("Features") or "").split())),
            "governor": _read(cpufreq + "scaling_governor"),
            "cur_freq_mhz": int(cur) / 1000 if cur and cur.isdigit() else None,
            "max_freq_mhz": int(mx) / 1000 if mx and mx.isdigit() else None,
            "os": f"{platform.system()} {platform.release()}", "hostname": platform.node(),
            "python": platform.python_version(), "numpy": np.__version__, **_runtime(backend)}


def _runtime(backend: str) -> dict[str, Any]:
    if backend == "openvino":
        import openvino as ov

        return {"runtime": "openvino", "openvino": ov.get_version(),
                "ov_devices": list(ov.Core().available_devices)}
    import onnxruntime as ort

    return {"onnxruntime": ort.__version__, "providers": ort.get_available_providers()}
