"""Bundles that time themselves, reached over a real ssh server on the loopback (tests/_sshd.py):
`deploykit profile --device ssh://` packages, pushes only what changed, self-tests and times on
the "device" and stores the run; `verify --device ssh://` runs the self-test there; a missing
runtime, an unreachable or hanging device are one-line errors (exit 2). adb's command
construction runs against a stand-in `adb` on PATH that records its argv and runs the shell
commands locally (no adb device or emulator here)."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest

from deploykit.bundle import device_timing
from deploykit.bundle.transport import parse
from deploykit.cli import main
from deploykit.errors import VerificationError

from _sshd import ssh_device
from onnx_models import conv_relu_gemm

SHAPE = ["--shape", "x=1,3,16,16"]
PLAN = ["--max-time", "2"]


def _target(tmp: Path, python: str, name: str = "ort-dev") -> Path:
    p = tmp / f"{name}.toml"
    p.write_text(f'name = "{name}"\nbackend = "ort"\nthreads = 1\n[options]\n'
                 f'allow_spinning = false\n[device]\npython = "{python}"\n')
    return p


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ssh_device(tmp_path_factory.mktemp("sshd")) as url:
        yield url


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return Path(conv_relu_gemm(tmp_path_factory.mktemp("m") / "conv.onnx"))


def test_profile_over_ssh_selftests_times_and_stores(server, model, tmp_path, capsys):
    dev = f"{server}{tmp_path / 'device'}"
    store = tmp_path / "runs.db"
    target = _target(tmp_path, sys.executable)
    assert main(["profile", str(model), "-t", str(target), "--device", dev, *SHAPE, *PLAN,
                 "--json", str(tmp_path / "r.json"), "--store", str(store), "--no-strict"]) == 0
    out = capsys.readouterr().out
    assert "self-test passed (y ok)" in out and "peak RSS" in out
    rep = json.loads((tmp_path / "r.json").read_text())
    assert len(rep["samples_ms"]) >= 10 and rep["session_create_ms"] > 0
    assert rep["first_inference_ms"] > 0 and rep["warmup_samples"] > 0
    assert rep["env"]["peak_rss_kb"] > 0 and rep["env"]["device"]["cpu_count"] >= 1
    assert rep["env"]["device"]["onnxruntime"] and rep["env"]["where"].startswith("ssh://")
    assert rep["target_config"]["threads"] == 1
    with sqlite3.connect(store) as db:
        assert db.execute("select count(*) from runs").fetchone()[0] == 1
    # the bundle left on the device is complete and passes its own self-test there
    bundles = list((tmp_path / "device" / "bundles").iterdir())
    assert len(bundles) == 1 and (bundles[0] / "dk_timing" / "__init__.py").is_file()
    assert not list((tmp_path / "device" / "runs").iterdir())  # the run file was pulled + removed


def test_verify_over_ssh_pushes_only_what_changed(server, model, tmp_path, capsys):
    bundle = tmp_path / "b"
    target = _target(tmp_path, sys.executable)
    assert main(["package", str(model), "-t", str(target), "-o", str(bundle), "--no-measure",
                 "--no-store", *SHAPE]) == 0
    dev = f"{server}{tmp_path / 'device'}"
    t = parse(dev)
    from deploykit.bundle.device_run import run_on_device

    first = run_on_device(t, bundle)
    assert "model.ort" in first.pushed and "manifest.json" in first.pushed
    assert first.rows and all(r["ok"] for r in first.rows)
    remote = Path(first.remote_dir)
    (remote / "stray.txt").write_text("left by someone")  # would fail the device's integrity
    (remote / "model.ort").write_bytes(b"damaged")
    second = run_on_device(t, bundle)
    assert second.pushed == ("model.ort",) and not (remote / "stray.txt").exists()
    assert all(r["ok"] for r in second.rows)
    assert run_on_device(t, bundle).pushed == ()
    capsys.readouterr()
    assert main(["verify", str(bundle), "--device", dev]) == 0
    assert "PASS" in capsys.readouterr().out


def test_changed_bundle_is_neither_pushed_nor_run(server, model, tmp_path, capsys):
    bundle = tmp_path / "b"
    assert main(["package", str(model), "-t", str(_target(tmp_path, sys.executable)), "-o",
                 str(bundle), "--no-measure", "--no-store", *SHAPE]) == 0
    (bundle / "model.ort").write_bytes(b"x" + (bundle / "model.ort").read_bytes())
    dev = f"{server}{tmp_path / 'device'}"
    assert main(["verify", str(bundle), "--device", dev]) == 1
    assert "sha256 mismatch" in capsys.readouterr().err
    assert not (tmp_path / "device").exists()


def test_missing_runtime_on_device_is_one_line_exit_2(server, model, tmp_path, capsys):
    # -S: no site-packages, so no numpy / onnxruntime on this "device"
    target = _target(tmp_path, f"{sys.executable} -S")
    rc = main(["profile", str(model), "-t", str(target), "--device", server, *SHAPE, *PLAN,
               "--no-store"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "cannot run ORT bundles" in err and "No module named" in err


def test_unreachable_device_is_one_line_exit_2(model, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DEPLOYKIT_SSH_OPTIONS", "-o StrictHostKeyChecking=no "
                       "-o UserKnownHostsFile=/dev/null")
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = tmp_path / "runs.db"
    rc = main(["profile", str(model), "-t", str(_target(tmp_path, sys.executable)), "--device",
               f"ssh://nobody@127.0.0.1:{port}", *SHAPE, *PLAN, "--store", str(store)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Connection refused" in err
    assert not store.exists()


def test_hanging_device_times_out(server, model, tmp_path, capsys, monkeypatch):
    from deploykit.bundle import device_run

    monkeypatch.setattr(device_run, "PROBE_TIMEOUT_S", 1)
    target = _target(tmp_path, "sleep 5; python3")  # the device stalls before answering
    rc = main(["profile", str(model), "-t", str(target), "--device", server, *SHAPE, *PLAN,
               "--no-store"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "no answer within 1 s" in err and len(err.splitlines()) == 1


def test_bad_device_urls_are_usage_errors(model, capsys):
    for bad in ("ssh://", "ftp://x", "ssh://u@h:99999"):
        assert main(["profile", str(model), "--device", bad, "--no-store", *SHAPE]) == 2
        assert capsys.readouterr().err.startswith("deploykit: error:")


def test_timing_json_from_the_device_is_validated(model, tmp_path):
    bundle = tmp_path / "b"
    assert main(["package", str(model), "-t", str(_target(tmp_path, sys.executable)), "-o",
                 str(bundle), "--no-measure", "--no-store", *SHAPE]) == 0
    import subprocess

    out = tmp_path / "t.json"
    subprocess.run([sys.executable, str(bundle / "selftest.py"), str(bundle), "--time", str(out),
                    "--max-time", "1"], check=True, capture_output=True)
    # the timing mode leaves nothing in the bundle: the self-test still passes afterwards
    assert subprocess.run([sys.executable, str(bundle / "selftest.py"), str(bundle)],
                          capture_output=True).returncode == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    good = json.loads(out.read_text())
    rep = device_timing.parse(json.dumps(good), manifest, where="here")
    assert len(rep.samples_ms) == len(good["samples_ms"]) and rep.median_ms > 0

    def bad(**change):
        d = {**good, **change}
        with pytest.raises(VerificationError):
            device_timing.parse(json.dumps(d), manifest, where="here")

    bad(schema="other")
    bad(manifest_sha256="0" * 64)
    bad(samples_ms=good["samples_ms"][:-1])  # blocks no longer tile the samples
    bad(samples_ms=[float("nan")] + good["samples_ms"][1:])
    bad(samples_ms=[-1.0] + good["samples_ms"][1:])
    bad(blocks=[[0, len(good["samples_ms"]), 2.0]])
    bad(phases={"init_ms": 0, "first_inference_ms": 1, "warmup_samples": 1})
    bad(stop_reason="whatever")
    with pytest.raises(VerificationError):
        device_timing.parse("{not json", manifest, where="here")


def test_adb_commands_against_a_stand_in(model, tmp_path, monkeypatch, capsys):
    """A stand-in `adb` that records argv and runs `shell` commands / `push` copies locally,
    with the device's /data/local/tmp mapped under tmp_path."""
    root = tmp_path / "phone"
    log = tmp_path / "adb.log"
    fake = tmp_path / "bin" / "adb"
    fake.parent.mkdir()
    fake.write_text(f"""#!{sys.executable}
import json, os, shutil, subprocess, sys
with open({str(log)!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
a = sys.argv[1:]
assert a[0] == "-s" and a[1] == "SERIAL1", a
if a[2] == "push":
    dst = a[4]
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(a[3], dst)
    sys.exit(0)
if a[2] == "shell":
    sys.exit(subprocess.run(["sh", "-c", a[3]]).returncode)
sys.exit("adb: unknown command")
""")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    target = _target(tmp_path, sys.executable)
    rc = main(["profile", str(model), "-t", str(target), "--device", f"adb://SERIAL1{root}",
               *SHAPE, *PLAN, "--no-store", "--json", str(tmp_path / "r.json"), "--no-strict"])
    assert rc == 0, capsys.readouterr().err
    calls = [json.loads(x) for x in log.read_text().splitlines()]
    pushes = [c for c in calls if c[2] == "push"]
    assert {Path(c[3]).name for c in pushes} >= {"model.ort", "selftest.py", "manifest.json"}
    assert {Path(c[3]).parent.name for c in pushes} >= {"dk_timing"}  # the timing package
    assert all(c[4].startswith(f"{root}/bundles/") for c in pushes)
    assert pushes[-1][4].endswith("/manifest.json")  # the manifest goes last
    shells = [c[3] for c in calls if c[2] == "shell"]
    assert any("selftest.py . --time" in s and "--threads 1" in s for s in shells)
    assert json.loads((tmp_path / "r.json").read_text())["env"]["where"] == "adb://SERIAL1"


