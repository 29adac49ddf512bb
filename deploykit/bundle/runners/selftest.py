"""Bundle self-test: integrity (sha256 of every file, every file listed, manifest digest), then --
only if all of it holds -- run the bundle's model on the golden inputs and compare with the golden
outputs at the recorded tolerance.

This file is copied into every bundle as `selftest.py` and must stay standalone: Python stdlib +
numpy, plus onnxruntime (ORT bundles), openvino (OpenVINO bundles) or the tvm runtime (TVM
bundles) on the device.
`deploykit verify` imports this same module from the installed package, never the bundle's copy.

    python3 selftest.py [BUNDLE_DIR]     exit 0 pass, 1 verification failed, 2 unusable bundle
    python3 selftest.py [BUNDLE_DIR] --time OUT.json [--max-time S] [--threads N]
        ORT bundles: the self-test first (a bundle that fails it is not timed), then the timing
        mode of runners/timing/ (copied into the bundle as dk_timing/), one JSON to OUT.
        (TVM bundles: `sh selftest.sh --time OUT.json`, the C++ runner's own timing mode.)
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

MANIFEST = "manifest.json"
SCHEMA = "deploykit-bundle/1"


class BundleUnusable(Exception):
    """The directory is missing, or is not a readable bundle (exit 2)."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of the manifest without its own digest field."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"))
                          .encode()).hexdigest()


