"""Export: verified torch->ONNX, the TorchScript fallback, verification that fires, bad inputs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from deploykit import cli
from deploykit.errors import InputError, VerificationError
from deploykit.export.exporter import export_model

MODELS = textwrap.dedent('''
    import argparse
    import torch
    from torch import nn

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(16, 32), nn.Linear(32, 4)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    @torch.jit.script
    def gate(y: torch.Tensor) -> torch.Tensor:
        if bool(y.sum() > 0):
            return y * 2.0
        return y - 1.0

    class Scripted(nn.Module):
        """Data-dependent control flow in TorchScript: torch.export refuses it, the TorchScript
        exporter keeps it as an ONNX If."""
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 8)

        def forward(self, x):
            return gate(self.lin(x))

    def mlp():
        return MLP()

    def scripted():
        return Scripted()

    def boom():
        raise ValueError("no such checkpoint directory")

    def not_a_module():
        return 42

    def example_inputs():
        return (torch.randn(2, 16),)
''')


@pytest.fixture(scope="module")
def models_py(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("factories") / "models.py"
    p.write_text(MODELS)
    return p


def _import(path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"factories_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _ort(path, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_tinyresnet_export_is_verified(tinyresnet_export, tinyresnet_onnx):
    r = tinyresnet_export
    assert r.exporter == "dynamo" and r.exporter_note is None and r.simplified
    assert len(r.checks) == 2 and all(c.ok for c in r.checks)  # batch 1 and batch 3
    assert {c.shape for c in r.checks} == {(1, 100), (3, 100)}
    assert all(c.max_rel < 1e-4 and c.cosine > 0.99999 for c in r.checks)
    model = onnx.load(str(tinyresnet_onnx))
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert r.model.sha256 == r.model.from_path(tinyresnet_onnx).sha256
    assert r.model.transform == "export" and r.model.config["exporter"] == "dynamo"
    assert r.facts["flops"] > 9e8 and r.facts["parameters"] > 1e6
    assert r.facts["file_bytes"] == tinyresnet_onnx.stat().st_size
    assert "BatchNormalization" not in r.facts["op_types"]  # folded by export/onnxsim
    names = [n.name for n in model.graph.node]
    assert len(set(names)) == len(names)  # nodes named after their torch modules
    assert {"stem/Conv", "layers.1.down/Conv", "fc/Gemm"} <= set(names)


def test_fallback_to_torchscript_keeps_control_flow(models_py, tmp_path):
    out = tmp_path / "scripted.onnx"
    r = export_model(f"{models_py}:scripted", out, input_shapes={"x": (2, 8)})
    assert r.exporter == "torchscript"
    assert "dynamo exporter failed" in r.exporter_note and "data-dependent" in r.exporter_note
    assert [c.shape for c in r.checks] == [(2, 8)] and all(c.ok for c in r.checks)  # one output
    model = onnx.load(str(out))
    assert "If" in {n.op_type for n in model.graph.node}
    # both branches are in the file: check each against torch (same seed -> same weights)
    import torch

    torch.manual_seed(0)
    ref_model = _import(models_py).scripted().eval()
    branches = set()
    for s in range(20):
        x = torch.randn(2, 8, generator=torch.Generator().manual_seed(s))
        with torch.no_grad():
            ref = ref_model(x).numpy()
            branches.add(bool(ref_model.lin(x).sum() > 0))
        np.testing.assert_allclose(_ort(out, x.numpy()), ref, rtol=1e-5, atol=1e-5)
    assert branches == {True, False}


FROZEN = textwrap.dedent('''
    import torch
    from torch import nn

    class Frozen(nn.Module):
        """A Python branch on data: tracing freezes the branch the example input takes."""
        def forward(self, x):
            if x.max() > 100:
                return x * 0.5
            return x * 2.0

    def build():
        return Frozen()

    def example_inputs():
        return (torch.full((2, 4), 1000.0),)
''')


def test_frozen_branch_fails_verification(tmp_path):
    """The trace takes the `> 100` branch; the seeded test inputs (normal) take the other one."""
    src = tmp_path / "frozen.py"
    src.write_text(FROZEN)
    out = tmp_path / "frozen.onnx"
    out.write_bytes(b"previous")
    with pytest.raises(VerificationError, match="disagrees with torch: max rel error"):
        export_model(f"{src}:build", out)
    assert out.read_bytes() == b"previous"  # atomic: the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frozen.onnx", "frozen.py"]


@pytest.mark.parametrize("rel_error,passes", [(1e-7, True), (1e-3, False)])
def test_verification_tolerance_bites(models_py, tmp_path, monkeypatch, rel_error, passes):
    """An error of 1e-3 of the output's scale fails the export; fp32 rounding (1e-7) does not."""
    import deploykit.fidelity as verify

    real = verify.run_ort

    def perturbed(model, feeds):
        outs = real(model, feeds)
        return [o + rel_error * np.abs(o).max() for o in outs]

    monkeypatch.setattr(verify, "run_ort", perturbed)
    out = tmp_path / "mlp.onnx"
    if passes:
        r = export_model(f"{models_py}:mlp", out)
        assert all(c.ok for c in r.checks) and out.exists()
        assert rel_error / 2 < r.checks[0].max_rel < 1e-5
    else:
        with pytest.raises(VerificationError, match="1e-04"):
            export_model(f"{models_py}:mlp", out)
        assert not out.exists()