def test_device_target_is_not_timed_here(model, capsys):
    assert main(["profile", str(model), "-t", "ort-aarch64", "--no-store", *SHAPE]) == 2
    assert "is timed on its device" in capsys.readouterr().err


def test_check_against_on_the_device_in_interleaved_rounds(server, model, tmp_path, capsys,
                                                           monkeypatch):
    target = _target(tmp_path, sys.executable, name="ort-dev-gate")
    monkeypatch.setenv("DEPLOYKIT_TARGETS", str(tmp_path))
    new = Path(conv_relu_gemm(tmp_path / "new.onnx", seed=1))
    base = tmp_path / "base.json"
    assert main(["baseline", str(model), "-t", "ort-dev-gate", "-o", str(base), "--max-time",
                 "1", "--no-store", "--no-strict", "-q", *SHAPE]) == 0
    dev = f"{server}{tmp_path / 'device'}"
    rc = main(["check", str(new), "--baseline", str(base), "--against", str(model), "--device",
               dev, "--max-time", "2", "--json", str(tmp_path / "c.json"), "--no-store", "-q"])
    assert rc in (0, 1), capsys.readouterr().err
    r = json.loads((tmp_path / "c.json").read_text())
    assert r["mode"] == "interleaved" and r["n_units"] >= 10
    assert r["old_report"]["env"]["where"].startswith("ssh://")
    assert len(r["old_report"]["blocks"]) == len(r["new_report"]["blocks"]) >= 10
    assert len(list((tmp_path / "device" / "bundles").iterdir())) == 2
    assert target.exists()
    # the memory gate's fresh processes would run here, not on the device: not gated
    assert r["memory"]["status"] == "no-data"
    assert "not gated with --device" in r["memory"]["detail"]


