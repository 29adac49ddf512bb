"""aarch64 TVM bundles on the emulated aarch64 device (tools/arm_device.py: qemu-user, an arm64
Debian rootfs, the aarch64 apache-tvm wheels): the cross-compiled C++ runner passes its self-test,
the device-side selftest.sh passes inside the arm64 rootfs, verification over TVM RPC (tracker +
emulated server) passes, and a changed weight in the library fails by hash and by output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

from deploykit.cli import main  # noqa: E402

from onnx_models import conv_relu_gemm  # noqa: E402

EM_AARCH64 = 0xB7  # ELF e_machine


@pytest.fixture(scope="module")
def device(arm_device):
    return arm_device


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return Path(conv_relu_gemm(tmp_path_factory.mktemp("m") / "conv.onnx"))


@pytest.fixture(scope="module")
def bundle(device, model, tmp_path_factory) -> Path:
    _, _, site = device
    out = tmp_path_factory.mktemp("b") / "arm-bundle"
    assert main(["package", str(model), "-t", "tvm-aarch64", "-o", str(out), "--no-measure",
                 "--no-store", "--tvm-runtime", str(site)]) == 0
    return out


def _machine(path: Path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF"
    return int.from_bytes(head[18:20], "little")


def _perturb_weight(bundle: Path, model: Path) -> None:
    """Scale the conv weight inside the compiled library (TVM keeps it as raw constant bytes)."""
    import onnx
    from onnx import numpy_helper

    w = numpy_helper.to_array(next(t for t in onnx.load(str(model)).graph.initializer
                                   if t.name == "w"))
    blob = (bundle / "model.so").read_bytes()
    at = blob.find(w.tobytes())
    assert at > 0, "conv weight not found as raw bytes in model.so"
    (bundle / "model.so").write_bytes(blob[:at] + (w * 1.5).astype(w.dtype).tobytes()
                                      + blob[at + w.nbytes:])


def test_x86_bundle_runs_natively_with_runner_and_python(model, tmp_path, capsys):
    out = tmp_path / "x86"
    assert main(["package", str(model), "-t", "tvm-x86", "-o", str(out), "--no-measure",
                 "--no-store"]) == 0
    assert _machine(out / "runner/dk_runner") == 0x3E  # x86-64, built with the host g++
    assert main(["verify", str(out)]) == 0
    assert "native" in capsys.readouterr().out
    assert main(["verify", str(out), "--python"]) == 0
    proc = subprocess.run(["sh", "selftest.sh"], cwd=out, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("PASS"), proc.stdout


def test_aarch64_bundle_layout(bundle):
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["runtime"]["backend"] == "tvm" and m["runtime"]["arch"] == "aarch64"
    assert m["sizes"]["payload_bytes"] == sum(m["sizes"]["files"][f] for f in (
        "model.so", "runner/dk_runner", "lib/libtvm_runtime.so", "lib/libtvm_ffi.so"))
    assert m["tvm"]["tvm_target"]["mtriple"] == "aarch64-linux-gnu"
    for rel in ("model.so", "runner/dk_runner", "lib/libtvm_runtime.so", "lib/libtvm_ffi.so"):
        assert _machine(bundle / rel) == EM_AARCH64, rel
    assert "aarch64-linux-gnu-g++" in m["tvm"]["runner_build_command"]
    assert "aarch64-linux-gnu-g++" in (bundle / "runner/build.sh").read_text()
    # checked at package time by running the runner under qemu against ORT's outputs
    assert m["fidelity"][0]["max_rel"] < 1e-4 and "emulated" in m["fidelity"][0]["measured_with"]
    assert {"SHA256SUMS", "selftest.sh", "selftest.py"} <= set(m["files"])


def test_runner_passes_selftest_on_emulated_aarch64(bundle, capsys):
    t0 = time.perf_counter()
    assert main(["verify", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "emulated" in out and out.strip().splitlines()[-1].startswith("PASS")
    print(f"emulated self-test (qemu-user, C++ runner): {time.perf_counter() - t0:.2f} s")


def test_device_selftest_script_inside_arm64_rootfs(device, bundle, tmp_path):
    """selftest.sh as a board runs it: arm64 sh, sha256sum and the runner, no Python."""
    _, rootfs, _ = device
    env = {**os.environ, "QEMU_LD_PREFIX": str(rootfs)}
    sh = [shutil.which("qemu-aarch64"), str(rootfs / "bin/sh"), "selftest.sh"]
    proc = subprocess.run(sh, cwd=bundle, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("PASS")

    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    g = dict(np.load(bad / "golden/outputs.npz"))
    with open(bad / "golden/outputs.npz", "wb") as f:
        np.savez(f, **{k: v + 1.0 for k, v in g.items()})
    proc = subprocess.run(sh, cwd=bad, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "golden/outputs.npz: FAILED" in proc.stdout


def test_python_selftest_inside_arm64_rootfs(device, bundle):
    """python3 selftest.py where the device has Python and the aarch64 tvm runtime."""
    _, rootfs, site = device
    env = {**os.environ, "QEMU_LD_PREFIX": str(rootfs), "PYTHONPATH": str(site),
           "TVM_NUM_THREADS": "1"}
    py = [shutil.which("qemu-aarch64"), str(rootfs / "usr/bin/python3"), "selftest.py"]
    proc = subprocess.run(py, cwd=bundle, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("PASS")


def test_changed_weight_in_library_fails_by_hash_and_output(bundle, model, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    _perturb_weight(bad, model)
    assert main(["verify", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "model.so: sha256 mismatch" in out and "output y: MISMATCH" in out


@pytest.fixture(scope="module")
def tracker_with_device(emulated_device):
    """The session's loopback tracker with the emulated aarch64 server registered."""
    return emulated_device["tracker"]


