"""Trust at the boundaries, beyond the bad-input corpus: SIGTERM, stale search outputs, foreign
stores left untouched, external-data models from any working directory, a gate that refuses
unusable numbers, strict JSON."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from deploykit.cli import main
from deploykit.errors import InputError, StoreError

from onnx_models import make_mlp

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ext_model(tmp_path_factory) -> Path:
    """The tiny MLP with its weights in external data (ext.bin beside it)."""
    d = tmp_path_factory.mktemp("ext")
    m = onnx.load(str(make_mlp(d / "plain.onnx")))
    onnx.save(m, str(d / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.bin", size_threshold=0)
    (d / "plain.onnx").unlink()
    return d / "ext.onnx"


@pytest.mark.parametrize("verb", ["profile", "compress", "package", "export"])
def test_external_data_model_works_from_another_directory(verb, ext_model, tmp_path,
                                                          monkeypatch, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    argv = {
        "profile": ["profile", str(ext_model), "--max-time", "0.3", "--warmup-max", "0.1",
                    "--no-roofline", "--no-per-op", "-q", "--no-store", "--no-strict"],
        "compress": ["compress", str(ext_model), "--recipe", "quantize-dynamic", "-o", "c.onnx",
                     "--no-measure", "--no-store"],
        "package": ["package", str(ext_model), "-o", "bundle", "--no-measure", "--no-store"],
        "export": ["export", str(ext_model), "-o", "e.onnx"],
    }[verb]
    assert main(argv) == 0, capsys.readouterr().err


def test_gate_model_loader_reads_external_data_model_from_another_directory(ext_model, tmp_path,
                                                                           monkeypatch):
    from deploykit.gate.rounds import load_model

    monkeypatch.chdir(tmp_path)
    model, inputs, outputs = load_model(str(ext_model))
    assert inputs[0].name == "x" and outputs[0].name == "y"


def test_foreign_sqlite_is_refused_and_left_byte_identical(tmp_path):
    from deploykit.store import Store

    path = tmp_path / "app.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not a deploykit results store"):
        Store(path)
    assert path.read_bytes() == before  # journal mode still rollback, no tables added
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]  # no -wal / -shm


def test_store_url_is_refused_and_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    mlp = make_mlp(tmp_path / "m.onnx")
    rc = main(["profile", str(mlp), "--store", "postgresql://user@host:5432/db", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "postgresql://" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_search_without_recommendation_removes_stale_recommended_model(tmp_path):
    from deploykit.search.engine import Row, SearchConfig, SearchResult, write_outputs
    from deploykit.search.candidates import Candidate

    out = tmp_path / "out"
    out.mkdir()
    (out / "recommended.onnx").write_bytes(b"from an earlier run")
    base = Row(Candidate("baseline"), status="ok", fidelity=1.0,
               stats={"params": 10, "bytes": 40, "flops": 100},
               measured={"median_ms": 1.0, "ci95_ms": [0.9, 1.1], "n": 50,
                         "stop_reason": "time-cap"})
    cost = {"candidates": 1, "built": 1, "fidelity_ok": 1, "measured_whole": 1,
            "units_timed": 0, "units_reused": 0, "seconds": 1.0, "netadapt": None}
    result = SearchResult(SearchConfig(), "m.onnx", "ort-cpu", [base], None,
                          "no candidate meets the budget", {}, cost, {}, {}, [])
    paths = write_outputs(result, out)
    assert not (out / "recommended.onnx").exists() and "model" not in paths
    assert json.loads((out / "search.json").read_text())["recommendation"] is None
    assert (out / "report.html").is_file()


def test_sigterm_is_handled_like_interrupt_and_leaves_nothing(tmp_path):
    mlp = make_mlp(tmp_path / "m.onnx")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", TMPDIR=str(tmpdir))
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploykit", "compress", str(mlp), "--recipe", "quantize-dynamic",
         "-o", str(tmp_path / "c.onnx"), "--json", str(tmp_path / "c.json"), "--keep-steps",
         str(tmp_path / "steps"), "--max-time", "60", "--store", str(tmp_path / "s.sqlite")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    for line in proc.stdout:  # the recipe has started: staging folders exist now
        if line.startswith("recipe on") or time.time() > deadline:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("WARNING")]
    assert lines[-1].startswith("deploykit: terminated (SIGTERM)") and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "tmp"]
    assert list(tmpdir.iterdir()) in ([], [tmpdir / ".ses"])  # onnxruntime's session-id file


def test_gate_refuses_unusable_numbers():
    from deploykit.gate.decision import Estimate, decide

    good = dict(ratio=1.2, lo=1.1, hi=1.3, conf=0.99, mode="interleaved", n_units=10,
                p_units=0.001, p_raw=0.001, old_median_ms=1.0, new_median_ms=1.2)
    assert decide(Estimate(**good), 0.05).status == "regression"
    for key, bad in [("ratio", math.nan), ("lo", -1.0), ("hi", math.nan), ("p_raw", math.nan),
                     ("old_median_ms", 0.0), ("new_median_ms", math.inf), ("n_units", 3),
                     ("ratio", 5.0)]:  # the last: a ratio outside its own interval
        with pytest.raises(InputError, match="cannot decide"):
            decide(Estimate(**dict(good, **{key: bad})), 0.05)


def test_json_outputs_are_strict():
    import numpy as np

    from deploykit.fsutil import dumps_json

    text = dumps_json({"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": np.float32(2.5),
                       "d": np.arange(2), "e": Path("x")})
    assert json.loads(text) == {"a": None, "b": [None, None, 1.5], "c": 2.5, "d": [0, 1],
                                "e": "x"}
    assert "NaN" not in text and "Infinity" not in text


def test_compress_failing_after_its_steps_ran_leaves_no_output(tmp_path, capsys):
    """fold-bn finds no BatchNorm in the MLP: the recipe ran (in the staged --keep-steps folder)
    and failed; none of -o, --json, --keep-steps, the store may appear."""
    mlp = make_mlp(tmp_path / "m.onnx")
    rc = main(["compress", str(mlp), "--recipe", "fold-bn", "-o", str(tmp_path / "c.onnx"),
               "--json", str(tmp_path / "c.json"), "--keep-steps", str(tmp_path / "steps"),
               "--no-measure", "--store", str(tmp_path / "s.sqlite")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no step of the recipe applied" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