def test_package_with_device_verifies_and_times_there(server, model, tmp_path, capsys):
    bundle, store = tmp_path / "b", tmp_path / "runs.db"
    rc = main(["package", str(model), "-t", str(_target(tmp_path, sys.executable)), "-o",
               str(bundle), "--device", f"{server}{tmp_path / 'device'}", "--max-time", "1",
               "--store", str(store), *SHAPE])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "self-test passed" in out and "latency on the device: median" in out
    assert json.loads((bundle / "manifest.json").read_text())["latency"] is None
    with sqlite3.connect(store) as db:
        assert db.execute("select label from runs").fetchall() == [("package",)]
    assert main(["package", str(model), "-t", "ort-cpu", "-o", str(tmp_path / "t"), "--device",
                 server, "--tracker", "127.0.0.1:9", *SHAPE]) == 2  # refused before any work
    assert "--tracker is for TVM RPC" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_device_that_disconnects_mid_run_keeps_earlier_results(server, model, tmp_path, capsys):
    """The device's ssh session is killed (SIGKILL to its sshd process) when the timing starts:
    one line, exit 2, and the store still holds exactly the earlier run."""
    store = tmp_path / "runs.db"
    dev = f"{server}{tmp_path / 'device'}"
    good = _target(tmp_path, sys.executable)
    assert main(["profile", str(model), "-t", str(good), "--device", dev, *SHAPE, *PLAN,
                 "--store", str(store), "--no-strict", "-q"]) == 0
    wrap = tmp_path / "python-that-drops.sh"
    # kill the nearest sshd ancestor: the per-connection session process, not the listener
    wrap.write_text(f"""#!/bin/sh
case "$*" in *--time*)
  p=$PPID
  while [ "$p" -gt 1 ]; do
    case "$(cat /proc/$p/comm)" in sshd*) kill -9 "$p"; break;; esac
    p=$(cut -d' ' -f4 /proc/$p/stat)
  done
  sleep 5;;
esac
exec {sys.executable} "$@"
""")
    wrap.chmod(0o755)
    rc = main(["profile", str(model), "-t", str(_target(tmp_path, str(wrap), name="drops")),
               "--device", dev, *SHAPE, *PLAN, "--store", str(store), "--no-strict", "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "self-test and timing failed" in err
    with sqlite3.connect(store) as db:
        assert db.execute("select count(*) from runs").fetchone()[0] == 1


def test_device_python_from_the_environment(server, model, tmp_path, capsys, monkeypatch):
    """A bundle packaged for ort-cpu (device python: python3, which has no onnxruntime on this
    machine's PATH in CI images) verified with $DEPLOYKIT_DEVICE_PYTHON naming one that has."""
    bundle = tmp_path / "b"
    assert main(["package", str(model), "-t", "ort-cpu", "-o", str(bundle), "--no-measure",
                 "--no-store", *SHAPE]) == 0
    monkeypatch.setenv("DEPLOYKIT_DEVICE_PYTHON", sys.executable)
    assert main(["verify", str(bundle), "--device", f"{server}{tmp_path / 'device'}"]) == 0
    assert "PASS" in capsys.readouterr().out
    monkeypatch.setenv("DEPLOYKIT_DEVICE_PYTHON", f"{sys.executable} -S")
    assert main(["verify", str(bundle), "--device", f"{server}{tmp_path / 'device'}"]) == 2
    assert "cannot run ORT bundles" in capsys.readouterr().err
