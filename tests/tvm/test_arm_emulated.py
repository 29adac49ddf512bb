"""tvm-aarch64 end to end on the emulated device (qemu-user, registered with a loopback tracker):
cross-compile, upload, run there, check against ORT here, time with time_evaluator, label it
"emulated"; the same through `deploykit profile --device --tracker`."""

from __future__ import annotations

import json

from deploykit import cli
from deploykit.backends import registry as targets
from deploykit.backends.tvm.local import EMULATED_LABEL, UNTUNED_LABEL
from deploykit.core import ModelRef, TimingPlan
from deploykit.onnxio import make_feeds


def test_aarch64_end_to_end_on_emulated_device(emulated_device, cnn_onnx):
    # a server registered with a tracker serves only sessions the tracker hands out
    t = targets.get("tvm-aarch64", device=emulated_device["key"],
                    tracker=emulated_device["tracker"])
    art = t.compile(ModelRef.from_path(cnn_onnx))
    try:
        assert art.check["max_rel_err"] <= 1e-4  # computed on the aarch64 device
        assert art.lib.exists() and art.lib.read_bytes()[18] == 0xB7  # ELF e_machine: aarch64
        plan = TimingPlan(max_time_s=2.0, min_samples=5)
        rep = t.profile(art, make_feeds(list(art.inputs)), plan)
        assert EMULATED_LABEL in rep.labels and UNTUNED_LABEL in rep.labels
        assert rep.env["machine"] == "aarch64" and rep.env["remote"]["emulated"]
        assert len(rep.samples_ms) >= 5 and rep.median_ms > 0
        dev = rep.memory["device"]  # the qemu process's own VmHWM, labelled as emulated
        assert dev["emulated"] is True and "qemu" in dev["note"]
        assert dev["peak_bytes"] >= dev["rss_bytes"] > 0 and dev["peak_delta_bytes"] > 0
    finally:
        art.close()


def test_profile_cli_through_tracker(emulated_device, cnn_onnx, tmp_path):
    out = tmp_path / "rep.json"
    rc = cli.main(["profile", str(cnn_onnx), "--target", "tvm-aarch64",
                   "--device", emulated_device["key"], "--tracker", emulated_device["tracker"],
                   "--max-time", "1", "--min-samples", "5", "--json", str(out), "--no-store",
                   "-q", "--no-strict"])  # emulated timings are noise: strict would judge qemu
    assert rc == 0
    rep = json.loads(out.read_text())
    assert EMULATED_LABEL in rep["labels"]
    assert "tracker" in rep["env"]["remote"]["where"]
    assert rep["memory"]["device"]["peak_bytes"] > 0 and rep["memory"]["device"]["emulated"]
