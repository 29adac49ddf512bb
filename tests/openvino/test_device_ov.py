"""OpenVINO bundles (model.xml + model.bin, the target's CPU plugin properties) packaged, verified
and profiled over ssh (a real loopback sshd, tests/_sshd.py) with the bundle's own Python timing
mode, as ORT bundles are in tests/test_device_profile.py."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openvino")

from deploykit.bundle import device_timing  # noqa: E402
from deploykit.cli import main  # noqa: E402

from _sshd import sshd  # noqa: E402
from onnx_models import conv_relu_gemm  # noqa: E402

SHAPE = ["--shape", "x=1,3,16,16"]


def _target(tmp: Path, python: str) -> Path:
    p = tmp / "ov-dev.toml"
    p.write_text(f'name = "ov-dev"\nbackend = "openvino"\nthreads = 1\nprecision = "f32"\n'
                 f'[device]\npython = "{python}"\n')
    return p


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return Path(conv_relu_gemm(tmp_path_factory.mktemp("m") / "conv.onnx"))


def test_ov_bundle_selftests_and_times_itself(model, tmp_path):
    bundle = tmp_path / "b"
    assert main(["package", str(model), "-t", str(_target(tmp_path, sys.executable)), "-o",
                 str(bundle), "--no-measure", "--no-store", *SHAPE]) == 0
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["runtime"] == {"backend": "openvino", "model": "model.xml",
                            "payload": ["model.xml", "model.bin"]}
    assert m["openvino"]["properties"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert m["fidelity"][0]["max_rel"] < 1e-4
    out = tmp_path / "t.json"
    p = subprocess.run([sys.executable, "selftest.py", ".", "--time", str(out), "--max-time",
                        "1"], cwd=bundle, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    rep = device_timing.read(out, m)
    assert len(rep.samples_ms) >= 10 and rep.session_create_ms > 0 and rep.env["threads"] == 1
    assert rep.env["openvino"] and rep.env["device"]["runtime"] == "openvino"
    assert main(["verify", str(bundle)]) == 0


def test_ov_profile_over_ssh(model, tmp_path, capsys, monkeypatch):
    with sshd(tmp_path / "sshd") as (url, client, _):
        monkeypatch.setenv("DEPLOYKIT_SSH_OPTIONS", f"-F {client}")
        store = tmp_path / "runs.db"
        rc = main(["profile", str(model), "-t", str(_target(tmp_path, sys.executable)),
                   "--device", f"{url}{tmp_path / 'device'}", *SHAPE, "--max-time", "2",
                   "--json", str(tmp_path / "r.json"), "--store", str(store),
                   "--no-strict"])
        out = capsys.readouterr().out
        assert rc == 0, out
        assert "self-test passed (y ok)" in out and "openvino" in out
        rep = json.loads((tmp_path / "r.json").read_text())
        assert rep["env"]["device"]["openvino"] and rep["target"] == "ov-dev"
        with sqlite3.connect(store) as db:
            assert db.execute("select count(*) from runs").fetchone()[0] == 1
        # a device without openvino: one line, exit 2
        rc = main(["profile", str(model), "-t",
                   str(_target(tmp_path, f"{sys.executable} -S")), "--device", url, *SHAPE,
                   "--max-time", "1", "--no-store"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1
        assert "cannot run OpenVINO bundles" in err
