"""`deploykit package`: the last mile to a device as one self-checking folder.

A bundle holds what the device runs (ORT: model.ort + its operator config; TVM: the compiled
library + a runner), golden input/output tensors, a stand-alone self-test, and manifest.json:
io specs, ids and lineage, target, measured latency with its environment, fidelity against the
input (and original) model, sizes and the sha256 of every file. The folder is built beside the
destination and moved into place only when complete.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .._version import __version__
from ..core import ModelRef, TimingPlan
from ..backends.base import Target
from ..errors import InputError, VerificationError
from .runners import selftest as st

GOLDEN_INPUTS = "golden/inputs.npz"
GOLDEN_OUTPUTS = "golden/outputs.npz"


@dataclass(frozen=True)
class PackageOptions:
    measure: bool = True
    plan: TimingPlan = TimingPlan(max_time_s=10.0)
    seed: int = 0
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    inputs_npz: str | None = None
    original: str | None = None  # pre-compression model: fidelity is also recorded against it
    ort_platform: str | None = None  # ORT converter platform (arm | amd64); default: host's
    atol_frac: float | None = None  # override the per-kind scale-relative tolerance
    tvm_runtime: str | None = None  # folder with the device's libtvm_runtime.so / libtvm_ffi.so
    force: bool = False
    # results store to read lineage from / record latency in: a path, URL or StoreLocation
    store: Any = None


def tolerances(golden: list[tuple[str, np.ndarray]], kind: str,
               atol_frac: float | None) -> dict[str, dict[str, float]]:
    from ..fidelity import GOLDEN_ATOL_FRAC, GOLDEN_RTOL

    frac = GOLDEN_ATOL_FRAC[kind] if atol_frac is None else atol_frac
    tol = {}
    for name, a in golden:
        exact = not np.issubdtype(a.dtype, np.floating)  # integer / bool outputs must match
        scale = float(np.max(np.abs(a))) if a.size and not exact else 0.0
        # subnormal values may be flushed to zero on a device (fidelity.py): never a mismatch
        atol = 0.0 if exact else max(frac * scale, float(np.finfo(a.dtype).tiny))
        tol[name] = {"atol": atol, "rtol": 0.0 if exact else GOLDEN_RTOL}
    return tol


def _lineage(model: ModelRef, store_path: Any) -> list[dict[str, Any]]:
    """How the model was made, from the results store (compress records every step)."""
    from ..store import Store
    from ..store_backends import parse_location

    if not store_path or not parse_location(store_path).exists():
        return []

    with Store(store_path) as store:
        chain = store.lineage(model.sha256)
    return [{"sha256": m.sha256, "path": str(m.path), "parent_sha256": m.parent_sha256,
             "transform": m.transform, "config": dict(m.config)} for m in chain]


def _latency(target: Target, model: ModelRef, feeds, plan: TimingPlan):
    """Profile with the target's own profile (local or RPC): (summary for the manifest, report)."""
    art = target.compile(model)
    try:
        rep = target.profile(art, feeds, plan, per_op=False, progress=False)
    finally:
        art.close()
    lo, hi = rep.ci95_ms
    return rep, {"measured": f"{model.path.name} compiled by target {target.name} "
                        f"(the graph the bundle ships), deploykit's profile",
            "median_ms": rep.median_ms, "ci95_ms": [lo, hi], "p90_ms": rep.p90_ms,
            "p99_ms": rep.p99_ms, "cv": rep.cv, "samples": len(rep.samples_ms),
            "stop_reason": rep.stop_reason, "labels": list(rep.labels),
            "contaminated_fraction": rep.contaminated_fraction,
            "session_create_ms": rep.session_create_ms, "env": dict(rep.env)}


def _fidelity_row(ref: list[np.ndarray], got: list[np.ndarray], against: str,
                  measured_with: str) -> dict[str, Any]:
    from ..fidelity import compare

    return {"against": against, "measured_with": measured_with, **compare(ref, got).to_dict()}


def _save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Uncompressed (numpy.savez), so the C++ runner can read it without zlib."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})


