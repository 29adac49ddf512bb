"""ONNX -> Relax -> executable for a TVM target, applying a stored tuning database when one exists,
and the output check against ORT that every TVM build must pass before it is timed."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ...core import ModelRef, TensorSpec, stable_hash
from ...errors import TargetError, VerificationError, first_line
from ...fidelity import TOLERANCES
from ...onnxio import io_specs, load_onnx, make_feeds, quiet, resolve_shape

UNTUNED_LABEL = "untuned: run deploykit tune"
RTOL = TOLERANCES["fp32"].max_rel  # fp32: max |tvm - ort| relative to max |ort|
EMULATED_LABEL = "emulated"


@dataclass(frozen=True)
class Built:
    executable: Any  # tvm.relax.VMExecutable
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    build_ms: float
    labels: tuple[str, ...]
    tuning_db: str | None
    tuning_records: int
    # True when a compile took this build from build_memo (built earlier in this process):
    # build_ms is then the original build's time, not this compile's
    reused: bool = False


def import_model(model: ModelRef, target_name: str):
    """(Relax IRModule, static input specs, output specs). Symbolic dims are fixed to 1 (or the
    model's own value): TVM builds static-shape code."""
    from tvm.relax.frontend.onnx import from_onnx
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    onnx_model = load_onnx(model.path)
    inputs, outputs = io_specs(onnx_model)
    static = tuple(TensorSpec(s.name, resolve_shape(s), s.dtype) for s in inputs)
    known = _get_convert_map()
    bad = [n for n in onnx_model.graph.node
           if n.op_type not in known and n.op_type not in ("If", "Constant")]
    if bad:
        n = bad[0]
        raise TargetError(f"{target_name}: TVM's ONNX frontend cannot import op {n.op_type} "
                          f"(node '{n.name or n.output[0]}'"
                          + (f", and {len(bad) - 1} more node(s)" if len(bad) > 1 else "") + ")")
    shapes = {s.name: list(s.shape) for s in static}
    dtypes = {s.name: s.dtype for s in static}
    try:
        mod = from_onnx(onnx_model, shape_dict=shapes, dtype_dict=dtypes)
    except Exception as e:  # the frontend raises many types; the message names the op
        # shape arithmetic the frontend cannot follow (e.g. a Reshape fed by Shape/Gather/Concat
        # on a fixed batch > 1): fold it with onnxsim at the static shapes, and import again
        folded = _fold_shapes(onnx_model, shapes)
        try:
            if folded is None:
                raise e
            mod = from_onnx(folded, shape_dict=shapes, dtype_dict=dtypes)
        except Exception:  # noqa: BLE001 - report the original model's error
            raise TargetError(f"{target_name}: TVM could not import {model.path.name}: "
                              f"{first_line(e)}") from None
    return mod, static, tuple(outputs)


def _fold_shapes(onnx_model, shapes: Mapping[str, list]):
    """onnxsim's simplification at fixed input shapes (shape subgraphs become constants), or
    None when it fails."""
    import onnxsim

    try:
        with quiet():
            folded, ok = onnxsim.simplify(onnx_model, check_n=0, overwrite_input_shapes=shapes)
        return folded if ok else None
    except Exception:  # noqa: BLE001 - onnxsim raises many types; the caller reports the import
        return None


def prepare(mod, tdict: Mapping[str, Any]):
    """Legalize and fuse (the same preparation that MetaSchedule extracts its tasks from, so the
    tuning database keys match at build time)."""
    import tvm
    from tvm import relax
    from tvm.relax import transform as T

    with tvm.target.Target(dict(tdict)):
        return tvm.transform.Sequential([T.DecomposeOpsForInference(), T.CanonicalizeBindings(),
                                         relax.get_pipeline("zero")])(mod)


def tuning_dir(model_sha256: str, tdict: Mapping[str, Any], override: str | None = None) -> Path:
    """Where the MetaSchedule database of (model, target) lives: the user cache dir by default."""
    if override:
        return Path(override)
    from platformdirs import user_cache_dir

    key = stable_hash(dict(tdict), n=12)
    return Path(user_cache_dir("deploykit")) / "tvm-tuning" / f"{model_sha256[:16]}-{key}"


def record_count(db_dir: Path) -> int:
    """Measured candidates in a MetaSchedule JSON database (failed builds/runs, stored with a
    run time of 1e10 s or none, do not count: they tune nothing)."""
    import json

    f = Path(db_dir) / "database_tuning_record.json"
    if not f.exists():
        return 0
    n = 0
    with open(f) as fh:
        for line in fh:
            if line.strip():
                run_secs = json.loads(line)[1][1] or []
                n += bool(run_secs) and max(float(x) for x in run_secs) < 1e9
    return n


def build(model: ModelRef, target) -> Built:
    """Import, prepare, apply the tuning database of (model, target) if present, compile."""
    import tvm
    from tvm.relax import transform as T

    tdict = target.tvm_target
    t0 = time.perf_counter()
    mod, inputs, outputs = import_model(model, target.name)
    try:
        mod = prepare(mod, tdict)
    except Exception as e:  # legalization failures name the op in the message
        raise TargetError(f"{target.name}: TVM could not lower {model.path.name}: "
                          f"{first_line(e)}") from None
    db = tuning_dir(model.sha256, tdict, target.config.get("tuning_db"))
    n = record_count(db)
    tvm_target = tvm.target.Target(dict(tdict))
    try:
        with tvm_target:
            if n:
                mod = T.MetaScheduleApplyDatabase(str(db))(mod)
            if tdict["kind"] == "cuda":
                mod = _gpu_default_schedule(mod)
        ex = tvm.compile(mod, tvm_target)
    except Exception as e:
        raise TargetError(f"{target.name}: TVM build of {model.path.name} failed: "
                          f"{first_line(e)}") from None
    build_ms = (time.perf_counter() - t0) * 1e3

    labels = (f"tuned: {n} MetaSchedule records",) if n else (UNTUNED_LABEL,)
    return Built(ex, inputs, outputs, build_ms, labels, str(db) if n else None, n)


def _gpu_default_schedule(mod):
    """GPU kernels need a thread binding; DLight's defaults give every untuned kernel one."""
    from tvm.s_tir import dlight as dl

    return dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                   dl.gpu.GeneralReduction(), dl.gpu.Fallback())(mod)


