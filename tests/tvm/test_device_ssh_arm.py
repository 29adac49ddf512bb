"""An ORT bundle profiled end to end over ssh on the emulated aarch64 device: a real loopback
sshd (tests/_sshd.py) whose "device python" is the arm64 rootfs's python3 under qemu-aarch64
with the aarch64 onnxruntime wheel (tools/arm_device.py ort-python). The bundle is converted for
ARM, self-tested on aarch64, timed there and stored; the timings are labelled "emulated"
(correctness and plumbing, not speed)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from deploykit.cli import main

from _sshd import ssh_device
from onnx_models import conv_relu_gemm

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def arm_ssh(arm_device, tmp_path_factory):
    arm = arm_device[0]
    python = arm.ort_python()
    tmp = tmp_path_factory.mktemp("armssh")
    target = tmp / "ort-aarch64-emu.toml"
    text = (REPO / "targets" / "ort-aarch64.toml").read_text()
    text = text.replace('name = "ort-aarch64"', 'name = "ort-aarch64-emu"\nemulated = true')
    target.write_text(text.replace('python = "python3"', f"python = {json.dumps(python)}"))
    with ssh_device(tmp / "sshd") as url:
        yield url + str(tmp / "device"), target, tmp / "device"


def _profile_on_device(device, target, tmp_path, capsys, store=None) -> tuple[str, dict]:
    """`deploykit profile` of a small CNN with `target` on the emulated device: (what it printed,
    the --json report); the run is stored in `store` when given."""
    model = conv_relu_gemm(tmp_path / "conv.onnx")
    rc = main(["profile", str(model), "-t", str(target), "--device", device, "--threads", "1",
               "--shape", "x=1,3,16,16", "--max-time", "2", "--json", str(tmp_path / "r.json"),
               *(["--store", str(store)] if store else ["--no-store"]), "--no-strict"])
    out = capsys.readouterr().out
    assert rc == 0, out
    return out, json.loads((tmp_path / "r.json").read_text())


def test_ort_bundle_profiled_over_ssh_on_emulated_aarch64(arm_ssh, tmp_path, capsys):
    device, target, folder = arm_ssh
    store = tmp_path / "runs.db"
    out, rep = _profile_on_device(device, target, tmp_path, capsys, store)
    assert "self-test passed (y ok)" in out and "aarch64" in out
    assert rep["labels"] == ["emulated"]
    dev = rep["env"]["device"]
    assert dev["machine"] == "aarch64" and "0xd08" in dev["cpu_model"]
    assert dev["onnxruntime"] and rep["env"]["peak_rss_kb"] > 0
    assert len(rep["samples_ms"]) >= 10 and rep["session_create_ms"] > 0
    with sqlite3.connect(store) as db:
        assert db.execute("select count(*) from runs").fetchone()[0] == 1
    # the bundle on the device was converted for ARM
    manifests = list((folder / "bundles").glob("*/manifest.json"))
    assert json.loads(manifests[0].read_text())["ort"]["platform"] == "arm"


def test_check_against_across_two_bundles_on_emulated_aarch64(arm_ssh, tmp_path, capsys,
                                                              monkeypatch):
    device, target, folder = arm_ssh
    monkeypatch.setenv("DEPLOYKIT_TARGETS", str(target.parent))
    old = conv_relu_gemm(tmp_path / "old.onnx")
    new = conv_relu_gemm(tmp_path / "new.onnx", seed=1)
    base = tmp_path / "base.json"
    assert main(["baseline", old, "-t", "ort-aarch64-emu", "-o", str(base), "--max-time", "1",
                 "--threads", "1", "--no-store", "--no-strict", "-q", "--shape",
                 "x=1,3,16,16"]) == 0
    rc = main(["check", new, "--baseline", str(base), "--against", old, "--device", device,
               "--max-time", "2", "--json", str(tmp_path / "c.json"), "--no-store", "-q"])
    assert rc in (0, 1), capsys.readouterr().err
    r = json.loads((tmp_path / "c.json").read_text())
    assert r["mode"] == "interleaved" and r["n_units"] >= 10
    for side in ("old_report", "new_report"):
        assert r[side]["labels"] == ["emulated"]
        assert r[side]["env"]["device"]["machine"] == "aarch64"


def test_tvm_bundle_profiled_over_ssh_on_emulated_aarch64(arm_ssh, arm_device, tmp_path,
                                                          capsys):
    """The aarch64 TVM bundle (cross-compiled library, aarch64 TVM runtime, C++ runner) timed
    by its runner on the emulated device: the device's sh is the arm64 rootfs's under qemu
    (tools/arm_device.py runner-shell), no Python involved on the device."""
    device, _, folder = arm_ssh
    arm = arm_device[0]
    target = tmp_path / "tvm-aarch64-emu.toml"
    text = (REPO / "targets" / "tvm-aarch64.toml").read_text()
    text = text.replace('name = "tvm-aarch64"', 'name = "tvm-aarch64-emu"')
    target.write_text(text.replace('shell = "sh"', f"shell = {json.dumps(arm.runner_shell())}\n"
                                                   "emulated = true"))
    store = tmp_path / "runs.db"
    out, rep = _profile_on_device(device, target, tmp_path, capsys, store)
    assert "self-test passed (y ok)" in out and "emulated aarch64" in out
    assert "emulated" in rep["labels"] and any("untuned" in x for x in rep["labels"])
    dev = rep["env"]["device"]
    assert dev["machine"] == "aarch64" and dev["runtime"] == "tvm"  # qemu's uname: the guest's
    assert rep["env"]["peak_rss_kb"] > 0 and rep["session_create_ms"] > 0
    assert len(rep["samples_ms"]) >= 10 and rep["target_config"]["threads"] == 1
    with sqlite3.connect(store) as db:
        assert db.execute("select count(*) from runs").fetchone()[0] == 1
    manifests = [json.loads(p.read_text()) for p in (folder / "bundles").glob("*/manifest.json")]
    assert any(m["runtime"].get("arch") == "aarch64" and m["runtime"]["backend"] == "tvm"
               for m in manifests)


def test_openvino_bundle_profiled_over_ssh_on_emulated_aarch64(arm_ssh, arm_device, tmp_path,
                                                               capsys):
    """targets/openvino-aarch64.toml on the emulated device: the bundle's IR compiled by the
    aarch64 openvino wheel's CPU plugin under qemu (tools/arm_device.py ov-python), self-tested
    and timed there by the bundle's Python timing mode."""
    device, _, folder = arm_ssh
    arm = arm_device[0]
    target = tmp_path / "openvino-aarch64-emu.toml"
    text = (REPO / "targets" / "openvino-aarch64.toml").read_text()
    text = text.replace('name = "openvino-aarch64"', 'name = "openvino-aarch64-emu"\nemulated = true')
    target.write_text(text.replace('python = "python3"', f"python = {json.dumps(arm.ov_python())}"))
    out, rep = _profile_on_device(device, target, tmp_path, capsys)
    assert "self-test passed (y ok)" in out and "aarch64, openvino" in out
    assert rep["labels"] == ["emulated"] and rep["env"]["device"]["machine"] == "aarch64"
    assert rep["env"]["openvino"] and rep["target_config"]["threads"] == 1
    assert len(rep["samples_ms"]) >= 10 and rep["env"]["peak_rss_kb"] > 0
