"""Fixtures for the TVM tests: tiny models, a loopback RPC tracker, the emulated aarch64 device.

Nothing here skips when system packages are missing: the emulated device installs them
(tools/setup_system.sh) and builds itself (cached under ~/.cache/deploykit/arm-device).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

import tvm_models as models



@pytest.fixture(autouse=True)
def fresh_build_memo():
    """Each test starts with no stored TVM builds (backends/tvm/build_memo.py): a test that
    changes the build path (a patched reference, a failing export) sees a real build; reuse
    within a test (the gate's rounds, repeated compiles) stays."""
    from deploykit.backends.tvm.build_memo import MEMO

    MEMO.clear()
    yield
    MEMO.clear()


@pytest.fixture(scope="session")
def cnn_onnx(tmp_path_factory) -> Path:
    return models.cnn(tmp_path_factory.mktemp("tvm") / "cnn.onnx")


@pytest.fixture(scope="session")
def block_onnx(tmp_path_factory) -> Path:
    return models.transformer_block(tmp_path_factory.mktemp("tvm") / "block.onnx")


@pytest.fixture(scope="session")
def dense_onnx(tmp_path_factory) -> Path:
    return models.dense_relu(tmp_path_factory.mktemp("tvm") / "dense.onnx")


def kill_group(proc) -> None:
    """Kill a server and everything it started (its own session): the group can outlive it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def tracker():
    """A TVM RPC tracker on a free loopback port: "127.0.0.1:PORT"."""
    from deploykit.backends.tvm import rpc

    proc, port = rpc.start_tracker()
    yield f"127.0.0.1:{port}"
    kill_group(proc)


@pytest.fixture(scope="session")
def arm_device():
    """(tools/arm_device.py as a module, arm64 rootfs, aarch64 site-packages): set up on first
    use (about a minute, installing what is missing), cached afterwards; fails loudly."""
    from _tools import load_tool

    arm = load_tool("arm_device")
    rootfs, site = arm.setup()
    return arm, rootfs, site


@pytest.fixture(scope="session")
def emulated_device(arm_device, tracker):
    """The emulated aarch64 device (qemu-user), registered with the tracker as 'aarch64-emu';
    one server for the whole session (its start under qemu costs tens of seconds)."""
    from deploykit.backends.tvm import rpc

    arm = arm_device[0]
    proc, port = arm.start(port=rpc.free_port(), tracker=tracker, key="aarch64-emu")
    yield {"tracker": tracker, "key": "aarch64-emu", "rpc": f"127.0.0.1:{port}"}
    kill_group(proc)