def reference_outputs(model: ModelRef, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """ORT on this machine's CPU: the reference every TVM build is checked against."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(model.path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, dict(feeds))


def check_outputs(artifact, run: Callable[[Mapping[str, np.ndarray]], list[np.ndarray]],
                  where: str = "") -> dict:
    """Run seeded inputs through `run` and ORT; raise VerificationError on any mismatch.
    fp32 tolerance: max |diff| <= 1e-4 * max |ref| (floats); integers and bools exactly."""

    feeds = make_feeds(list(artifact.inputs), seed=0)
    ref = reference_outputs(artifact.model, feeds)
    got = run(feeds)
    label = f"{artifact.target.name}{where}"
    if len(got) != len(ref):
        raise VerificationError(f"{label}: TVM returned {len(got)} outputs, ORT {len(ref)}")
    worst = 0.0
    for spec, g, r in zip(artifact.outputs, got, ref):
        r = np.asarray(r)
        if g.shape != r.shape:
            raise VerificationError(f"{label}: output '{spec.name}' has shape {list(g.shape)}, "
                                    f"ORT gives {list(r.shape)}")
        if r.dtype.kind in "fc":
            scale = max(float(np.max(np.abs(r))) if r.size else 0.0, 1e-12)
            err = float(np.max(np.abs(g.astype(np.float64) - r))) / scale if r.size else 0.0
            if not np.isfinite(err) or err > RTOL:
                raise VerificationError(
                    f"{label}: output '{spec.name}' differs from ORT: max |diff| / max |ref| = "
                    f"{err:.3g} > {RTOL:g}")
            worst = max(worst, err)
        elif not np.array_equal(g, r):
            raise VerificationError(f"{label}: output '{spec.name}' differs from ORT")
    artifact.check = {"reference": "onnxruntime CPU", "max_rel_err": worst,
                      "tolerance": RTOL}
    return artifact.check


def _to_numpy(out) -> list[np.ndarray]:
    if hasattr(out, "numpy"):
        return [out.numpy()]
    res: list[np.ndarray] = []
    for o in out:
        res.extend(_to_numpy(o))
    return res

