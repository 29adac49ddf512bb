"""TVM bundles profiled over ssh (a real loopback sshd, tests/_sshd.py), the way ORT bundles are in
tests/test_device_profile.py: `deploykit profile MODEL -t tvm-x86 --device ssh://...` packages,
pushes only what changed (listed with sha256sum on the device: no Python there), runs selftest.sh
and the C++ runner's timing mode, reads the JSON back and stores the run."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

pytest.importorskip("tvm")

from deploykit.bundle.device_run import run_on_device  # noqa: E402
from deploykit.bundle.transport import parse  # noqa: E402
from deploykit.cli import main  # noqa: E402

from _sshd import ssh_device  # noqa: E402
from onnx_models import conv_relu_gemm  # noqa: E402

SHAPE = ["--shape", "x=1,3,16,16"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ssh_device(tmp_path_factory.mktemp("sshd")) as url:
        yield url


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return Path(conv_relu_gemm(tmp_path_factory.mktemp("m") / "conv.onnx"))


def test_tvm_profile_over_ssh_selftests_times_and_stores(server, model, tmp_path, capsys):
    dev = f"{server}{tmp_path / 'device'}"
    store = tmp_path / "runs.db"
    rc = main(["profile", str(model), "-t", "tvm-x86", "--device", dev, "--threads", "1",
               *SHAPE, "--max-time", "2", "--json", str(tmp_path / "r.json"), "--store",
               str(store), "--no-strict"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "self-test passed (y ok)" in out and "TVM C++ runner" in out and "dk_runner" in out
    rep = json.loads((tmp_path / "r.json").read_text())
    assert len(rep["samples_ms"]) >= 10 and rep["session_create_ms"] > 0
    assert rep["first_inference_ms"] > 0 and rep["warmup_samples"] > 0
    assert rep["env"]["peak_rss_kb"] > 0 and rep["env"]["device"]["machine"] == "x86_64"
    assert rep["env"]["tvm"] and rep["env"]["where"].startswith("ssh://")
    assert rep["target"] == "tvm-x86" and rep["target_config"]["threads"] == 1
    assert any("untuned" in label for label in rep["labels"])  # the build's own label is kept
    assert "emulated" not in rep["labels"]
    with sqlite3.connect(store) as db:
        assert db.execute("select count(*) from runs").fetchone()[0] == 1
    bundles = list((tmp_path / "device" / "bundles").iterdir())
    assert len(bundles) == 1 and os.access(bundles[0] / "runner/dk_runner", os.X_OK)
    assert not list((tmp_path / "device" / "runs").iterdir())  # pulled and removed


def test_tvm_verify_over_ssh_pushes_only_what_changed(server, model, tmp_path, capsys):
    bundle = tmp_path / "b"
    assert main(["package", str(model), "-t", "tvm-x86", "-o", str(bundle), "--no-measure",
                 "--no-store", *SHAPE]) == 0
    t = parse(f"{server}{tmp_path / 'device'}")
    first = run_on_device(t, bundle)
    assert {"model.so", "runner/dk_runner", "lib/libtvm_runtime.so",
            "manifest.json"} <= set(first.pushed)
    assert first.pushed[-1] == "manifest.json" and first.rows and all(r["ok"] for r in first.rows)
    remote = Path(first.remote_dir)
    (remote / "stray.txt").write_text("left by someone")
    (remote / "model.so").write_bytes(b"damaged")
    second = run_on_device(t, bundle)
    assert second.pushed == ("model.so",) and not (remote / "stray.txt").exists()
    assert all(r["ok"] for r in second.rows)
    assert run_on_device(t, bundle).pushed == ()
    capsys.readouterr()
    assert main(["verify", str(bundle), "--device", f"{server}{tmp_path / 'device'}"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "the C++ runner on ssh://" in out


def test_device_without_sha256sum_is_one_line_exit_2(server, model, tmp_path, capsys,
                                                     monkeypatch):
    monkeypatch.setenv("DEPLOYKIT_DEVICE_SHELL", "env PATH=/nonexistent /bin/sh")
    rc = main(["profile", str(model), "-t", "tvm-x86", "--device", server, *SHAPE,
               "--max-time", "1", "--no-store"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "no sha256sum on the device" in err


def test_check_against_on_a_device_runs_tvm_in_interleaved_rounds(server, model, tmp_path,
                                                                    capsys):
    """The C++ runner times one model per process, so each round runs both bundles' runners in
    turn (fresh processes, order alternating); round k of each is block k of its report."""
    old = Path(conv_relu_gemm(tmp_path / "old.onnx", seed=1))
    base = tmp_path / "base.json"
    assert main(["baseline", str(old), "-t", "tvm-x86", "--threads", "1", "-o", str(base),
                 "--max-time", "1", "--no-store", "--no-strict", "-q", "--memory-runs", "0",
                 *SHAPE]) == 0, capsys.readouterr().err
    dev = f"{server}{tmp_path / 'device'}"
    rc = main(["check", str(model), "--baseline", str(base), "--against", str(old),
               "--device", dev, "--max-time", "2", "--json", str(tmp_path / "c.json"),
               "--no-store", "-q"])
    assert rc in (0, 1), capsys.readouterr().err
    r = json.loads((tmp_path / "c.json").read_text())
    assert r["mode"] == "interleaved" and r["n_units"] >= 10
    o, n = r["old_report"], r["new_report"]
    assert len(o["blocks"]) == len(n["blocks"]) >= 10  # one block per fresh-process round
    assert len(o["cold_start_samples_ms"]) == len(o["blocks"])
    assert o["env"]["where"].startswith("ssh://") and o["target"] == "tvm-x86"
    assert o["model_sha256"] != n["model_sha256"]
    assert len(list((tmp_path / "device" / "bundles").iterdir())) == 2
    assert not list((tmp_path / "device" / "runs").iterdir())  # each timing pulled and removed


def test_bundle_for_another_architecture_is_refused_before_any_push(server, tmp_path):
    from deploykit.bundle import device_sh
    from deploykit.errors import DeviceError

    t = parse(f"{server}{tmp_path / 'device'}")
    assert device_sh.probe(t, "sh", "x86_64", False, 30).startswith("x86_64, TVM C++ runner")
    with pytest.raises(DeviceError, match="the bundle is for aarch64, the device is x86_64"):
        device_sh.probe(t, "sh", "aarch64", False, 30)
    # an emulated device's shell reports its host: there the runner itself is the test
    assert "emulated aarch64" in device_sh.probe(t, "sh", "aarch64", True, 30)
    assert not (tmp_path / "device").exists()


def test_tvm_over_adb_against_a_stand_in(model, tmp_path, monkeypatch, capsys):
    """adb's command construction for a TVM bundle (no device or emulator here): a stand-in
    `adb` records argv, copies `push`es and runs `shell` commands locally under tmp_path."""
    import sys

    root, log = tmp_path / "phone", tmp_path / "adb.log"
    fake = tmp_path / "bin" / "adb"
    fake.parent.mkdir()
    fake.write_text(f"""#!{sys.executable}
