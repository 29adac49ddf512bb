"""A bundle that times itself: the on-device half of `deploykit profile --device ssh://...`.

Copied into every ORT and OpenVINO bundle as `dk_timing.py` and run by `selftest.py --time
OUT.json` after the self-test passed, so it must stay standalone like selftest.py: Python stdlib +
numpy + onnxruntime (or openvino) on the device, no deploykit. (TVM bundles time themselves with
their C++ runner: dk_timing.h, the same rules in C++.) It follows deploykit's methodology
(measure/timing.py): session creation timed (init), the first inference timed alone, warm-up
until the running median settles, then timed blocks of ~0.5 s keeping every per-iteration
sample and the foreign CPU load of each block (/proc/stat), until the 95% CI of the median of
the block medians is within --rel-ci or --max-time is spent. Statistics are NOT computed
here: deploykit reads the raw samples back (bundle/device_timing.py) and derives them exactly
as for a local run. The output also carries the peak RSS (VmHWM) and the device's fingerprint.
The load monitor and warm-up rule are short copies of measure/timing.py's (this file cannot
import deploykit); tests/test_device_profile.py runs both on the same model.

    python3 selftest.py BUNDLE --time OUT.json [--max-time S] [--threads N] [--rel-ci X]
    python3 selftest.py BUNDLE --time OUT.json --against OLD_BUNDLE [--max-time S] [--threads N]
        the gate's interleaved rounds (gate/rounds.py) on the device: OLD_BUNDLE is self-tested
        first; each round makes fresh sessions of both, warms them up and times them in
        alternating ~50 ms sub-blocks for --round-time s; one block per round and bundle;
        at least --min-rounds rounds and until --max-time. OUT holds one document per bundle.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

SCHEMA = "deploykit-device-timing/1"
_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class LoadMonitor:
    """Foreign CPU share (0..1 of all cores) between start() and stop(), from /proc/stat."""

    def __init__(self) -> None:
        self.ncpu = os.cpu_count() or 1
        self._t0 = self._busy0 = self._own0 = 0.0

    @staticmethod
    def _busy_s() -> float | None:
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return (sum(v[:8]) - idle) / _HZ

    @staticmethod
    def _own_s() -> float:
        t = os.times()
        return t.user + t.system

    def start(self) -> None:
        self._t0, self._busy0, self._own0 = time.perf_counter(), self._busy_s() or 0.0, \
            self._own_s()

    def stop(self) -> float:
        wall = time.perf_counter() - self._t0
        busy = self._busy_s()
        if busy is None or wall < 2.0 / _HZ:
            return 0.0
        foreign = (busy - self._busy0) - (self._own_s() - self._own0)
        return float(min(max(foreign / (wall * self.ncpu), 0.0), 1.0))


def _median(x: Sequence[float]) -> float:
    s = sorted(x)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def median_ci(x: Sequence[float], conf: float = 0.95) -> tuple[float, float]:
    """Order-statistic CI of the median (stats.median_ci without scipy)."""
    s = sorted(x)
    n = len(s)
    if n < 6:
        return s[0], s[-1]
    alpha = 1 - conf
    cdf, j = 0.0, 0
    while True:  # largest j with P(Bin(n, .5) <= j - 1) <= alpha/2, as binom.ppf/cdf do
        p = math.comb(n, j) / 2 ** n
        if cdf + p > alpha / 2:
            break
        cdf += p
        j += 1
    j = max(j - 1, 0) if cdf > alpha / 2 else j
    return s[j], s[n - 1 - j]


def _time_once(fn) -> float:
    t0 = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - t0) / 1e6


def warm_up(fn, min_s: float = 0.2, max_s: float = 5.0, tol: float = 0.02) -> int:
    """Calls until the median of the last ~50 ms window is within `tol` of the one before."""
    d: list[float] = []
    t_start = time.perf_counter()
    while True:
        d.append(_time_once(fn))
        elapsed = time.perf_counter() - t_start
        if elapsed >= max_s:
            break
        w = max(5, int(0.05 / max(_median(d[-5:]) / 1e3, 1e-6)))
        if elapsed >= min_s and len(d) >= 2 * w:
            last, prev = _median(d[-w:]), _median(d[-2 * w:-w])
            if abs(last - prev) <= tol * prev:
                break
    return len(d)


def time_blocks(fn, *, block_s: float, max_time_s: float, rel_ci: float, min_samples: int = 30,
                min_blocks: int = 8, max_samples: int = 100_000, threshold: float = 0.25):
    """(samples_ms, blocks [[start, n, foreign_cpu]], stop_reason)."""
    mon = LoadMonitor()
    samples: list[float] = []
    blocks: list[list[Any]] = []
    clock, t_start = time.perf_counter_ns, time.perf_counter()
    while True:
        start = len(samples)
        end = clock() + int(block_s * 1e9)
        mon.start()
        while True:
            t0 = clock()
            fn()
            t1 = clock()
            samples.append((t1 - t0) / 1e6)
            if t1 >= end:
                break
        blocks.append([start, len(samples) - start, mon.stop()])
        clean = [b for b in blocks if b[2] <= threshold and b[1] > 0]
        if len(samples) >= min_samples and len(clean) >= min_blocks:
            meds = [_median(samples[b[0]:b[0] + b[1]]) for b in clean]
            lo, hi = median_ci(meds)
            if (hi - lo) / 2 <= rel_ci * _median(meds):
                return samples, blocks, "ci-reached"
        if time.perf_counter() - t_start >= max_time_s:
            return samples, blocks, "time-cap"
        if len(samples) >= max_samples:
            return samples, blocks, "sample-cap"


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


def session_options(config: Mapping[str, Any], threads: int | None):
    """The target's session options as backends/ort.py sets them for local profiling."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or config.get("threads", 2))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts = config.get("options", {})
    spin = "1" if config.get("allow_spinning", opts.get("allow_spinning", True)) else "0"
    so.add_session_config_entry("session.intra_op.allow_spinning", spin)
    so.log_severity_level = 3
    return so


