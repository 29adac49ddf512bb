"""`deploykit doctor`'s checks (machine.py) on fake /sys and /proc trees with known answers, and
the command itself on this machine with the load sampler scripted."""

import json
import os

import pytest

from deploykit.measure import machine
from deploykit.cli import main


def _tree(root, files):
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


CPU = "sys/devices/system/cpu"


def test_noisy_bare_metal_box(tmp_path):
    root = _tree(tmp_path, {
        f"{CPU}/cpu0/cpufreq/scaling_governor": "powersave\n",
        f"{CPU}/cpu1/cpufreq/scaling_governor": "performance\n",
        f"{CPU}/cpu0/topology/thread_siblings_list": "0-1\n",
        f"{CPU}/cpu1/topology/thread_siblings_list": "0-1\n",
        f"{CPU}/smt/active": "1\n",
        f"{CPU}/cpufreq/boost": "1\n",
        f"{CPU}/cpu0/thermal_throttle/core_throttle_count": "12\n",
        "sys/class/thermal/thermal_zone0/type": "x86_pkg_temp\n",
        "sys/class/thermal/thermal_zone0/temp": "91000\n",
        "sys/fs/cgroup/cpu.max": "150000 100000\n",
        f"{CPU}/isolated": "\n",
    })
    g, b, s, t = machine.governor(root), machine.boost(root), machine.smt(root), \
        machine.thermal(root)
    assert g.status == "warn" and g.value == "performance, powersave" and "cpupower" in g.advice
    assert b.status == "warn" and "cpufreq/boost" in b.advice
    assert s.status == "warn" and "0-1" in s.value and "smt/control" in s.advice
    assert t.status == "warn" and "91 °C" in t.value and "throttled 12 times" in t.value
    q = machine.cgroup_quota(root, threads=2)
    assert q.status == "warn" and q.value == "1.5 CPUs for 2 threads" and "--threads <= 1" in \
        q.advice
    assert machine.cgroup_quota(root, threads=1).status == "ok"
    assert machine.isolation(root).status == "info"


def test_tuned_box(tmp_path):
    root = _tree(tmp_path, {
        f"{CPU}/cpu0/cpufreq/scaling_governor": "performance\n",
        f"{CPU}/cpu0/topology/thread_siblings_list": "0\n",
        f"{CPU}/smt/active": "0\n",
        f"{CPU}/intel_pstate/no_turbo": "1\n",
        "sys/class/thermal/thermal_zone0/temp": "45000\n",
        "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n",
        "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
        f"{CPU}/isolated": "2-3\n",
    })
    for check in (machine.governor, machine.boost, machine.smt, machine.thermal,
                  machine.isolation):
        assert check(root).status == "ok", check
    assert machine.cgroup_quota(root, threads=64).value == "none"


def test_unreadable_is_unknown_not_guessed(tmp_path):
    for check in (machine.governor, machine.boost, machine.smt, machine.thermal,
                  machine.isolation):
        assert check(tmp_path).status == "unknown", check
    assert machine.cgroup_quota(tmp_path, 2).status == "unknown"


def test_load_names_the_busy_processes_and_steal(tmp_path):
    hz = os.sysconf("SC_CLK_TCK")
    stat = "cpu  {u} 0 0 {i} 0 0 0 {st} 0 0\n"
    _tree(tmp_path, {"proc/stat": stat.format(u=1000, i=1000, st=0),
                     "proc/4242/stat": "4242 (hog (x)) R 1 1 1 0 -1 0 0 0 0 0 100 0 0 0\n"})

    def sample(seconds):  # while "sampling", the hog burns one core and the host steals 10%
        _tree(tmp_path, {"proc/stat": stat.format(u=1000 + 90, i=1000, st=10),
                         "proc/4242/stat": f"4242 (hog (x)) R 1 1 1 0 -1 0 0 0 0 0 "
                                           f"{100 + hz} 0 0 0\n"})
        return 0.5

    load, steal = machine.load(tmp_path, 1.0, 0.25, sample)
    assert load.status == "warn" and load.value.startswith("50% of")
    assert "hog (x) (pid 4242) 100% of a core" in load.value and "--wait-quiet" in load.advice
    assert steal.status == "warn" and steal.value == "10% of CPU time"
    quiet = machine.load(tmp_path, 1.0, 0.25, lambda s: 0.01)
    assert [c.status for c in quiet] == ["ok"]  # no ticks passed: no steal figure to give


@pytest.mark.parametrize("load, strict, rc", [(0.6, True, 3), (0.6, False, 0), (0.0, False, 0)])
def test_doctor_command(monkeypatch, capsys, load, strict, rc):
    from deploykit.measure import timing as measure

    class Scripted:
        def start(self):
            pass

        def stop(self):
            return load

    monkeypatch.setattr(measure, "make_load_monitor", Scripted)
    argv = ["doctor", "--json", "--seconds", "0.05"] + (["--strict"] if strict else [])
    got = main(argv)
    out = json.loads(capsys.readouterr().out)
    names = [c["name"] for c in out["checks"]]
    assert names[0] == "other processes' load" and "cgroup CPU quota" in names
    load_check = out["checks"][0]
    assert load_check["status"] == ("warn" if load else "ok")
    if load:
        assert got == rc and out["ready"] is False
    else:  # the other checks are this machine's: the exit code follows them
        assert got == 0


def test_doctor_bad_seconds(capsys):
    assert main(["doctor", "--seconds", "0"]) == 2
    assert "--seconds" in capsys.readouterr().err
