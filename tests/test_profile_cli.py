"""`deploykit profile` end to end (tiny plans: these check the pipeline, not the speed)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from deploykit.cli import main
from onnx_models import conv_relu_gemm

# --no-strict: these check the pipeline on a shared machine, whose load is not the test's to judge
# (CI=true would turn --strict on); the strict path is tested below with a scripted load.
FAST = ["--max-time", "0.5", "--warmup-max", "0.2", "--min-samples", "10", "--no-roofline", "-q",
        "--no-strict"]


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    return conv_relu_gemm(tmp_path_factory.mktemp("m") / "m.onnx")


def test_profile_json_and_store(onnx_file, tmp_path):
    out, trace, store = tmp_path / "r.json", tmp_path / "t.json", tmp_path / "s.sqlite"
    assert main(["profile", onnx_file, "--json", str(out), "--trace", str(trace),
                 "--store", str(store), *FAST]) == 0
    d = json.loads(out.read_text())
    assert d["samples_ms"] and d["per_op"] and d["target"] == "ort-cpu"
    # ORT's Chrome trace of the per-op run: one model_run per inference, and kernel events of
    # exactly the nodes the report's per-op table lists
    events = json.loads(trace.read_text())
    assert all({"name", "ph", "ts"} <= e.keys() for e in events)
    assert sum(e.get("cat") == "Session" and e["name"] == "model_run" for e in events) >= 20
    kernels = {e["name"][: -len("_kernel_time")] for e in events
               if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")}
    assert kernels and kernels == {op["name"] for op in d["per_op"]}
    from deploykit.store import Store

    with Store(store) as s:
        assert len(s.runs()) == 1


def test_compare_reports_ratio_with_ci(onnx_file, tmp_path):
    out = tmp_path / "c.json"
    assert main(["profile", onnx_file, onnx_file, "--no-store", "--json", str(out), *FAST]) == 0
    d = json.loads(out.read_text())
    assert d["mode"] == "interleaved" and len(d["items"]) == 2
    lo, hi = d["items"][1]["ratio_ci95"]
    # strict JSON: an interval unbounded above (too few rounds in 0.5 s) is written as null
    assert lo <= d["items"][1]["ratio_to_first"] <= (float("inf") if hi is None else hi)
    assert "Infinity" not in out.read_text() and "NaN" not in out.read_text()
    assert d["items"][0]["report"]["target_config"]["options"]["allow_spinning"] is False


def test_npz_inputs_checked(onnx_file, tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, x=np.zeros((1, 3, 16, 16), np.float32))
    assert main(["profile", onnx_file, "--inputs", str(good), "--no-store", *FAST]) == 0


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "deploykit", *args], capture_output=True, text=True)


@pytest.mark.parametrize("case", ["missing", "corrupt", "unknown-target", "bad-npz", "bad-shape",
                                  "not-onnx", "shape-vs-fixed-dim", "shape-unknown-input",
                                  "zero-threads", "negative-min-samples"])
def test_bad_input_one_line_exit_2_nothing_written(case, onnx_file, tmp_path):
    out = tmp_path / "r.json"
    model, extra = onnx_file, []
    if case == "missing":
        model = str(tmp_path / "nope.onnx")
    elif case == "corrupt":
        data = open(onnx_file, "rb").read()
        model = str(tmp_path / "trunc.onnx")
        open(model, "wb").write(data[: len(data) // 2])
    elif case == "unknown-target":
        extra = ["--target", "nope"]
    elif case == "bad-npz":
        npz = tmp_path / "bad.npz"
        np.savez(npz, x=np.zeros((1, 3, 8, 8), np.float32))
        extra = ["--inputs", str(npz)]
    elif case == "bad-shape":
        extra = ["--shape", "x=1,3,abc"]
    elif case == "not-onnx":
        model = str(tmp_path / "model.py")
    elif case == "shape-vs-fixed-dim":
        extra = ["--shape", "x=1,3,17,16"]  # dims 2, 3 are fixed at 16
    elif case == "shape-unknown-input":
        extra = ["--shape", "y=1,10"]
    elif case == "zero-threads":
        extra = ["--threads", "0"]
    elif case == "negative-min-samples":
        extra = ["--min-samples", "-3"]
    r = _cli("profile", model, "--json", str(out), "--no-store", *FAST, *extra)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deploykit: error:"), r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


def test_help_imports_nothing_heavy():
    """`--help` stays instant because it imports no heavy library (what makes it slow), checked
    on Python's own import log rather than a wall-clock bound that a busy machine can break."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "deploykit", "--help"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "profile" in r.stdout
    # "import time: self [us] | cumulative | imported package" lines: the module names
    imported = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines()
                if line.startswith("import time:") and line.count("|") == 2}
    assert "deploykit.cli" in imported and "argparse" in imported  # the log is read right
    heavy = {m for m in imported
             if m.split(".")[0] in ("torch", "onnxruntime", "tvm", "openvino", "scipy")}
    assert not heavy, sorted(heavy)


class _Loaded:
    """The load-monitor seam (measure.make_load_monitor): every block sees 60% foreign load."""

    def start(self):
        pass

    def stop(self):
        return 0.6


def test_strict_exits_3_on_a_contaminated_measurement_outputs_still_written(
        onnx_file, tmp_path, monkeypatch, capsys):
    from deploykit.measure import timing as measure
    from deploykit.store import Store

    monkeypatch.setattr(measure, "make_load_monitor", _Loaded)
    monkeypatch.delenv("CI", raising=False)
    out, db = tmp_path / "r.json", tmp_path / "s.sqlite"
    args = ["profile", onnx_file, "--json", str(out), "--store", str(db), *FAST[:-1]]
    assert main([*args, "--strict"]) == 3
    err = capsys.readouterr().err
    assert "not a clean measurement (--strict, exit 3)" in err and "contaminated" in err
    d = json.loads(out.read_text())
    assert d["state"] == "contaminated" and d["reason"].startswith("100% of samples taken")
    with Store(db) as st:
        assert [r.state for r in st.runs()] == ["contaminated"]
    assert main(args) == 0  # not in CI: strict is off by default
    monkeypatch.setenv("CI", "true")
    assert main(args) == 3  # in CI it is on
    assert main([*args, "--no-strict"]) == 0
    capsys.readouterr()
    monkeypatch.setenv("COLUMNS", "250")  # one table row per line
    assert main(["profile", onnx_file, "--no-store", "--no-strict", *FAST[:-2]]) == 0
    text = capsys.readouterr().out
    assert text.lstrip().startswith("NOT A CLEAN MEASUREMENT: 100% of samples")
    assert "describes the loaded conditions" in text and "│ contaminated: 100% of" in text


def test_compare_json_has_the_worst_state_on_top(onnx_file, tmp_path, monkeypatch):
    from deploykit.measure import timing as measure

    monkeypatch.setattr(measure, "make_load_monitor", _Loaded)
    out = tmp_path / "c.json"
    assert main(["profile", onnx_file, onnx_file, "--no-store", "--json", str(out), *FAST]) == 0
    d = json.loads(out.read_text())
    assert d["state"] == "contaminated" and d["mode"] == "interleaved"
    assert all(i["report"]["state"] == "contaminated" for i in d["items"])


@pytest.mark.parametrize("value", ["-1", "inf", "nan"])
def test_bad_wait_quiet_is_a_usage_error(onnx_file, value, capsys):
    assert main(["profile", onnx_file, "--no-store", "--wait-quiet", value, *FAST]) == 2
    assert "--wait-quiet" in capsys.readouterr().err
