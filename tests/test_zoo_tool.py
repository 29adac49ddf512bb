"""tools/zoo.py: the corpus it names and the ZOO.md it renders from results alone."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import zoo  # noqa: E402


def test_corpus_has_the_zoo_files_and_at_least_25_architectures():
    names = list(zoo.corpus())
    assert len([n for n in names if n.startswith("onnx:")]) == 9
    assert len(names) >= 25 and "hf:bert" in names and "hf:vit" in names


def test_report_counts_pass_rates_over_the_cells_run():
    results = {"models": {
        "onnx:a": {"cells": {"export": {"ok": True, "text": "as given"},
                             "int8 static": {"ok": True, "text": "ok 2.00x"},
                             "int8 dynamic": {"ok": None, "text": "n/a (no MatMul/Gemm)"}}},
        "hf:b": {"cells": {"export": {"ok": False, "text": "exporter failed | twice"}}}},
        "runs": ["x"]}
    md = zoo.report(results)
    assert "export: 1/2" in md and "int8 static: 1/1" in md and "int8 dynamic: 0/0" in md
    assert "| hf:b | exporter failed / twice | not reached |" in md
    assert md.count("\n| ") == 3  # header + 2 models


def test_a_partial_run_keeps_the_cells_it_did_not_rerun():
    results = {"models": {"hf:a": {"cells": {"export": {"ok": True, "text": "ok"},
                                             "profile": {"ok": True, "text": "ok 1.00 ms"}}}}}
    zoo.merge(results, "hf:a", {"cells": {"export": {"ok": True, "text": "ok (dynamo)"},
                                          "search": {"ok": False, "text": "timeout"}}},
              partial=True)
    cells = results["models"]["hf:a"]["cells"]
    assert cells["profile"]["text"] == "ok 1.00 ms" and cells["search"]["text"] == "timeout"
    assert cells["export"]["text"] == "ok (dynamo)"
    zoo.merge(results, "hf:a", {"cells": {"export": {"ok": False, "text": "x"}}}, partial=False)
    assert list(results["models"]["hf:a"]["cells"]) == ["export"]


def test_a_cli_run_killed_by_a_signal_says_so(tmp_path, monkeypatch):
    """A run the OOM killer ends writes no error line of its own: the cell says it was killed,
    not the last line it printed."""
    import subprocess

    real = subprocess.run

    def killed(cmd, **kw):  # a real process, really killed, in place of the CLI
        return real(["sh", "-c", "echo 'recipe on m.onnx:'; kill -9 $$"], **kw)

    monkeypatch.setattr(zoo.subprocess, "run", killed)
    ok, _, why = zoo.dk(["compress", "m.onnx"], 30, tmp_path)
    assert not ok and why == "killed by SIGKILL (out of memory?)"
