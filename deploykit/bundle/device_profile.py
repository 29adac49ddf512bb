"""`deploykit profile MODEL --target T --device ssh://...|adb://...`: package the model as an ORT
bundle (in a temporary folder), push it, verify its golden outputs on the device, time it there
with the bundle's own timing mode, and read the samples back as a LatencyReport.

A bundle that fails its self-test on the device is a VerificationError: it is never timed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Mapping

from ..backends.base import Target
from ..core import LatencyReport, TimingPlan
from ..errors import InputError, VerificationError
from .device_run import DeviceRun, run_on_device
from .package import PackageOptions, package
from .transport import Transport


def profile_on_device(model: str | Path, target: Target, transport: Transport, plan: TimingPlan,
                      *, seed: int = 0, shapes: Mapping[str, tuple[int, ...]] | None = None,
                      inputs_npz: str | None = None) -> tuple[LatencyReport, DeviceRun]:
    if target.config.get("backend") != "ort":
        raise InputError(f"--device {transport.where}: ssh:// and adb:// devices run ORT "
                         f"targets; '{target.name}' is {target.config.get('backend')}")
    labels = ("emulated",) if target.config.get("emulated") else ()
    with tempfile.TemporaryDirectory(prefix="deploykit-device-") as tmp:
        bundle = Path(tmp) / "bundle"
        package(model, target, bundle,
                PackageOptions(measure=False, seed=seed, shapes=tuple((shapes or {}).items()),
                               inputs_npz=inputs_npz))
        run = run_on_device(transport, bundle, timing=True, max_time_s=plan.max_time_s,
                            threads=target.threads, rel_ci=plan.target_rel_ci, labels=labels)
    if run.problems or not run.rows or not all(r["ok"] for r in run.rows):
        bad = list(run.problems) + [f"output {r['name']}: {r['detail']}" for r in run.rows
                                    if not r["ok"]]
        raise VerificationError(f"{transport.where}: the bundle failed its self-test on the "
                                f"device, so it was not timed: {bad[0] if bad else 'no outputs'}")
    assert run.report is not None
    return run.report, run