def load_manifest(bundle: Path) -> dict[str, Any]:
    if not bundle.exists():
        raise BundleUnusable(f"bundle directory not found: {bundle}")
    if not bundle.is_dir():
        raise BundleUnusable(f"not a bundle directory: {bundle}")
    path = bundle / MANIFEST
    if not path.is_file():
        raise BundleUnusable(f"not a bundle (no {MANIFEST}): {bundle}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BundleUnusable(f"corrupt {MANIFEST} in {bundle}: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise BundleUnusable(f"{path} is not a {SCHEMA} manifest")
    for key in ("files", "golden", "runtime", "outputs"):
        if key not in manifest:
            raise BundleUnusable(f"corrupt {MANIFEST} in {bundle}: no '{key}'")
    files, golden, runtime = manifest["files"], manifest["golden"], manifest["runtime"]
    shape_ok = (isinstance(files, dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())
                and isinstance(golden, dict) and isinstance(golden.get("tolerance"), dict)
                and isinstance(runtime, dict) and isinstance(runtime.get("backend"), str)
                and (runtime["backend"] != "tvm" or isinstance(runtime.get("arch"), str))
                and all(isinstance(t, dict) and _finite(t.get("atol")) and _finite(t.get("rtol"))
                        for t in golden["tolerance"].values()))
    if not shape_ok:
        raise BundleUnusable(f"corrupt {MANIFEST} in {bundle}: 'files', 'golden' or 'runtime' "
                             "has the wrong type (re-package the bundle)")
    return manifest


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and \
        abs(x) != float("inf") and x >= 0


RUNNER = "runner/dk_runner"  # the TVM bundle's C++ runner (bundle_tvm.RUNNER)


def manifest_paths(manifest: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(role, path) of every file the manifest makes deploykit or the device load or execute."""
    rt, g = manifest["runtime"], manifest["golden"]
    paths = [("runtime model", rt.get("model")), ("golden inputs", g.get("inputs")),
             ("golden outputs", g.get("outputs"))]
    payload = rt.get("payload", [])
    paths += [("payload file", p) for p in (payload if isinstance(payload, list) else [payload])]
    if rt.get("backend") == "tvm":
        paths.append(("runner", RUNNER))
        files = (manifest.get("tvm") or {}).get("files") or {}
        libs = files.get("runtime_libs", [])
        paths += [("runtime library", p) for p in (libs if isinstance(libs, list) else [libs])]
    return paths


def bundle_entries(bundle: Path) -> list[str]:
    """Every file, symlink and other non-directory entry below `bundle` (symlinked folders
    included, never followed), as posix paths relative to it, except the manifest itself."""
    out = []
    for dirpath, dirnames, filenames in os.walk(bundle, followlinks=False):
        here = Path(dirpath)
        for name in filenames + [d for d in dirnames if (here / d).is_symlink()]:
            rel = (here / name).relative_to(bundle).as_posix()
            if rel != MANIFEST:
                out.append(rel)
    return sorted(out)


def check_integrity(bundle: Path, manifest: Mapping[str, Any]) -> list[str]:
    """Problems found, one line each (empty when the bundle is exactly what was packaged):
    the manifest digest; every listed file present inside the bundle (after resolving symlinks)
    with its sha256; every file of the folder listed; every path the manifest loads or executes
    a listed file. Nothing of the bundle is loaded or executed here."""
    problems = []
    if manifest.get("manifest_sha256") != manifest_digest(manifest):
        problems.append(f"{MANIFEST} was edited after packaging (its digest does not match)")
    files = manifest["files"]
    if not files:
        problems.append(f"{MANIFEST} lists no files")
    root = bundle.resolve()
    for rel, digest in sorted(files.items()):
        p = (bundle / rel).resolve()
        if Path(rel).is_absolute() or root not in p.parents:
            problems.append(f"{rel}: path escapes the bundle")
        elif not p.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(p) != digest:
            problems.append(f"{rel}: sha256 mismatch (file changed after packaging)")
    for rel in bundle_entries(bundle):
        if rel not in files:
            problems.append(f"{rel}: extra file, not listed in {MANIFEST}")
    for role, rel in manifest_paths(manifest):
        if not isinstance(rel, str) or rel not in files:
            problems.append(f"{role} {rel!r} is not a file listed in {MANIFEST}")
    return problems


def load_npz(path: Path) -> dict[str, Any]:
    import numpy as np

    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def load_golden(bundle: Path, manifest: Mapping[str, Any]):
    """(inputs in argument order as a dict, outputs as [(name, array)] in return order)."""
    g = manifest["golden"]
    ins = load_npz(bundle / g["inputs"])
    outs = load_npz(bundle / g["outputs"])
    return ins, list(outs.items())


def compare(got: Sequence[Any], golden: Sequence[tuple[str, Any]],
            tolerance: Mapping[str, Mapping[str, float]]) -> list[dict[str, Any]]:
    """Per output: max abs error and mismatched elements, |got - want| <= atol + rtol |want|."""
    import numpy as np

    rows = []
    if len(got) != len(golden):
        return [{"name": "(outputs)", "ok": False,
                 "detail": f"model returned {len(got)} outputs, golden has {len(golden)}"}]
    for (name, want), g in zip(golden, got):
        g = np.asarray(g)
        tol = tolerance.get(name, {"atol": 0.0, "rtol": 0.0})
        if g.shape != want.shape:
            rows.append({"name": name, "ok": False,
                         "detail": f"shape {list(g.shape)} != golden {list(want.shape)}"})
            continue
        a, b = g.astype(np.float64), want.astype(np.float64)
        diff = np.abs(a - b)
        bad = int(np.count_nonzero(~(diff <= tol["atol"] + tol["rtol"] * np.abs(b))))
        max_abs = float(np.max(diff)) if diff.size else 0.0
        rows.append({"name": name, "ok": bad == 0, "max_abs_err": max_abs,
                     "mismatched": bad, "size": int(diff.size), "atol": tol["atol"],
                     "rtol": tol["rtol"],
                     "detail": f"max abs err {max_abs:.3g} (atol {tol['atol']:.3g}, rtol "
                               f"{tol['rtol']:.3g}), {bad}/{diff.size} elements outside"})
    return rows


def run_ort(bundle: Path, manifest: Mapping[str, Any], feeds: Mapping[str, Any]) -> list[Any]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(bundle / manifest["runtime"]["model"]), so,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, dict(feeds))


def run_tvm(bundle: Path, manifest: Mapping[str, Any], feeds: Mapping[str, Any]) -> list[Any]:
    """The Relax VM from the bundle's library, with the tvm Python runtime of this machine."""
    import tvm
    from tvm import relax

    lib = tvm.runtime.load_module(str((bundle / manifest["runtime"]["model"]).resolve()))
    vm = relax.VirtualMachine(lib, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(v) for v in feeds.values()])
    return flatten_tvm(out)


def run_openvino(bundle: Path, manifest: Mapping[str, Any],
                 feeds: Mapping[str, Any]) -> list[Any]:
    """The bundle's OpenVINO IR compiled by the CPU plugin with the target's properties."""
    import openvino as ov

    core = ov.Core()
    props = dict((manifest.get("openvino") or {}).get("properties") or {})
    compiled = core.compile_model(str(bundle / manifest["runtime"]["model"]), "CPU", props)
    res = compiled.create_infer_request().infer({k: v for k, v in feeds.items()})
    return [res[compiled.output(o["name"])] for o in manifest["outputs"]]


def flatten_tvm(out: Any) -> list[Any]:
    if hasattr(out, "numpy"):
        return [out.numpy()]
    return [a for item in out for a in flatten_tvm(item)]


RUNNERS: dict[str, Callable[[Path, Mapping[str, Any], Mapping[str, Any]], list[Any]]] = {
    "ort": run_ort, "tvm": run_tvm, "openvino": run_openvino}


def selftest(bundle: Path, run: Callable | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """(integrity problems, per-output rows); `run` defaults to the bundle runtime's runner."""
    manifest = load_manifest(bundle)
    problems = check_integrity(bundle, manifest)
    if problems:  # integrity first: nothing of a changed bundle is loaded or executed
        return problems, []
    try:
        feeds, golden = load_golden(bundle, manifest)
    except Exception as e:  # numpy raises several types for a damaged archive
        return problems + [f"golden tensors unreadable: {e}"], []
    runner = run or RUNNERS[manifest["runtime"]["backend"]]
    try:
        got = runner(bundle, manifest, feeds)
    except Exception as e:  # the runtime's own error types: a damaged model fails to load
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return problems + [f"runtime failed on {manifest['runtime']['model']}: {first}"], []
    return problems, compare(got, golden, manifest["golden"]["tolerance"])


def report_lines(problems: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [f"integrity: {p}" for p in problems]
    lines += [f"output {r['name']}: {'ok' if r['ok'] else 'MISMATCH'}: {r['detail']}" for r in rows]
    ok = not problems and rows and all(r["ok"] for r in rows)
    lines.append("PASS" if ok else "FAIL")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    timing_args = []
    if "--time" in args:  # everything from --time on belongs to the timing mode
        i = args.index("--time")
        args, timing_args = args[:i], args[i:]
    bundle = Path(args[0] if args else Path(__file__).resolve().parent)
    try:
        problems, rows = selftest(bundle)
    except BundleUnusable as e:
        print(f"selftest: error: {e}", file=sys.stderr)
        return 2
    lines = report_lines(problems, rows)
    print("\n".join(lines))
    sys.stdout.flush()
    if lines[-1] != "PASS":
        return 1
    if timing_args and load_manifest(bundle)["runtime"]["backend"] == "tvm":
        print("selftest: error: a TVM bundle times itself with its C++ runner: "
              "sh selftest.sh --time OUT.json", file=sys.stderr)
        return 2
    if timing_args:
        sys.dont_write_bytecode = True  # a __pycache__ in the bundle would be an extra file
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        try:
            import dk_timing  # the bundle's copy of runners/timing/
        except ImportError:
            print("selftest: error: this bundle has no dk_timing.py (packaged before the timing "
                  "mode): re-package it", file=sys.stderr)
            return 2
        return dk_timing.main([str(bundle)] + timing_args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
