"""A device farm on loopback: a tracker, two x86 RPC servers of one key, a killed server, a
tracker that is down, a failed upload. Native servers keep this fast; the emulated aarch64 device
is exercised in test_arm_emulated.py."""

from __future__ import annotations

import json
import threading
import time

import pytest

from conftest import kill_group
from deploykit import cli
from deploykit.backends.tvm import rpc
from deploykit.backends import registry as targets
from deploykit.core import ModelRef
from deploykit.errors import TargetError

KEY = "x86-farm"


@pytest.fixture()
def remote_x86(tmp_path):
    """A remote target for this CPU: built here, run on whichever server the tracker picks."""
    toml = tmp_path / "tvm-x86-rpc.toml"
    toml.write_text('name = "tvm-x86-rpc"\nbackend = "tvm"\nthreads = 1\nremote = true\n'
                    '[tvm_target]\nkind = "llvm"\nmcpu = "host"\n')
    return str(toml)


def _devices(tracker):
    return {d.key: d for d in rpc.tracker_devices(tracker)}


def _wait(cond, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.2)


def test_two_servers_queue_kill_and_retry(tracker, remote_x86, cnn_onnx, capsys):
    model = ModelRef.from_path(cnn_onnx)
    a, _ = rpc.start_server(key=KEY, tracker=tracker)
    try:
        _wait(lambda: KEY in _devices(tracker) and _devices(tracker)[KEY].free == 1)
        assert cli.main(["devices", "--tracker", tracker, "--json"]) == 0
        rows = {r["key"]: r for r in json.loads(capsys.readouterr().out)}
        assert rows[KEY]["total"] == 1 and rows[KEY]["free"] == 1

        t = targets.get(remote_x86, device=KEY, tracker=tracker)
        first = t.compile(model)  # holds server a; output checked against ORT there
        assert first.check["max_rel_err"] <= 1e-4
        _wait(lambda: _devices(tracker)[KEY].free == 0)

        b, _ = rpc.start_server(key=KEY, tracker=tracker)
        try:
            _wait(lambda: _devices(tracker)[KEY].total == 2)
            second = t.compile(model)  # the free one: b
            assert _devices(tracker)[KEY].free == 0

            got = []  # a third request queues in the tracker until a device is released
            waiter = threading.Thread(target=lambda: got.append(t.compile(model)))
            waiter.start()
            _wait(lambda: _devices(tracker)[KEY].pending == 1, 120)  # the tracker queues it
            assert waiter.is_alive() and not got and _devices(tracker)[KEY].free == 0
            second.close()
            waiter.join(timeout=120)
            assert got and got[0].check["max_rel_err"] <= 1e-4
            got[0].close()

            kill_group(a)  # the device behind `first` dies
            with pytest.raises(TargetError, match=f"device key '{KEY}' via tracker .* failed"):
                first.run({"x": __import__("numpy").zeros((1, 3, 32, 32), "float32")})
            _wait(lambda: _devices(tracker)[KEY].total == 1)
            retry = t.compile(model)  # same key, the surviving device
            assert retry.check["max_rel_err"] <= 1e-4
            retry.close()
        finally:
            kill_group(b)
    finally:
        kill_group(a)


def test_tracker_down_is_one_clear_error(remote_x86, cnn_onnx, monkeypatch):
    from tvm import rpc as tvm_rpc

    port = rpc.free_port()
    t = targets.get(remote_x86, device=KEY, tracker=f"127.0.0.1:{port}")
    retried = []  # TVM's tracker client retries for a minute: it must never be reached
    monkeypatch.setattr(tvm_rpc, "connect_tracker", lambda *a, **k: retried.append(a))
    with pytest.raises(TargetError, match=f"RPC tracker 127.0.0.1:{port} is not reachable"):
        t.compile(ModelRef.from_path(cnn_onnx))
    assert not retried  # refused on the first failed connection, before TVM's retry loop
    assert cli.main(["devices", "--tracker", f"127.0.0.1:{port}"]) == 2


def test_unknown_key_lists_known_keys(tracker, remote_x86, cnn_onnx):
    t = targets.get(remote_x86, device="no-such-board", tracker=tracker)
    with pytest.raises(TargetError, match="no device with key 'no-such-board'"):
        t.compile(ModelRef.from_path(cnn_onnx))


def test_failed_upload_names_the_device(tracker, remote_x86, cnn_onnx, monkeypatch, tmp_path):
    from deploykit.backends.tvm import remote as tvm_remote

    proc, port = rpc.start_server()
    try:
        monkeypatch.setattr(tvm_remote, "export_library",
                            lambda built, target, model: tmp_path / "missing.so")
        t = targets.get(remote_x86, rpc=f"127.0.0.1:{port}")
        with pytest.raises(TargetError,
                           match=f"device server 127.0.0.1:{port} failed during upload"):
            t.compile(ModelRef.from_path(cnn_onnx))
    finally:
        kill_group(proc)
