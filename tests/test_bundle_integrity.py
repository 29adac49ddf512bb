"""`deploykit verify` checks everything before it loads or executes anything of a bundle.

The bundles here are TVM-shaped folders built in the test, with a runner script and a model.so
that each create a marker file when executed / loaded: the untampered bundle proves that they do
run, and every kind of tampering proves that, after a failed integrity check, they do not.
"""

from __future__ import annotations

import subprocess

import pytest

from deploykit.cli import main
from deploykit.bundle.runners import selftest as st

from _bundles import (TAMPERING, _extra_script, _tamper_library, edit_manifest,  # noqa: F401
                      make_bundle)


@pytest.fixture
def fresh(tmp_path):
    return make_bundle(tmp_path)


def test_untampered_bundle_runs_its_runner(fresh, capsys):
    bundle, ran, _ = fresh
    assert main(["verify", str(bundle)]) == 0
    assert ran.exists()  # the fixture's runner really runs when the bundle is intact
    assert "PASS" in capsys.readouterr().out


def test_untampered_library_is_loaded_by_python_verify(fresh, capsys):
    bundle, _, loaded = fresh
    main(["verify", str(bundle), "--python"])  # not a TVM module: the check itself fails
    assert loaded.exists()  # ...but only after dlopen ran the library's constructor


@pytest.mark.parametrize("tamper", TAMPERING, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("how", [[], ["--python"]], ids=["runner", "python"])
def test_tampered_bundle_runs_nothing(fresh, tmp_path, tamper, how, capsys):
    bundle, ran, loaded = fresh
    expected = tamper(bundle, tmp_path)
    assert main(["verify", str(bundle), *how]) == 1
    assert not ran.exists() and not loaded.exists()
    out, err = capsys.readouterr()
    assert expected in out and "FAIL" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deploykit: error: ")
    assert "nothing of it was loaded or run" in lines[0]


def test_selftest_never_calls_the_runtime_after_a_failed_check(fresh, tmp_path):
    bundle, _, _ = fresh
    _extra_script(bundle, tmp_path)
    calls = []
    problems, rows = st.selftest(bundle, run=lambda *a: calls.append(a) or [])
    assert problems and rows == [] and calls == []


def test_standalone_selftest_refuses_a_tampered_bundle(fresh, tmp_path):
    """The copy inside the bundle (what a device runs) applies the same checks."""
    import sys

    bundle, ran, loaded = fresh
    _tamper_library(bundle, tmp_path)
    proc = subprocess.run([sys.executable, str(bundle / "selftest.py"), str(bundle)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "model.so: sha256 mismatch" in proc.stdout
    assert not loaded.exists()


@pytest.mark.parametrize("change", [
    lambda m: m.update(files=[]),
    lambda m: m.update(runtime="tvm"),
    lambda m: m["golden"].update(tolerance={"y": {"atol": "NaN", "rtol": 0}}),
    lambda m: m["runtime"].pop("arch"),
], ids=["files-list", "runtime-string", "tolerance-nan", "no-arch"])
def test_malformed_manifest_is_unusable_exit_2(fresh, change, capsys):
    bundle, ran, loaded = fresh
    edit_manifest(bundle, change)
    assert main(["verify", str(bundle)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("deploykit: error: ") and "manifest" in err[0]
    assert not ran.exists() and not loaded.exists()
