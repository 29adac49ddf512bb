"""The device-side memory probe (backends/tvm/device_memory.py): the C library loaded into this
process reads what the kernel says about it, and through a native loopback RPC server a remote
profile reports the session process's own peak RSS, which grows with the model's weights."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import kill_group
from deploykit.backends import registry as targets
from deploykit.backends.tvm import device_memory, rpc
from deploykit.core import ModelRef, TimingPlan
from deploykit.onnxio import make_feeds


def _status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    raise AssertionError(key)


def test_probe_library_reads_this_process_from_its_kernel():
    import tvm

    mod = tvm.runtime.load_module(str(device_memory.library(None)))
    got = device_memory.read(mod)
    assert got["peak_bytes"] >= got["rss_bytes"] > 10 * 2**20  # a Python with tvm imported
    assert abs(got["peak_bytes"] // 1024 - _status_kb("VmHWM:")) < 2048
    assert abs(got["rss_bytes"] // 1024 - _status_kb("VmRSS:")) < 8192
    big = np.ones(64 * 2**20 // 8)  # 64 MiB touched: both figures see it
    after = device_memory.read(mod)
    assert after["rss_bytes"] - got["rss_bytes"] > 48 * 2**20
    assert after["peak_bytes"] >= after["rss_bytes"]
    del big


def _dense(path, n):
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32),
                                "W")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="fc")], "d",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture(scope="module")
def server():
    proc, port = rpc.start_server()
    yield f"127.0.0.1:{port}"
    kill_group(proc)


def test_remote_profile_reports_the_session_process_peak(server, tmp_path):
    toml = tmp_path / "tvm-x86-rpc.toml"
    toml.write_text(f'name = "tvm-x86-rpc"\nbackend = "tvm"\nthreads = 1\nremote = true\n'
                    f'rpc = "{server}"\n[tvm_target]\nkind = "llvm"\nmcpu = "host"\n')
    t = targets.get(str(toml))
    plan = TimingPlan(max_time_s=0.5, min_samples=5)
    deltas = {}
    for n in (64, 2048):  # 16 KiB and 16 MiB of weights
        art = t.compile(ModelRef.from_path(_dense(tmp_path / f"d{n}.onnx", n)))
        try:
            rep = t.profile(art, make_feeds(list(art.inputs)), plan)
        finally:
            art.close()
        dev = rep.memory["device"]
        assert dev["emulated"] is False and "VmHWM" in dev["source"]
        assert dev["peak_bytes"] >= dev["rss_bytes"] > 0
        deltas[n] = dev["peak_delta_bytes"]
    # the session process loaded the 16 MiB weights: its peak rose by at least that much more
    assert deltas[2048] - deltas[64] > 15 * 2**20, deltas
