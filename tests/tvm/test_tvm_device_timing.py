"""The TVM bundle's C++ runner times itself (`sh selftest.sh --time OUT.json`, runners/dk_timing.h)
with the methodology and the JSON of the ORT bundles' dk_timing/, and deploykit reads it back
into a LatencyReport (bundle/device_timing.py). Run on a real tvm-x86 bundle of a tiny CNN; the
fingerprint is checked field by field against the Python timing mode's own on this machine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

from deploykit.bundle import device_timing  # noqa: E402
from deploykit.cli import main  # noqa: E402
from deploykit.errors import VerificationError  # noqa: E402

from _bundles import reseal  # noqa: E402
from onnx_models import conv_relu_gemm  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("tvmtime")
    model = conv_relu_gemm(tmp / "conv.onnx")
    out = tmp / "x86"
    assert main(["package", model, "-t", "tvm-x86", "-o", str(out), "--no-measure",
                 "--no-store"]) == 0
    return out


def _time(bundle: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "selftest.sh", "--time", str(out), *extra], cwd=bundle,
                          capture_output=True, text=True, timeout=120)


def test_runner_times_itself_and_is_read_back(bundle, tmp_path):
    out = tmp_path / "t.json"
    p = _time(bundle, out, "--max-time", "1", "--threads", "1")
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.strip().splitlines()
    assert lines[-2] == "PASS" and lines[-1].startswith("timed: ") and str(out) in lines[-1]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert "runner/dk_timing.h" in manifest["files"]
    doc = json.loads(out.read_text())
    assert doc["schema"] == device_timing.SCHEMA and doc["threads"] == 1
    assert doc["plan"] == {"block_s": 0.5, "max_time_s": 1.0, "rel_ci": 0.01}
    assert doc["model_sha256"] == manifest["model"]["sha256"]
    assert doc["artifact_id"] == manifest["artifact_id"]
    rep = device_timing.read(out, manifest, labels=("x",))
    assert len(rep.samples_ms) >= device_timing.MIN_SAMPLES and rep.median_ms > 0
    assert sum(b.n for b in rep.blocks) == len(rep.samples_ms) and len(rep.blocks) >= 2
    assert rep.session_create_ms > 0 and rep.first_inference_ms > 0 and rep.warmup_samples > 0
    assert rep.stop_reason in ("ci-reached", "time-cap") and rep.batch == 1
    assert rep.target == "tvm-x86" and rep.target_config["threads"] == 1
    assert rep.env["peak_rss_kb"] > 1000  # the runtime alone is megabytes
    assert rep.env["tvm"] == manifest["tvm"]["tvm_version"]
    assert rep.env["runner"].startswith("dk_runner (C++, gcc")
    # the fingerprint agrees with the Python timing mode's on this machine (same schema, same
    # sources: /proc/cpuinfo, sysfs, uname, affinity)
    from deploykit.bundle.runners import timing

    py = timing.fingerprint()
    dev = rep.env["device"]
    for key in ("cpu_model", "machine", "cpu_count", "cpu_affinity", "cpu_flags", "governor",
                "max_freq_mhz", "os", "hostname"):
        assert dev[key] == py[key], key
    assert dev["runtime"] == "tvm"
    # timing left nothing in the bundle: its self-test still passes
    assert subprocess.run(["sh", "selftest.sh"], cwd=bundle, capture_output=True).returncode == 0
    # the report is the one deploykit validates: a changed digest is another bundle
    with pytest.raises(VerificationError):
        device_timing.parse(json.dumps({**doc, "manifest_sha256": "0" * 64}), manifest,
                            where="here")


def test_threads_default_to_the_targets(bundle, tmp_path):
    out = tmp_path / "t.json"
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    p = subprocess.run(["sh", "selftest.sh", "--time", str(out), "--max-time", "0.5"],
                       cwd=bundle, capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    threads = json.loads((bundle / "manifest.json").read_text())["target"]["config"]["threads"]
    assert json.loads(out.read_text())["threads"] == threads


def test_a_bundle_failing_its_selftest_is_not_timed(bundle, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    g = dict(np.load(bad / "golden/outputs.npz"))
    with open(bad / "golden/outputs.npz", "wb") as f:
        np.savez(f, **{k: v + 1.0 for k, v in g.items()})
    reseal(bad)
    (bad / "SHA256SUMS").write_text("".join(  # as the bundle's own hash list would be
        f"{h}  {rel}\n" for rel, h in json.loads((bad / "manifest.json").read_text())[
            "files"].items() if rel != "SHA256SUMS"))
    reseal(bad)
    out = tmp_path / "t.json"
    p = _time(bad, out, "--max-time", "1")
    assert p.returncode == 1 and "FAIL" in p.stdout and "timed:" not in p.stdout
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--max-time", "1", "--repeat", "3"], "--time and --repeat do not go together"),
    (["--max-time", "-1"], "--max-time must be a positive number"),
    (["--threads", "0"], "--threads must be a positive number"),
    (["--bogus", "1"], "unknown option"),
])
def test_runner_usage_errors_exit_2(bundle, tmp_path, args, message):
    out = tmp_path / "t.json"
    p = _time(bundle, out, *args)
    assert p.returncode == 2 and message in p.stderr and not out.exists()


def test_python_selftest_points_tvm_bundles_to_the_runner(bundle, tmp_path):
    p = subprocess.run([sys.executable, "selftest.py", ".", "--time", str(tmp_path / "t.json")],
                       cwd=bundle, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "TVM_NUM_THREADS": "1"})
    assert p.returncode == 2 and "sh selftest.sh --time" in p.stderr


def test_cpp_statistics_and_manifest_reader_match_python(tmp_path):
    """dk_timing.h's stopping-rule statistics (median, order-statistic CI of the median) give
    exactly timing.py's on synthetic samples, and its JSON reader finds nested manifest fields
    (escapes, nesting, look-alike keys at other depths) as json.loads does."""
    from deploykit.bundle.runners import RUNNER_HEADERS, timing

    src = tmp_path / "probe.cc"
    src.write_text(r'''#include "dk_timing.h"
#include <iostream>
int main(int argc, char** argv) {
  if (std::string(argv[1]) == "ci") {
    std::vector<double> v;
    for (double x; std::cin >> x;) v.push_back(x);
    auto ci = dk::median_ci(v);
    std::printf("%.17g %.17g %.17g\n", ci.first, ci.second, dk::median(v));
    return 0;
  }
  std::string text((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  dk::JsonReader r(text);
  std::string out;
  std::vector<std::string> path(argv + 1, argv + argc);
  std::printf("%s\n", r.find(path, &out) ? out.c_str() : "<missing>");
}
''')
    exe = tmp_path / "probe"
    subprocess.run(["g++", "-std=c++17", "-O1", f"-I{RUNNER_HEADERS[0].parent}", str(src), "-o",
                    str(exe)], check=True, capture_output=True)
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 6, 7, 10, 31, 100, 257, 1000):
        x = [float(v) for v in rng.lognormal(0.0, 0.3, n)]
        p = subprocess.run([str(exe), "ci"], input=" ".join(repr(v) for v in x),
                           capture_output=True, text=True, check=True)
        lo, hi, med = map(float, p.stdout.split())
        assert (lo, hi) == timing.median_ci(x) and med == timing._median(x), n
    doc = {"schema": "x", "target": {"name": "t", "config": {"threads": 3, "device": {
        "threads": 9}}}, "threads": 7, "tvm": {"tvm_version": "0.27.0.post1"},
        "model": {"source": 'a "quoted" \\ path', "sha256": "ab" * 32},
        "manifest_sha256": "cd" * 32, "list": [{"manifest_sha256": "no"}]}
    text = json.dumps(doc, indent=1)
    for path, want in ((["manifest_sha256"], "cd" * 32), (["model", "sha256"], "ab" * 32),
                       (["model", "source"], 'a "quoted" \\ path'),
                       (["target", "config", "threads"], "3"), (["threads"], "7"),
                       (["tvm", "tvm_version"], "0.27.0.post1"), (["artifact_id"], "<missing>"),
                       (["target"], "<missing>")):  # an object is not a scalar
        p = subprocess.run([str(exe), *path], input=text, capture_output=True, text=True,
                           check=True)
        assert p.stdout.strip() == want, path