def _parse(argv: Sequence[str]) -> dict[str, Any]:
    import argparse

    p = argparse.ArgumentParser(prog="selftest.py BUNDLE --time")
    p.add_argument("bundle")
    p.add_argument("--time", required=True, metavar="OUT.json")
    p.add_argument("--max-time", type=float, default=30.0)
    p.add_argument("--block", type=float, default=0.5)
    p.add_argument("--rel-ci", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--against", metavar="OLD_BUNDLE")
    p.add_argument("--round-time", type=float, default=1.0)
    p.add_argument("--sub-block", type=float, default=0.05)
    p.add_argument("--min-rounds", type=int, default=10)
    p.add_argument("--warmup-max", type=float, default=0.5)
    a = p.parse_args(list(argv))
    if not (a.max_time > 0 and a.block > 0 and a.rel_ci > 0) or (a.threads or 1) < 1:
        p.error("--max-time, --block, --rel-ci and --threads must be positive")
    return vars(a)


class _Bundle:
    """A bundle's manifest, golden feeds and a way to make a timed session of it."""

    def __init__(self, folder: Path, threads: int | None):
        import numpy as np

        self.folder = folder
        self.manifest = json.loads((folder / "manifest.json").read_text())
        self.backend = self.manifest["runtime"]["backend"]
        if self.backend not in ("ort", "openvino"):
            raise SystemExit("selftest: error: this timing mode runs ORT and OpenVINO bundles")
        self.config = (self.manifest.get("target") or {}).get("config") or {}
        self.threads = threads
        with np.load(folder / self.manifest["golden"]["inputs"], allow_pickle=False) as data:
            self.feeds = {k: data[k] for k in data.files}

    def session(self):
        """(callable running one inference, threads it uses, creation ms)."""
        if self.backend == "openvino":
            return self._ov_session()
        import onnxruntime as ort

        so = session_options(self.config, self.threads)
        t0 = time.perf_counter_ns()
        sess = ort.InferenceSession(str(self.folder / self.manifest["runtime"]["model"]), so,
                                    providers=["CPUExecutionProvider"])
        init_ms = (time.perf_counter_ns() - t0) / 1e6
        names, feeds, run = [o.name for o in sess.get_outputs()], self.feeds, sess.run

        def fn() -> None:
            run(names, feeds)

        return fn, so.intra_op_num_threads, init_ms

    def _ov_session(self):
        """The IR compiled with the bundle's properties (threads overridden by --threads), one
        infer request with the feeds bound once, as backends/openvino.py times it."""
        import openvino as ov

        props = dict((self.manifest.get("openvino") or {}).get("properties") or {})
        if self.threads:
            props["INFERENCE_NUM_THREADS"] = int(self.threads)
        t0 = time.perf_counter_ns()
        compiled = ov.Core().compile_model(str(self.folder / self.manifest["runtime"]["model"]),
                                           "CPU", props)
        req = compiled.create_infer_request()
        init_ms = (time.perf_counter_ns() - t0) / 1e6
        for name, a in self.feeds.items():
            req.set_tensor(compiled.input(name), ov.Tensor(a, shared_memory=True))
        threads = int(compiled.get_property("INFERENCE_NUM_THREADS"))

        def fn() -> None:
            req.infer(share_outputs=True)

        return fn, threads, init_ms

    def document(self, threads, phases, samples, blocks, reason, plan) -> dict[str, Any]:
        first = next(iter(self.feeds.values()), None)
        m = self.manifest
        return {"schema": SCHEMA, "manifest_sha256": m.get("manifest_sha256"),
                "artifact_id": m.get("artifact_id"),
                "model_sha256": (m.get("model") or {}).get("sha256"),
                "threads": threads, "plan": plan, "phases": phases,
                "batch": int(first.shape[0]) if first is not None and first.ndim else 1,
                "samples_ms": samples, "blocks": blocks, "stop_reason": reason,
                "peak_rss_kb": peak_rss_kb(), "device": fingerprint(self.backend),
                "created": time.time()}


def _write(dest: Path, doc: Any) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, dest)  # whole or not at all


