"""Store keys and reuse: what makes a measurement or a built candidate the same as one made
before. A whole measurement is keyed by (model, target fingerprint, timing plan, inputs); a build
by (source, inputs, calibration, the code that builds and verifies it), so a search killed at any
point continues where it stopped, and a build made by other code is rebuilt."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..backends.base import Target
from ..core import TimingPlan, stable_hash


def target_fp(target: Target) -> dict[str, Any]:
    """The comparable part of the machine's fingerprint and the target's configuration."""
    from ..measure.env import comparable_part, fingerprint

    return {**comparable_part(fingerprint(target.name, target.config, target.threads)),
            "config": {k: v for k, v in target.config.items() if k != "description"}}


def feeds_digest(feeds: Mapping[str, np.ndarray]) -> str:
    """A short digest of a batch of inputs (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for k in sorted(feeds):
        a = np.ascontiguousarray(feeds[k])
        h.update(k.encode())
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def reference_runtime(target: Target) -> bool:
    """Does `target` compute like the verification runtime (ORT's CPU provider)?"""
    providers = list(target.config.get("options", {}).get("providers", ["CPUExecutionProvider"]))
    return target.config.get("backend") == "ort" and providers[:1] == ["CPUExecutionProvider"]


def code_id() -> str:
    """The deploykit version and the library versions a built candidate depends on: a build
    made by other code is rebuilt, not reused from OUTDIR/.work."""
    from importlib import metadata

    from .._version import __version__

    versions = []
    for dist in ("onnx", "onnxruntime", "onnxscript", "onnx-ir", "onnxsim", "nncf", "numpy",
                 "torch"):
        try:
            versions.append(f"{dist}={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{dist}=-")
    from .. import compress, fidelity, rewrite

    # everything that builds or verifies a candidate: the rewrite package (steps, recipe runner,
    # calibration), the fidelity checks, and recovery's torch-side pruning and distillation
    here = Path(__file__).parent
    sources = sorted([Path(fidelity.__file__), *Path(rewrite.__file__).parent.glob("*.py"),
                      *Path(compress.__file__).parent.glob("*.py"), here / "recover.py"])
    return stable_hash(__version__, versions,
                       [(p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in sources])


def measurement_key(kind: str, what: str, target: Target, plan: TimingPlan, feeds_id: str) -> str:
    """Store key of one measurement: what was timed, where, how, on which inputs."""
    return f"search:{kind}:" + stable_hash(what, target_fp(target), asdict(plan), feeds_id, n=32)


def build_key(source_sha256: str, feeds: Mapping[str, np.ndarray], synthetic: bool,
              calibration) -> str:
    """A built candidate is reused only for the same source, inputs, calibration and code."""
    return stable_hash(source_sha256, feeds_digest(feeds), synthetic,
                       [feeds_digest(b) for b in calibration], code_id())