def test_onnx_source_is_simplified_and_verified(mlp_onnx, tmp_path):
    out = tmp_path / "mlp_s.onnx"
    r = export_model(mlp_onnx, out, input_shapes={"x": (3, 16)})
    assert r.exporter == "onnx" and r.simplified and r.model.parent_sha256
    assert [c.shape for c in r.checks] == [(3, 4)] and r.checks[0].max_abs < 1e-5
    assert r.facts["macs"] == 3 * (16 * 32 + 32 * 4)  # facts at the given batch
    r18 = export_model(mlp_onnx, tmp_path / "o18.onnx", opset=18)
    assert r18.facts["opset"] == 18 and r18.checks[0].max_abs < 1e-5
    r2 = export_model(mlp_onnx, tmp_path / "plain.onnx", simplify=False)
    assert not r2.simplified and all(c.max_abs == 0 for c in r2.checks)
    assert r2.facts["assumed_dims"] == {"batch": 1}


def test_weights_load_safely(models_py, tmp_path):
    import argparse

    import torch

    torch.manual_seed(123)
    sd = {k: torch.randn_like(v) for k, v in _import(models_py).mlp().state_dict().items()}
    torch.save(sd, tmp_path / "plain.pt")
    r = export_model(f"{models_py}:mlp", tmp_path / "w.onnx", weights=tmp_path / "plain.pt")
    assert r.model.config["weights_sha256"]
    w0 = next(i for i in onnx.load(str(tmp_path / "w.onnx")).graph.initializer
              if tuple(i.dims) in ((16, 32), (32, 16)))
    a = onnx.numpy_helper.to_array(w0)
    ref = sd["a.weight"].numpy()
    assert np.allclose(a, ref) or np.allclose(a, ref.T)
    # a Lightning-style checkpoint with a Namespace inside needs pickle
    torch.save({"state_dict": sd, "hparams": argparse.Namespace(lr=0.1)}, tmp_path / "pickle.pt")
    with pytest.raises(InputError, match="needs pickle.*--trust-pickle"):
        export_model(f"{models_py}:mlp", tmp_path / "p.onnx", weights=tmp_path / "pickle.pt")
    assert not (tmp_path / "p.onnx").exists()
    r = export_model(f"{models_py}:mlp", tmp_path / "p.onnx", weights=tmp_path / "pickle.pt",
                     trust_pickle=True)
    assert r.checks[0].ok
    torch.save({"a.weight": torch.zeros(3, 3)}, tmp_path / "wrong.pt")
    with pytest.raises(InputError, match="does not fit the model"):
        export_model(f"{models_py}:mlp", tmp_path / "x.onnx", weights=tmp_path / "wrong.pt")


