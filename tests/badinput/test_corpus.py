"""Every bad input to every verb: exactly one `deploykit: error:` line naming the culprit, the
documented exit code, no traceback, and nothing written or changed (the case's output folder and
every input file are listed, with their content hashes, before and after).

Runs the CLI in-process (deploykit.cli.main): a case that fails as it should costs milliseconds,
one that starts measuring or training would show up as a slow case."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from _cases import all_cases

CASES = all_cases()


def _listing(*roots: Path) -> dict[str, str]:
    """path -> sha256 (files) or kind, for everything below the roots (symlinks not followed)."""
    out = {}
    for root in roots:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath, name)
                if p.is_symlink():
                    out[str(p)] = "link:" + os.readlink(p)
                elif p.is_dir():
                    out[str(p)] = "dir"
                else:
                    out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, world, tmp_path, capsys, monkeypatch):
    from deploykit.cli import main

    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("DEPLOYKIT_STORE", str(tmp_path / "default-store.sqlite"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    if case.prepare is not None:
        import _bundle_cases

        prep = getattr(_bundle_cases, case.prepare) if isinstance(case.prepare, str) else \
            case.prepare
        prep(out)
    argv = [a.format(out=out, **world) for a in case.argv]
    world_root = Path(world["mlp"]).parent
    before = _listing(out, world_root, tmp_path / "tmp")
    assert not (tmp_path / "default-store.sqlite").exists()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    stdout, stderr = capsys.readouterr()
    assert "Traceback" not in stdout + stderr, stderr
    assert rc == case.code, f"exit {rc}, expected {case.code}; stderr: {stderr}"
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("deploykit: error: ")]
    assert len(errors) == 1, f"expected one error line, got: {stderr!r}"
    assert case.culprit in errors[0], f"{case.culprit!r} not named in: {errors[0]}"
    assert _listing(out, world_root, tmp_path / "tmp") == before, "outputs or inputs changed"
    assert not (tmp_path / "default-store.sqlite").exists()
