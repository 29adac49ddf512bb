"""What makes this machine noisy for measurement, and what to change (`deploykit doctor`).

The checks pyperf's `system show` makes, for Linux: CPU frequency governor and turbo boost (the
clock a sample runs at), SMT siblings (another thread sharing the core), other processes' load
and the hypervisor's steal time (measured here, over a short idle window), thermal state, the
cgroup CPU quota and cpuset (a container allowed fewer CPUs than it sees), isolated CPUs. Every
path is read under `root`, so tests run the checks on a fake /sys and /proc tree; anything not
readable is reported as unknown, never guessed.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

OK, WARN, INFO, UNKNOWN = "ok", "warn", "info", "unknown"
HOT_C = 85.0  # a CPU zone at or above this is likely to throttle
MAX_STEAL = 0.05


@dataclass(frozen=True)
class Check:
    """One finding: what was looked at, what it is, and what to change when it is a problem."""

    name: str
    status: str  # ok | warn | info | unknown
    value: str
    advice: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _cpu_dirs(root: Path) -> list[Path]:
    base = root / "sys/devices/system/cpu"
    try:
        return sorted((p for p in base.iterdir() if p.name[3:].isdigit() and
                       p.name.startswith("cpu")), key=lambda p: int(p.name[3:]))
    except OSError:
        return []


def governor(root: Path) -> Check:
    govs = {p.name: _read(p / "cpufreq/scaling_governor") for p in _cpu_dirs(root)}
    seen = {g for g in govs.values() if g}
    if not seen:
        return Check("frequency governor", UNKNOWN, "no cpufreq interface (a VM or container: "
                     "the host sets the clock)")
    if seen == {"performance"}:
        return Check("frequency governor", OK, "performance on every CPU")
    return Check("frequency governor", WARN, ", ".join(sorted(seen)),
                 "the clock follows the load, so the first samples run slower: "
                 "`sudo cpupower frequency-set -g performance` (or `pyperf system tune`)")


def boost(root: Path) -> Check:
    cpu = root / "sys/devices/system/cpu"
    amd, intel = _read(cpu / "cpufreq/boost"), _read(cpu / "intel_pstate/no_turbo")
    if amd is None and intel is None:
        return Check("turbo boost", UNKNOWN, "no boost control visible")
    on = amd == "1" if amd is not None else intel == "0"
    if not on:
        return Check("turbo boost", OK, "off")
    knob = ("echo 0 | sudo tee /sys/devices/system/cpu/cpufreq/boost" if amd is not None else
            "echo 1 | sudo tee /sys/devices/system/cpu/intel_pstate/no_turbo")
    return Check("turbo boost", WARN, "on", "the clock depends on temperature and on how many "
                 f"cores are busy, so it varies between runs: `{knob}`")


def smt(root: Path) -> Check:
    active = _read(root / "sys/devices/system/cpu/smt/active")
    shared = set()
    for p in _cpu_dirs(root):
        sib = _read(p / "topology/thread_siblings_list")
        if sib and ("," in sib or "-" in sib):
            shared.add(sib)
    if active == "1" or shared:
        pairs = "; ".join(sorted(shared)) or "active"
        return Check("SMT siblings", WARN, f"hyper-threads share cores ({pairs})",
                     "a sibling thread competes for the core's units: time with --threads <= "
                     "physical cores, pin one thread per core (taskset), or "
                     "`echo off | sudo tee /sys/devices/system/cpu/smt/control`")
    if active is None and not _cpu_dirs(root):
        return Check("SMT siblings", UNKNOWN, "no CPU topology visible")
    return Check("SMT siblings", OK, "one thread per core")


def _proc_ticks(root: Path) -> dict[int, tuple[str, int]]:
    """{pid: (command, utime + stime ticks)} of every process readable under root/proc."""
    out = {}
    try:
        entries = [p for p in (root / "proc").iterdir() if p.name.isdigit()]
    except OSError:
        return out
    for p in entries:
        stat = _read(p / "stat")
        if not stat or ")" not in stat:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        try:
            out[int(p.name)] = (comm, int(fields[11]) + int(fields[12]))
        except (IndexError, ValueError):
            continue
    return out


def _steal_ticks(root: Path) -> tuple[int, int] | None:
    """(steal, total) ticks from the first line of /proc/stat."""
    line = _read(root / "proc/stat")
    if not line:
        return None
    v = [int(x) for x in line.splitlines()[0].split()[1:9]]
    return (v[7] if len(v) > 7 else 0), sum(v)


def load(root: Path, seconds: float, threshold: float,
         sample: Callable[[float], float] | None = None) -> list[Check]:
    """Other processes' CPU share (and who), and the hypervisor's steal, over `seconds`."""
    from . import timing

    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    ncpu = os.cpu_count() or 1
    p0, s0 = _proc_ticks(root), _steal_ticks(root)
    t0 = time.perf_counter()
    share = (sample or (lambda s: timing.sample_load(timing.make_load_monitor(), s)))(seconds)
    wall = max(time.perf_counter() - t0, seconds)
    p1, s1 = _proc_ticks(root), _steal_ticks(root)
    me = os.getpid()
    busy = sorted(((t - p0[pid][1]) / hz / wall, pid, comm) for pid, (comm, t) in p1.items()
                  if pid in p0 and pid != me and t > p0[pid][1])[::-1]
    top = ", ".join(f"{comm} (pid {pid}) {cores:.0%} of a core" for cores, pid, comm in busy[:3])
    value = f"{share:.0%} of {ncpu} cores over {seconds:g} s" + (f": {top}" if top else "")
    checks = [Check("other processes' load", WARN, value,
                    f"above the {threshold:.0%} mark that makes a timed block contaminated: stop "
                    "them, run on a dedicated machine, or measure with --wait-quiet SECONDS")
              if share > threshold else
              Check("other processes' load", OK if share <= threshold / 2 else INFO, value)]
    if s0 and s1 and s1[1] > s0[1]:
        steal = (s1[0] - s0[0]) / (s1[1] - s0[1])
        checks.append(Check("hypervisor steal", WARN, f"{steal:.0%} of CPU time",
                            "the host gives this VM's CPUs to other guests: use a dedicated "
                            "(bare-metal or pinned) runner") if steal > MAX_STEAL else
                      Check("hypervisor steal", OK, f"{steal:.1%} of CPU time"))
    return checks


def thermal(root: Path) -> Check:
    zones = []
    try:
        dirs = sorted((root / "sys/class/thermal").glob("thermal_zone*"))
    except OSError:
        dirs = []
    for z in dirs:
        t = _read(z / "temp")
        if t and t.lstrip("-").isdigit():
            zones.append((_read(z / "type") or z.name, int(t) / 1000.0))
    throttles = 0
    for p in _cpu_dirs(root):
        for f in ("core_throttle_count", "package_throttle_count"):
            n = _read(p / "thermal_throttle" / f)
            throttles += int(n) if n and n.isdigit() else 0
    if not zones and not throttles:
        return Check("thermal", UNKNOWN, "no thermal zones readable")
    hottest = max(zones, key=lambda z: z[1]) if zones else None
    value = (f"hottest {hottest[0]} {hottest[1]:.0f} °C" if hottest else "no zones") + \
        (f"; throttled {throttles} times since boot" if throttles else "")
    if (hottest and hottest[1] >= HOT_C) or throttles:
        return Check("thermal", WARN, value, "a hot CPU lowers its clock mid-run: improve "
                     "cooling, let it cool between runs, or turn turbo boost off")
    return Check("thermal", OK, value)


def cgroup_quota(root: Path, threads: int) -> Check:
    """CPU bandwidth quota (cgroup v2 cpu.max, v1 cfs_quota_us) and the cpuset, vs `threads`."""
    fs = root / "sys/fs/cgroup"
    quota = None
    v2 = _read(fs / "cpu.max")
    if v2:
        q, _, period = v2.partition(" ")
        if q != "max" and period.isdigit():
            quota = int(q) / int(period)
    else:
        q, period = _read(fs / "cpu/cpu.cfs_quota_us"), _read(fs / "cpu/cpu.cfs_period_us")
        if q and period and q.lstrip("-").isdigit() and period.isdigit() and int(q) > 0:
            quota = int(q) / int(period)
    if v2 is None and _read(fs / "cpu/cpu.cfs_quota_us") is None:
        return Check("cgroup CPU quota", UNKNOWN, "no cgroup CPU controller readable")
    if quota is not None and quota < threads:
        return Check("cgroup CPU quota", WARN, f"{quota:g} CPUs for {threads} threads",
                     "the container is throttled every scheduling period: time with --threads "
                     f"<= {max(1, int(quota))} or raise the limit (docker --cpus, k8s limits)")
    return Check("cgroup CPU quota", OK, "none" if quota is None else f"{quota:g} CPUs")


def cpuset(threads: int) -> Check:
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    if allowed is None:
        return Check("CPU affinity", UNKNOWN, "sched_getaffinity not available")
    if allowed < threads:
        return Check("CPU affinity", WARN, f"{allowed} CPUs allowed for {threads} threads",
                     f"threads share CPUs: time with --threads <= {allowed}")
    return Check("CPU affinity", OK, f"{allowed} of {os.cpu_count()} CPUs allowed")


def isolation(root: Path) -> Check:
    iso = _read(root / "sys/devices/system/cpu/isolated")
    if iso is None:
        return Check("isolated CPUs", UNKNOWN, "not visible")
    if iso:
        return Check("isolated CPUs", OK, iso, "pin the measurement to them (taskset -c " + iso
                     + ")")
    return Check("isolated CPUs", INFO, "none", "for dedicated benchmark machines: isolcpus= "
                 "and nohz_full= on the kernel command line keep the scheduler off some cores")


def run_checks(root: Path = Path("/"), *, threads: int = 2, seconds: float = 1.0,
               threshold: float = 0.25, sample: Callable[[float], float] | None = None
               ) -> list[Check]:
    """Every check, in the order a user should fix them."""
    return [*load(root, seconds, threshold, sample), governor(root), boost(root), smt(root),
            thermal(root), cgroup_quota(root, threads), cpuset(threads), isolation(root)]