def _bad_inputs(tmp, models_py, mlp_onnx):
    (tmp / "garbage.onnx").write_bytes(b"\x08\x07 definitely not a model" * 50)
    (tmp / "truncated.onnx").write_bytes(mlp_onnx.read_bytes()[: mlp_onnx.stat().st_size // 2])
    (tmp / "outside.bin").write_bytes(np.ones(16, np.float32).tobytes())
    ext = onnx.load(str(mlp_onnx))
    w = ext.graph.initializer[0]
    w.ClearField("raw_data")
    w.ClearField("float_data")
    w.data_location = onnx.TensorProto.EXTERNAL
    w.external_data.add(key="location", value="../outside.bin")
    (tmp / "m").mkdir()
    (tmp / "m" / "evil.onnx").write_bytes(ext.SerializeToString())
    import torch

    torch.save({"hp": __import__("argparse").Namespace(a=1)}, tmp / "pickled.pt")
    return {
        "missing onnx": ([str(tmp / "nope.onnx")], "model file not found"),
        "missing factory file": ([f"{tmp}/nope.py:build"], "factory file not found"),
        "garbage onnx": ([str(tmp / "garbage.onnx")], "not a valid ONNX model"),
        "truncated onnx": ([str(tmp / "truncated.onnx")], "not a valid ONNX model"),
        "external data outside": ([str(tmp / "m" / "evil.onnx")], "outside the model's folder"),
        "factory raises": ([f"{models_py}:boom"], "factory .*boom raised ValueError: no such"),
        "not a module": ([f"{models_py}:not_a_module"], "returned int, not a torch.nn.Module"),
        "no such factory": ([f"{models_py}:nothing"], "has no callable 'nothing'"),
        "wrong shape": ([f"{models_py}:mlp", "--shape", "x=2,15"],
                        "model rejects inputs x=2x15: RuntimeError"),
        "bad shape syntax": ([f"{models_py}:mlp", "--shape", "x=2,a"], "bad --shape"),
        "unknown input": ([f"{models_py}:mlp", "--shape", "y=2,16"], "unknown input"),
        "onnx wrong shape": ([str(mlp_onnx), "--shape", "x=2,15"], "model expects"),
        "unconvertible opset": ([str(mlp_onnx), "--opset", "11"], "cannot convert .* opset 11"),
        "pickle checkpoint": ([f"{models_py}:mlp", "--weights", str(tmp / "pickled.pt")],
                              "needs pickle"),
        "missing checkpoint": ([f"{models_py}:mlp", "--weights", str(tmp / "no.pt")],
                               "checkpoint not found"),
    }


def test_bad_inputs_exit_2_with_one_line_and_no_output(models_py, mlp_onnx, tmp_path, capsys):
    cases = _bad_inputs(tmp_path, models_py, mlp_onnx)
    before = set(tmp_path.rglob("*"))
    for case, (argv, needle) in cases.items():
        out = tmp_path / "out.onnx"
        rc = cli.main(["export", *argv, "-o", str(out), "--json", str(tmp_path / "f.json")])
        err = capsys.readouterr().err
        assert rc == 2, case
        assert err.count("\n") == 1 and err.startswith("deploykit: error: "), (case, err)
        import re

        assert re.search(needle, err), (case, err)
        assert set(tmp_path.rglob("*")) == before, case  # nothing written, no temp files


def test_cli_subprocess_one_line_no_traceback(tmp_path):
    """The real entry point: exit code 2 and one line (the in-process test covers each case)."""
    out = tmp_path / "o.onnx"
    p = subprocess.run([sys.executable, "-m", "deploykit", "export", f"{tmp_path}/no.py:build",
                        "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr == f"deploykit: error: factory file not found: {tmp_path}/no.py\n"
    assert not out.exists()


def test_cli_success_prints_tables_and_writes_json(models_py, tmp_path, capsys):
    import json

    out, facts = tmp_path / "mlp.onnx", tmp_path / "facts.json"
    assert cli.main(["export", f"{models_py}:mlp", "-o", str(out), "--dynamic-batch",
                     "--json", str(facts)]) == 0
    text = capsys.readouterr().out
    assert "verification against torch" in text and "max rel err" in text
    d = json.loads(facts.read_text())
    assert d["exporter"] == "dynamo" and len(d["checks"]) == 2 and all(c["ok"] for c in d["checks"])
    assert d["facts"]["macs"] == 2 * (16 * 32 + 32 * 4)  # at the example batch of 2
    assert d["facts"]["assumed_dims"] == {"batch": 2} and d["model"]["sha256"]


def test_dynamo_model_that_fails_verification_falls_back(models_py, tmp_path, monkeypatch):
    """An exporter only "works" when its model agrees with torch: a wrong dynamo model (one
    weight off by 1%) is dropped for the TorchScript exporter's."""
    import deploykit.export.exporters as ex

    real = ex._export_dynamo

    def wrong(*a, **k):
        proto = real(*a, **k)
        w = next(i for i in proto.graph.initializer if len(i.dims) == 2)
        w.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(w) * 1.01, w.name))
        return proto

    monkeypatch.setattr(ex, "_export_dynamo", wrong)
    r = export_model(f"{models_py}:mlp", tmp_path / "m.onnx")
    assert r.exporter == "torchscript"
    assert [c.shape for c in r.checks] == [(2, 4)] and all(c.ok for c in r.checks)  # one output
    assert r.exporter_note.startswith("dynamo exporter's model failed verification")


def test_simplifier_failure_is_a_warning(mlp_onnx, tmp_path, monkeypatch):
    import onnxsim

    def broken(*a, **k):
        raise RuntimeError("simplifier crashed\nsecond line")

    monkeypatch.setattr(onnxsim, "simplify", broken)
    r = export_model(mlp_onnx, tmp_path / "m.onnx")
    assert not r.simplified and (tmp_path / "m.onnx").exists()
    assert r.warnings == ("onnxsim failed, kept the unsimplified model: "
                          "RuntimeError: simplifier crashed",)