def _finish_manifest(stage: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    from ..fsutil import dumps_json, json_ready

    files = sorted(p for p in stage.rglob("*") if p.is_file())
    manifest["files"] = {p.relative_to(stage).as_posix(): st.sha256_file(p) for p in files}
    sizes = {p.relative_to(stage).as_posix(): p.stat().st_size for p in files}
    payload = manifest["runtime"]["payload"]
    manifest["sizes"] = {"files": sizes, "total_bytes": sum(sizes.values()),
                         "payload_bytes": sum(sizes[f] for f in payload)}
    manifest = json_ready(manifest)  # the digest covers exactly what the file holds
    manifest["manifest_sha256"] = st.manifest_digest(manifest)
    (stage / st.MANIFEST).write_text(dumps_json(manifest))
    return manifest


def check_bundle_dest(out: Path, force: bool) -> None:
    """Before any work: the bundle folder can be written (and replaced only with --force)."""
    from ..outputs import check_output_dir

    if out.exists() or out.is_symlink():
        if not force:
            raise InputError(f"{out} already exists (use --force to replace it)")
        if out.is_dir() and any(out.iterdir()) and not (out / st.MANIFEST).exists():
            raise InputError(f"{out} is a non-empty folder that is not a bundle; not replacing it")
        if not out.is_dir():
            raise InputError(f"{out} is a file, not a bundle folder; choose another path")
    check_output_dir(out, "-o")


def _move_into_place(stage: Path, out: Path, force: bool) -> None:
    if out.exists():
        if not force:
            raise InputError(f"{out} already exists (use --force to replace it)")
        if out.is_dir() and any(out.iterdir()) and not (out / st.MANIFEST).exists():
            raise InputError(f"{out} is a non-empty folder that is not a bundle; not replacing it")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(stage, out)
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    else:
        os.replace(stage, out)


def package(model_path: str | Path, target: Target, out: str | Path,
            opts: PackageOptions = PackageOptions()) -> dict[str, Any]:
    """Build the bundle for `target` at `out`; returns its manifest."""
    from ..onnxio import io_specs, load_onnx, make_feeds
    from ..fidelity import fidelity_kind_of, judge, run_ort

    model_path, out = Path(model_path), Path(out)
    if model_path.suffix != ".onnx":
        raise InputError(f"{model_path}: package takes an .onnx file (run `deploykit export` "
                         "first)")
    check_bundle_dest(out, opts.force)
    proto = load_onnx(model_path)
    model = ModelRef.from_path(model_path)
    ins, outs = io_specs(proto)
    if opts.original:
        o_ins, o_outs = io_specs(load_onnx(opts.original))

        def key(specs):  # symbolic dims may differ in name, fixed ones must agree
            return [(s.name, s.dtype, tuple(d if isinstance(d, int) else "?" for d in s.shape))
                    for s in specs]

        if key(o_ins + o_outs) != key(ins + outs):
            def sig(specs):
                return ", ".join(f"{s.name}{list(s.shape)}:{s.dtype}" for s in specs)

            raise InputError(f"--original {opts.original} has another signature (inputs "
                             f"{sig(o_ins)}; outputs {sig(o_outs)}) than {model_path} (inputs "
                             f"{sig(ins)}; outputs {sig(outs)}); give the uncompressed version "
                             "of this model")
    backend = target.config.get("backend")
    if backend not in ("ort", "tvm", "openvino"):
        raise InputError(f"package supports ORT, TVM and OpenVINO targets, not backend "
                         f"'{backend}'")
    shapes = dict(opts.shapes)
    if backend == "tvm":
        shapes = _tvm_static_shapes(ins, shapes)
    feeds = make_feeds(ins, opts.seed, shapes, opts.inputs_npz)
    kind = fidelity_kind_of(proto)
    reference = run_ort(model_path, feeds)  # the input model on ORT: the runtime-free reference
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    stage.chmod(0o755)
    try:
        manifest: dict[str, Any] = {
            "schema": st.SCHEMA,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "deploykit_version": __version__,
            "target": {"name": target.name, "backend": backend, "config": target.config},
            "model": {"source": str(model_path), "sha256": model.sha256, "id": model.id,
                      "lineage": _lineage(model, opts.store)},
            "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in ins],
            "outputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in outs],
        }
        manifest["recipe"] = [{"transform": m["transform"], "config": m["config"]}
                              for m in reversed(manifest["model"]["lineage"]) if m["transform"]]
        if backend == "ort":
            from . import ort as bundle_ort

            section = bundle_ort.build(model_path, target, stage,
                                       opts.ort_platform or target.config.get("ort_platform")
                                       or bundle_ort.host_platform())
            manifest["ort"] = section
            manifest["runtime"] = {"backend": "ort", "model": section["files"]["runtime_model"],
                                   "payload": [section["files"]["runtime_model"]]}
            got = st.run_ort(stage, manifest, feeds)
            golden_from = "the bundle's model.ort on onnxruntime (this machine)"
        elif backend == "openvino":
            from . import openvino as bundle_ov

            section = bundle_ov.build(model_path, target, stage)
            manifest["openvino"] = section
            files = section["files"]
            manifest["runtime"] = {"backend": "openvino", "model": files["xml"],
                                   "payload": [files["xml"], files["weights"]]}
            got = st.run_openvino(stage, manifest, feeds)
            golden_from = "the bundle's model.xml on OpenVINO's CPU plugin (this machine)"
        else:
            from . import tvm as bundle_tvm

            section = bundle_tvm.build(model, target, stage, runtime_hint=opts.tvm_runtime)
            manifest["tvm"] = section
            files = section["files"]
            manifest["runtime"] = {"backend": "tvm", "model": files["library"],
                                   "arch": section["arch"],
                                   "payload": [files["library"], files["runner"],
                                               *files["runtime_libs"]]}
            got = None  # the library may be for another machine: checked by its runner below
            golden_from = "the input model on onnxruntime (this machine)"

        golden = list(zip([s.name for s in outs], got if got is not None else reference))
        _save_npz(stage / GOLDEN_INPUTS, feeds)
        _save_npz(stage / GOLDEN_OUTPUTS, dict(golden))
        tol = tolerances(golden, kind, opts.atol_frac)
        manifest["golden"] = {"inputs": GOLDEN_INPUTS, "outputs": GOLDEN_OUTPUTS,
                              "source": golden_from, "fidelity_kind": kind, "tolerance": tol,
                              "shapes": {k: list(v.shape) for k, v in feeds.items()}}
        shutil.copyfile(st.__file__, stage / "selftest.py")

        if backend == "tvm":
            from . import tvm as bundle_tvm

            manifest["selftest"] = bundle_tvm.write_selftest(stage, manifest)
            check = bundle_tvm.check_here(stage, manifest)
            if check is not None and not check["ok"]:
                raise VerificationError(f"the TVM build does not reproduce the input model's "
                                        f"outputs: {check['detail']}")
            fid = [{"against": "input model (onnxruntime)", "measured_with": None,
                    "note": f"not run here: {section['arch']} library and no qemu-user; check it "
                            "with deploykit verify --device KEY --tracker HOST:PORT"}
                   if check is None else
                   {"against": "input model (onnxruntime)", "measured_with": check["how"],
                    "max_abs": check["max_abs"], "max_rel": check["max_rel"]}]
        else:
            from .runners import TIMING_DIR, TIMING_PACKAGE

            (stage / TIMING_DIR).mkdir()
            for src in sorted(TIMING_PACKAGE.glob("*.py")):  # the package whole, no bytecode
                shutil.copyfile(src, stage / TIMING_DIR / src.name)
            ov = backend == "openvino"
            manifest["selftest"] = {"command": "python3 selftest.py",
                                    "timing": "python3 selftest.py . --time OUT.json",
                                    "needs": f"python3, numpy, {'openvino' if ov else 'onnxruntime'}"}
            what = "model.xml on OpenVINO" if ov else "model.ort on onnxruntime"
            fid_row = _fidelity_row(reference, got, "input model (onnxruntime)", what)
            reason = judge(_as_fidelity(fid_row), kind)
            if reason:
                raise VerificationError(f"{what.split()[0]} does not reproduce the input model: "
                                        f"{reason}")
            fid = [fid_row]
        if opts.original:
            orig = run_ort(Path(opts.original), feeds)
            # TVM: the input model on ORT stands in for the library (checked against it above)
            fid.append(_fidelity_row(orig, got if got is not None else reference,
                                     f"original model {opts.original}",
                                     fid[0]["measured_with"] if got is not None else
                                     "input model on onnxruntime"))
        manifest["fidelity"] = fid

        # the id Target.compile gives this model on this target (core.Artifact)
        manifest["artifact_id"] = target.artifact_id(model)
        manifest["latency"], rep = None, None
        if opts.measure:
            rep, manifest["latency"] = _latency(target, model, feeds, opts.plan)
        else:
            manifest["latency_skipped"] = "--no-measure"
        manifest = _finish_manifest(stage, manifest)
        if rep is not None and opts.store:  # recorded only for a bundle that is complete
            from ..store import Store

            with Store(opts.store) as store:
                store.record_report(rep, label="package", model=model)
        _move_into_place(stage, out, opts.force)
    finally:
        if stage.exists():
            shutil.rmtree(stage)
    return manifest


def _tvm_static_shapes(ins, shapes: dict) -> dict:
    """TVM builds static code with symbolic dims fixed to 1 (backends/tvm/build.py): the golden
    tensors must have exactly those shapes."""
    from ..onnxio import resolve_shape

    static = {s.name: resolve_shape(s) for s in ins}
    for name, shape in shapes.items():
        if name in static and tuple(shape) != static[name]:
            raise InputError(f"TVM targets build static shapes with symbolic dims set to 1: "
                             f"input '{name}' is compiled as {list(static[name])}, not "
                             f"{list(shape)}")
    return static


def _as_fidelity(row: Mapping[str, Any]):
    from ..fidelity import Fidelity

    return Fidelity(**{k: row[k] for k in Fidelity.__dataclass_fields__})
