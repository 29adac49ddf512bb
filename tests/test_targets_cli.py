"""`deploykit targets` end to end: every registry file listed with its backend and whether it is
usable here (the reason when not), $DEPLOYKIT_TARGETS folders first, a broken file one error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent


def _cli(*args, targets_dir: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "DEPLOYKIT_TARGETS": str(targets_dir),
           "COLUMNS": "300"}  # rich wraps table cells to the terminal width
    return subprocess.run([sys.executable, "-m", "deploykit", "targets", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)


def _user_targets(d: Path) -> Path:
    d.mkdir()
    (d / "ort-cpu-1t.toml").write_text(
        'name = "ort-cpu-1t"\nbackend = "ort"\ndescription = "one thread"\nthreads = 1\n'
        '[options]\nproviders = ["CPUExecutionProvider"]\n')
    (d / "ort-nope.toml").write_text(
        'name = "ort-nope"\nbackend = "ort"\ndescription = "a provider nobody has"\n'
        '[options]\nproviders = ["NoSuchExecutionProvider"]\n')
    (d / "ort-cpu.toml").write_text(  # same name as the repo's: the user's folder wins
        'name = "ort-cpu"\nbackend = "ort"\ndescription = "user override"\nthreads = 1\n')
    return d


def test_json_lists_every_target_with_availability(tmp_path):
    user = _user_targets(tmp_path / "mine")
    r = _cli("--json", targets_dir=user)
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    repo = {tomllib.loads(f.read_text())["name"]: tomllib.loads(f.read_text())
            for f in sorted((REPO / "targets").glob("*.toml"))}
    assert len(repo) >= 7 and set(rows) == set(repo) | {"ort-cpu-1t", "ort-nope"}
    for name, desc in repo.items():
        if name != "ort-cpu":
            assert rows[name]["backend"] == desc["backend"]
            assert rows[name]["file"] == str(REPO / "targets" / f"{name}.toml")
    for row in rows.values():  # available, or unavailable with a reason; never both
        assert row["available"] == (row["reason"] is None), row
        assert row["available"] or row["reason"].strip(), row
    assert rows["ort-cpu"]["file"] == str(user / "ort-cpu.toml")
    assert rows["ort-cpu"]["description"] == "user override" and rows["ort-cpu"]["threads"] == 1
    assert rows["ort-cpu-1t"]["available"] and rows["ort-cpu-1t"]["threads"] == 1
    assert rows["ort-nope"] == {**rows["ort-nope"], "available": False,
                                "reason": "no NoSuchExecutionProvider"}
    # `make test` installs the tvm and openvino extras: their CPU targets must be usable
    for name in ("ov-cpu", "tvm-x86"):
        assert rows[name]["available"], rows[name]


def test_table_shows_status_and_reason(tmp_path, monkeypatch, capsys):
    from deploykit.cli import main

    monkeypatch.setenv("DEPLOYKIT_TARGETS", str(_user_targets(tmp_path / "mine")))
    monkeypatch.setenv("COLUMNS", "300")
    assert main(["targets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    nope = next(line for line in lines if "ort-nope" in line)
    assert "unavailable: no NoSuchExecutionProvider" in nope and "a provider nobody has" in nope
    one = next(line for line in lines if "ort-cpu-1t" in line)
    assert "available" in one and "unavailable" not in one


def test_broken_target_file_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    from deploykit.cli import main

    d = tmp_path / "bad"
    d.mkdir()
    (d / "gpu9000.toml").write_text('name = "gpu9000"\nbackend = "cuda-magic"\n')
    monkeypatch.setenv("DEPLOYKIT_TARGETS", str(d))
    assert main(["targets", "--json"]) == 2
    out, stderr = capsys.readouterr()
    err = stderr.strip().splitlines()
    assert out == "" and len(err) == 1 and err[0].startswith("deploykit: error:"), stderr
    assert "gpu9000.toml" in err[0] and "unknown backend 'cuda-magic'" in err[0]