def rounds(old: _Bundle, new: _Bundle, a: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The gate's interleaved rounds of fresh sessions; [old document, new document]."""
    series = [([], [], {}), ([], [], {})]  # samples, blocks, phases
    mon = LoadMonitor()
    t_start, n, clock = time.perf_counter(), 0, time.perf_counter_ns
    nthreads = [0, 0]
    while True:
        made = []
        for i, b in enumerate((old, new)):
            fn, nthreads[i], init_ms = b.session()
            first = _time_once(fn)
            warm = warm_up(fn, min_s=0.05, max_s=a["warmup_max"])
            if not series[i][2]:
                series[i][2].update(init_ms=init_ms, first_inference_ms=first,
                                    warmup_samples=warm)
            made.append(fn)
        starts = [len(s[0]) for s in series]
        t_round = clock() + int(a["round_time"] * 1e9)
        mon.start()  # one reading per round: both bundles run in this process
        k = 0
        while clock() < t_round:
            order = (0, 1) if k % 2 == 0 else (1, 0)
            for i in order:  # each bundle ~sub_block/2 s, alternating which goes first
                out, fn = series[i][0], made[i]
                end = clock() + int(a["sub_block"] / 2 * 1e9)
                while True:
                    t0 = clock()
                    fn()
                    t1 = clock()
                    out.append((t1 - t0) / 1e6)
                    if t1 >= end:
                        break
            k += 1
        load = mon.stop()
        for i in (0, 1):
            series[i][1].append([starts[i], len(series[i][0]) - starts[i], load])
        n += 1
        del made
        if n >= a["min_rounds"] and time.perf_counter() - t_start >= a["max_time"]:
            break
    plan = {"rounds": n, "round_time_s": a["round_time"], "sub_block_s": a["sub_block"],
            "max_time_s": a["max_time"]}
    return [b.document(nthreads[i], series[i][2], series[i][0], series[i][1], "time-cap",
                       plan)
            for i, b in enumerate((old, new))]


def main(argv: Sequence[str]) -> int:
    a = _parse(argv)
    new = _Bundle(Path(a["bundle"]), a["threads"])
    if a["against"]:
        import selftest as st  # the bundle's own copy, beside this file

        other = Path(a["against"])
        problems, rows = st.selftest(other)
        if problems or not rows or not all(r["ok"] for r in rows):
            print("\n".join(st.report_lines(problems, rows)))
            print(f"selftest: error: --against {other} failed its self-test", file=sys.stderr)
            return 1
        docs = rounds(_Bundle(other, a["threads"]), new, a)
        _write(Path(a["time"]), {"schema": SCHEMA, "rounds": docs})
        print(f"timed in {docs[0]['plan']['rounds']} interleaved rounds -> {a['time']}")
        return 0
    fn, threads, init_ms = new.session()
    first_ms = _time_once(fn)
    warm = warm_up(fn)
    samples, blocks, reason = time_blocks(fn, block_s=a["block"], max_time_s=a["max_time"],
                                          rel_ci=a["rel_ci"])
    plan = {"block_s": a["block"], "max_time_s": a["max_time"], "rel_ci": a["rel_ci"]}
    phases = {"init_ms": init_ms, "first_inference_ms": first_ms, "warmup_samples": warm}
    _write(Path(a["time"]), new.document(threads, phases, samples, blocks, reason, plan))
    print(f"timed: {len(samples)} samples in {len(blocks)} blocks ({reason}), "
          f"median {_median(samples):.4g} ms -> {a['time']}")
    return 0