import json, os, shutil, subprocess, sys
with open({str(log)!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
a = sys.argv[1:]
assert a[0] == "-s" and a[1] == "SERIAL1", a
if a[2] == "push":
    os.makedirs(os.path.dirname(a[4]), exist_ok=True)
    shutil.copyfile(a[3], a[4])  # no mode bits: the device side must chmod the runner itself
    sys.exit(0)
if a[2] == "shell":
    sys.exit(subprocess.run(["sh", "-c", a[3]]).returncode)
sys.exit("adb: unknown command")
""")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    rc = main(["profile", str(model), "-t", "tvm-x86", "--threads", "1", "--device",
               f"adb://SERIAL1{root}", *SHAPE, "--max-time", "1", "--no-store", "--json",
               str(tmp_path / "r.json"), "--no-strict"])
    assert rc == 0, capsys.readouterr().err
    calls = [json.loads(x) for x in log.read_text().splitlines()]
    pushes = [c for c in calls if c[2] == "push"]
    assert {Path(c[3]).name for c in pushes} >= {"model.so", "dk_runner", "selftest.sh",
                                                 "manifest.json"}
    assert all(c[4].startswith(f"{root}/bundles/") for c in pushes)
    assert pushes[-1][4].endswith("/manifest.json")  # the manifest goes last
    shells = [c[3] for c in calls if c[2] == "shell"]
    assert any("selftest.sh" in s and "--time" in s and "--threads 1" in s for s in shells)
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["env"]["where"] == "adb://SERIAL1" and len(rep["samples_ms"]) >= 10