@pytest.mark.slow
def test_verify_over_rpc_on_emulated_device(bundle, model, tracker_with_device, tmp_path,
                                            capsys):
    args = ["--device", "aarch64-emu", "--tracker", tracker_with_device]
    t0 = time.perf_counter()
    assert main(["verify", str(bundle), *args]) == 0
    out = capsys.readouterr().out
    assert "TVM RPC device key 'aarch64-emu'" in out and out.strip().splitlines()[-1].startswith(
        "PASS")
    print(f"RPC self-test on the emulated device: {time.perf_counter() - t0:.2f} s")

    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    _perturb_weight(bad, model)
    assert main(["verify", str(bad), *args]) == 1
    out = capsys.readouterr().out
    assert "model.so: sha256 mismatch" in out and "output y: MISMATCH" in out


@pytest.mark.slow
def test_measured_package_profiles_on_the_rpc_device(device, model, tracker_with_device,
                                                     tmp_path):
    """Latency through the target's own profile (time_evaluator on the device), labelled."""
    _, _, site = device
    out = tmp_path / "measured"
    assert main(["package", str(model), "-t", "tvm-aarch64", "-o", str(out), "--no-store",
                 "--tvm-runtime", str(site), "--device", "aarch64-emu", "--tracker",
                 tracker_with_device, "--max-time", "2", "--min-samples", "5",
                 "--warmup-max", "0.5"]) == 0
    lat = json.loads((out / "manifest.json").read_text())["latency"]
    assert "emulated" in lat["labels"]
    assert lat["samples"] >= 5 and lat["ci95_ms"][0] <= lat["median_ms"] <= lat["ci95_ms"][1]


def test_verify_with_tracker_down_exits_2(bundle, capsys):
    from deploykit.backends.tvm import rpc

    port = rpc.free_port()
    assert main(["verify", str(bundle), "--device", "aarch64-emu", "--tracker",
                 f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not reachable" in err and len(err.splitlines()) == 1
