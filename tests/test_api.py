"""The Python API: the README's example runs as written, and each function returns its typed
result with strict JSON, a readable repr and, when asked, lineage in the store."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import deploykit as dk
from deploykit.core import LatencyReport, TimingPlan
from deploykit.errors import InputError
from deploykit.store import Store

REPO = Path(__file__).resolve().parents[1]
QUICK = TimingPlan(warmup_min_s=0.01, warmup_max_s=0.1, max_time_s=1.5, block_s=0.1)


def _strict(text: str):
    def refuse(c):
        raise AssertionError(f"non-strict JSON constant {c}")
    return json.loads(text, parse_constant=refuse)


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 4, 3)).eval()


def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API"):text.index("## Architecture")]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "net.onnx").is_file() and (tmp_path / "net.int8.onnx").is_file()


def test_export_compress_profile_compare_with_lineage(tmp_path):
    store = tmp_path / "r.sqlite"
    x = torch.randn(1, 3, 16, 16)
    exp = dk.export(_net(), x, tmp_path / "m.onnx", store=store)
    assert exp.model.path == tmp_path / "m.onnx" and exp.checks and all(c.ok for c in exp.checks)
    assert exp.model.config["source"].startswith("<module torch.nn.modules.container.Sequential")
    assert "ExportResult(" in repr(exp) and "exporter" in repr(exp)
    assert _strict(exp.to_json())["model"]["sha256"] == exp.model.sha256

    res = dk.compress(exp, "prune-channels:ratio=0.5", tmp_path / "f.onnx", store=store)
    assert res.final.path == tmp_path / "f.onnx" and res.final.path.is_file()
    assert [s.name for s in res.applied] == ["prune-channels"]
    assert res.final.parent_sha256 == exp.model.sha256 and res.final.transform == "prune-channels"
    with Store(store) as s:  # how was f.onnx made: channels pruned from the exported module
        chain = s.lineage(res.final.sha256)
    assert [m.sha256 for m in chain][:2] == [res.final.sha256, exp.model.sha256]

    rep = dk.profile(res, plan=QUICK, per_op=False, store=store)
    assert isinstance(rep, LatencyReport) and len(rep.samples_ms) >= QUICK.min_samples
    assert np.isfinite(rep.median_ms) and rep.median_ms > 0 and rep.model_sha256 == res.final.sha256
    assert re.search(r"median [\d.]+ ms, 95% CI", repr(rep))
    assert _strict(rep.to_json())["median_ms"] == pytest.approx(rep.median_ms)
    with Store(store) as s:
        assert any(r.model_sha256 == res.final.sha256 for r in s.runs())

    cmp = dk.compare([exp, res], plan=QUICK)
    assert len(cmp.reports) == 2 and [r.model_sha256 for r in cmp.reports] == \
        [exp.model.sha256, res.final.sha256]
    r, lo, hi = cmp.speedup(1)
    assert lo <= r <= hi and r > 0
    assert "Comparison(" in repr(cmp) and len(_strict(cmp.to_json())["items"]) == 2


def test_check_is_the_cli_gate_with_memory_and_cold_start(tmp_path):
    """dk.check runs what `deploykit check` runs (deploykit/gatecheck.py): the latency verdict
    interleaved against the old model, and the memory and cold-start gates beside it."""
    from deploykit.cli import main

    x = torch.randn(1, 3, 16, 16)
    old = dk.export(_net(), x, tmp_path / "old.onnx")
    new = dk.compress(old, "prune-channels:ratio=0.5", tmp_path / "new.onnx")
    base = tmp_path / "b.json"
    assert main(["baseline", str(old.model.path), "-o", str(base), "--max-time", "1",
                 "--memory-runs", "1", "--no-store", "--no-strict", "-q"]) == 0
    out = dk.check(new, base, against=old, max_time=2.0, memory_runs=1)
    r = out.result
    assert r["mode"] == "interleaved" and r["model_sha256"] == new.final.sha256
    assert r["baseline_model_sha256"] == old.model.sha256 and r["n_units"] >= 8
    assert r["memory"]["status"] in ("no-change", "within-threshold", "improvement",
                                     "regression")  # measured: fresh processes on both sides
    assert r["cold_start"]["status"] != "no-data"
    assert out.failed == (r["latency_failed"] or r["memory"]["failed"]
                          or r["cold_start"]["failed"])
    assert out.new_report.model_sha256 == new.final.sha256
    assert "CheckOutcome(" in repr(out) and _strict(out.to_json())["status"] == r["status"]
    with pytest.raises(InputError, match="--max-time"):
        dk.check(new, base, max_time=float("nan"))


def test_strict_json_turns_nan_into_null():
    from deploykit.core import to_json

    assert _strict(to_json({"a": float("nan"), "b": [float("inf"), np.float32(1.5)]})) == \
        {"a": None, "b": [None, 1.5]}


def test_bad_inputs_are_deploykit_errors(tmp_path):
    with pytest.raises(InputError, match="example_inputs"):
        dk.export(_net(), None, tmp_path / "m.onnx")
    with pytest.raises(InputError, match="not found"):
        dk.profile(tmp_path / "missing.onnx")
    with pytest.raises(InputError, match="expected an .onnx"):
        dk.profile(42)
    with pytest.raises(InputError, match="at least two"):
        dk.compare([tmp_path / "missing.onnx"][:0])
    assert not list(tmp_path.iterdir())


def test_api_names_that_are_subpackages_stay_callable(tmp_path):
    import deploykit.export.exporter as ex  # every import form still finds the sub-package
    from deploykit.search import engine  # noqa: F401

    assert ex.export_module is dk.export.exporter.export_module
    assert callable(dk.export) and callable(dk.search) and callable(dk.compress)
    with pytest.raises(InputError, match="example_inputs"):  # the call is the API's
        dk.export(_net(), None, tmp_path / "m.onnx")
