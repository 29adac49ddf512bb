"""Test helpers for bundles: a TVM-layout bundle built without TVM whose runner and library
leave a marker when executed / loaded, and re-sealing a changed bundle (file hashes and manifest
digest recomputed, as someone who read selftest.py could) so that a test reaches the
golden-output comparison behind the integrity check."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from deploykit.bundle.tvm import host_arch
from deploykit.bundle.package import _finish_manifest
from deploykit.bundle.runners import selftest as st


def reseal(bundle: Path) -> None:
    """Recompute every listed file's sha256 and the manifest digest."""
    m = json.loads((bundle / st.MANIFEST).read_text())
    m["files"] = {rel: st.sha256_file(bundle / rel) for rel in m["files"]}
    m["manifest_sha256"] = st.manifest_digest(m)
    (bundle / st.MANIFEST).write_text(json.dumps(m))


def _build_so(path: Path, marker: Path) -> None:
    src = path.with_suffix(".c")
    src.write_text('#include <stdio.h>\n__attribute__((constructor)) static void evil(void) '
                   f'{{ FILE *f = fopen("{marker}", "w"); if (f) fclose(f); }}\n')
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(path), str(src)], check=True)
    src.unlink()


def make_bundle(root: Path) -> tuple[Path, Path, Path]:
    """(bundle, runner marker, library marker): a complete, correctly hashed TVM-layout bundle
    whose runner prints a passing row and whose model.so creates a marker when loaded."""
    b = root / "bundle"
    ran, loaded = root / "runner-ran", root / "library-loaded"
    for d in ("runner", "lib", "golden"):
        (b / d).mkdir(parents=True)
    runner = b / st.RUNNER
    runner.write_text(f"#!/bin/sh\ntouch '{ran}'\n"
                      "echo 'output y max_abs_err=0 atol=0 rtol=0 mismatched=0/4 ok'\n")
    runner.chmod(0o755)
    _build_so(b / "model.so", loaded)
    shutil.copyfile(b / "model.so", b / "lib" / "libtvm_runtime.so")
    with open(b / "golden/inputs.npz", "wb") as f:
        np.savez(f, x=np.ones((1, 4), np.float32))
    with open(b / "golden/outputs.npz", "wb") as f:
        np.savez(f, y=np.ones((1, 4), np.float32))
    shutil.copyfile(st.__file__, b / "selftest.py")
    manifest = {
        "schema": st.SCHEMA, "outputs": [{"name": "y", "shape": [1, 4], "dtype": "float32"}],
        "runtime": {"backend": "tvm", "model": "model.so", "arch": host_arch(),
                    "payload": ["model.so", st.RUNNER, "lib/libtvm_runtime.so"]},
        "tvm": {"files": {"library": "model.so", "runner": st.RUNNER,
                          "runtime_libs": ["lib/libtvm_runtime.so"]}},
        "golden": {"inputs": "golden/inputs.npz", "outputs": "golden/outputs.npz",
                   "tolerance": {"y": {"atol": 0.0, "rtol": 0.0}}},
    }
    _finish_manifest(b, manifest)
    return b, ran, loaded


def edit_manifest(bundle: Path, change) -> None:
    """Change the manifest and re-seal its digest, as an attacker who read selftest.py would."""
    m = json.loads((bundle / st.MANIFEST).read_text())
    change(m)
    m["manifest_sha256"] = st.manifest_digest(m)
    (bundle / st.MANIFEST).write_text(json.dumps(m))


# ways to tamper with a fresh bundle: each returns the problem verify must report
def _tamper_runner(b: Path, root: Path) -> str:
    with open(b / st.RUNNER, "a") as f:
        f.write("echo pwned\n")
    return f"{st.RUNNER}: sha256 mismatch"


def _tamper_library(b: Path, root: Path) -> str:
    with open(b / "model.so", "ab") as f:
        f.write(b"\0")
    return "model.so: sha256 mismatch"


def _extra_script(b: Path, root: Path) -> str:
    (b / "runner" / "evil.sh").write_text("#!/bin/sh\nrm -rf ~\n")
    return "runner/evil.sh: extra file"


def _unlisted_and_deleted(b: Path, root: Path) -> str:
    (b / "golden/outputs.npz").unlink()
    edit_manifest(b, lambda m: m.update(files={}))
    return "lists no files"


def _model_outside(b: Path, root: Path) -> str:
    outside = root / "elsewhere.so"
    shutil.copyfile(b / "model.so", outside)
    edit_manifest(b, lambda m: m["runtime"].update(model=str(outside)))
    return f"runtime model '{outside}' is not a file listed"


def _golden_escapes(b: Path, root: Path) -> str:
    (root / "x.npz").write_bytes((b / "golden/inputs.npz").read_bytes())
    edit_manifest(b, lambda m: (m["golden"].update(inputs="../../x.npz"),
                                m["files"].update({"../../x.npz": st.sha256_file(root / "x.npz")})))
    return "../../x.npz: path escapes the bundle"


def _symlink_outside(b: Path, root: Path) -> str:
    outside = root / "evil.so"
    shutil.copyfile(b / "model.so", outside)
    (b / "model.so").unlink()
    os.symlink(outside, b / "model.so")
    return "model.so: path escapes the bundle"


def _manifest_edited(b: Path, root: Path) -> str:
    m = json.loads((b / st.MANIFEST).read_text())
    m["golden"]["tolerance"]["y"]["atol"] = 1e9
    (b / st.MANIFEST).write_text(json.dumps(m))
    return "was edited after packaging"


TAMPERING = [_tamper_runner, _tamper_library, _extra_script, _unlisted_and_deleted,
             _model_outside, _golden_escapes, _symlink_outside, _manifest_edited]
