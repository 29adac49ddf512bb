"""`deploykit package` / `deploykit verify` with ORT targets: the .ort loads and matches the golden
outputs, every kind of tampering fails verification (exit 1), unusable folders exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from deploykit.cli import main
from deploykit.bundle.runners import selftest as st

from _bundles import reseal
from onnx_models import conv_relu_gemm

SHAPE = ["--shape", "x=1,3,16,16"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return Path(conv_relu_gemm(tmp_path_factory.mktemp("m") / "conv.onnx"))


@pytest.fixture(scope="module")
def bundle(model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("b") / "bundle"
    assert main(["package", str(model), "-t", "ort-cpu", "-o", str(out), "--no-measure",
                 "--no-store", *SHAPE]) == 0
    return out


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(bundle, dst)
    return dst


def test_ort_bundle_contents_and_ort_file_matches_golden(bundle, model):
    import onnxruntime as ort

    m = json.loads((bundle / "manifest.json").read_text())
    for rel in ("model.ort", "model.optimized.onnx", "required_operators_and_types.config",
                "golden/inputs.npz", "golden/outputs.npz", "selftest.py"):
        assert (bundle / rel).is_file() and m["files"][rel] == st.sha256_file(bundle / rel)
    assert m["manifest_sha256"] == st.manifest_digest(m)
    assert m["ort"]["graph_optimization_level"] == "all"
    assert m["inputs"] == [{"name": "x", "shape": ["batch", 3, 16, 16], "dtype": "float32"}]
    assert m["outputs"][0]["name"] == "y"
    assert m["model"]["sha256"] == st.sha256_file(model)
    assert m["sizes"]["total_bytes"] == sum((bundle / f).stat().st_size for f in m["files"])
    assert m["sizes"]["payload_bytes"] == (bundle / "model.ort").stat().st_size
    assert (bundle / "model.ort").read_bytes()[4:8] == b"ORTM"  # flatbuffer file identifier
    config = (bundle / "required_operators_and_types.config").read_text()
    assert "Conv" in config and "Gemm" in config and "deploykit-ort-" not in config

    feeds = st.load_npz(bundle / "golden/inputs.npz")
    golden = st.load_npz(bundle / "golden/outputs.npz")
    sess = ort.InferenceSession(str(bundle / "model.ort"), providers=["CPUExecutionProvider"])
    got = sess.run(None, feeds)[0]
    tol = m["golden"]["tolerance"]["y"]
    assert np.allclose(got, golden["y"], atol=tol["atol"], rtol=tol["rtol"])
    # the golden outputs are the input model's, to fp32 rounding (fidelity recorded)
    assert m["fidelity"][0]["max_rel"] <= 1e-5
    # and the tolerance is tight: a 1% change of the outputs would fail it
    assert not np.allclose(golden["y"] * 1.01, golden["y"], atol=tol["atol"], rtol=tol["rtol"])


def test_arm_platform_drops_x86_only_layouts(model, tmp_path):
    out = tmp_path / "arm"
    assert main(["package", str(model), "-o", str(out), "--ort-platform", "arm", "--no-measure",
                 "--no-store", *SHAPE]) == 0
    assert "nchwc" not in (out / "required_operators_and_types.config").read_text()
    assert json.loads((out / "manifest.json").read_text())["ort"]["platform"] == "arm"
    assert main(["verify", str(out)]) == 0


def test_verify_passes_and_bundle_selftest_script_agrees(bundle, capsys):
    assert main(["verify", str(bundle)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("PASS")
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "selftest.py"], cwd=bundle, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("PASS")


def test_changed_weights_fail_by_hash_and_by_output(bundle, tmp_path, capsys):
    import onnx
    from onnx import numpy_helper

    b = _copy(bundle, tmp_path)
    # the .ort holds the same initializers as the optimized .onnx (same level, same options)
    inits = onnx.load(str(b / "model.optimized.onnx")).graph.initializer
    w = max((numpy_helper.to_array(t) for t in inits), key=lambda a: a.nbytes)
    blob = (b / "model.ort").read_bytes()
    at = blob.find(w.tobytes())
    assert at > 0
    blob = blob[:at] + (w * 1.5).astype(w.dtype).tobytes() + blob[at + w.nbytes:]
    (b / "model.ort").write_bytes(blob)
    assert main(["verify", str(b)]) == 1
    out = capsys.readouterr().out
    assert "model.ort: sha256 mismatch" in out
    assert "output y" not in out  # integrity failed: the changed model is never loaded
    assert out.strip().splitlines()[-1].startswith("FAIL")
    reseal(b)  # hashes recomputed by someone who read selftest.py: the outputs still tell
    assert main(["verify", str(b)]) == 1
    out = capsys.readouterr().out
    assert "integrity" not in out and "output y: MISMATCH" in out


def test_edited_manifest_fails(bundle, tmp_path, capsys):
    b = _copy(bundle, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    m["golden"]["tolerance"]["y"]["atol"] = 1e3  # loosen the check: must not go unnoticed
    (b / "manifest.json").write_text(json.dumps(m))
    assert main(["verify", str(b)]) == 1
    assert "manifest.json was edited" in capsys.readouterr().out


def test_altered_golden_output_fails(bundle, tmp_path, capsys):
    b = _copy(bundle, tmp_path)
    g = st.load_npz(b / "golden/outputs.npz")
    g["y"] = g["y"] + 0.5
    with open(b / "golden/outputs.npz", "wb") as f:
        np.savez(f, **g)
    assert main(["verify", str(b)]) == 1
    out = capsys.readouterr().out
    assert "golden/outputs.npz: sha256 mismatch" in out
    reseal(b)
    assert main(["verify", str(b)]) == 1
    assert "output y: MISMATCH" in capsys.readouterr().out


def test_missing_file_fails(bundle, tmp_path, capsys):
    b = _copy(bundle, tmp_path)
    (b / "required_operators_and_types.config").unlink()
    assert main(["verify", str(b)]) == 1
    assert "required_operators_and_types.config: missing" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing", "not-a-bundle", "corrupt-manifest", "file"])
def test_unusable_folder_exits_2_with_one_line(bundle, tmp_path, capsys, case):
    path = tmp_path / "x"
    if case == "not-a-bundle":
        path.mkdir()
    elif case == "corrupt-manifest":
        path = _copy(bundle, tmp_path)
        text = (path / "manifest.json").read_text()
        (path / "manifest.json").write_text(text[: len(text) // 2])
    elif case == "file":
        path.write_text("hello")
    assert main(["verify", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("deploykit: error:") and len(err.splitlines()) == 1


def test_existing_output_needs_force(model, bundle, capsys):
    assert main(["package", str(model), "-o", str(bundle), "--no-measure", "--no-store",
                 *SHAPE]) == 2
    assert "--force" in capsys.readouterr().err


def test_measured_int8_bundle_records_latency_recipe_tolerance_and_original(model, tmp_path):
    """int8 via onnxruntime.quantization: looser (int8) tolerance, fidelity vs the original,
    latency with CI and environment from the target's profile."""
    from onnxruntime.quantization import QuantType, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(3)
            self.batches = iter([{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}
                                 for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    q = tmp_path / "int8.onnx"
    quantize_static(str(model), str(q), Reader(), activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True)
    out = tmp_path / "int8-bundle"
    assert main(["package", str(q), "-o", str(out), "--original", str(model), "--no-store",
                 "--max-time", "0.5", "--warmup-max", "0.2", "--min-samples", "10", *SHAPE]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["golden"]["fidelity_kind"] == "int8"
    scale = float(np.max(np.abs(st.load_npz(out / "golden/outputs.npz")["y"])))
    assert m["golden"]["tolerance"]["y"]["atol"] == pytest.approx(1e-2 * scale)
    assert [f["against"] for f in m["fidelity"]][1].startswith("original model")
    assert m["fidelity"][1]["cosine"] > 0.9
    lat = m["latency"]
    assert lat["samples"] >= 10 and lat["ci95_ms"][0] <= lat["median_ms"] <= lat["ci95_ms"][1]
    assert lat["env"]["threads"] == 2 and lat["env"]["cpu_model"]
    assert main(["verify", str(out)]) == 0


def test_lineage_and_recipe_come_from_the_store(model, tmp_path):
    """A model that compress recorded in the store carries its recipe into the manifest."""
    from deploykit.core import ModelRef
    from deploykit.store import Store

    child = tmp_path / "child.onnx"
    conv_relu_gemm(child, seed=1)
    db = tmp_path / "results.sqlite"
    parent = ModelRef.from_path(model)
    with Store(db) as store:
        store.record_model(parent)
        store.record_model(ModelRef.from_path(child, parent_sha256=parent.sha256,
                                              transform="prune-channels",
                                              config={"ratio": 0.5}))
    out = tmp_path / "bundle"
    assert main(["package", str(child), "-o", str(out), "--no-measure", "--store", str(db),
                 *SHAPE]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert [x["sha256"] for x in m["model"]["lineage"]] == [st.sha256_file(child), parent.sha256]
    assert m["recipe"] == [{"transform": "prune-channels", "config": {"ratio": 0.5}}]


def test_unsupported_backend_is_a_one_line_error(model, tmp_path):
    """Every registered backend packages (ORT, TVM, OpenVINO); a target of another backend is
    refused before anything is written."""
    from deploykit.backends.base import Target
    from deploykit.bundle.package import PackageOptions, package
    from deploykit.errors import InputError

    with pytest.raises(InputError, match="ORT, TVM and OpenVINO targets"):
        package(model, Target("other", {"backend": "other"}), tmp_path / "b",
                PackageOptions(measure=False))
    assert not (tmp_path / "b").exists() and not list(tmp_path.iterdir())
