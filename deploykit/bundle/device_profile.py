"""`deploykit profile MODEL --target T --device ssh://...|adb://...`: package the model as an ORT,
OpenVINO or TVM bundle (in a temporary folder), push it, verify its golden outputs on the device,
time it there with the bundle's own timing mode (ORT, OpenVINO: dk_timing/; TVM: the C++
runner's --time), and read the samples back as a LatencyReport.

A bundle that fails its self-test on the device is a VerificationError: it is never timed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Mapping

from ..backends.base import Target
from ..core import LatencyReport, TimingPlan
from ..errors import InputError, VerificationError
from .device_run import DeviceRun, device_labels, first_problem, passed, run_on_device
from .package import PackageOptions, package
from .transport import Transport


def profile_on_device(model: str | Path, target: Target, transport: Transport, plan: TimingPlan,
                      *, seed: int = 0, shapes: Mapping[str, tuple[int, ...]] | None = None,
                      inputs_npz: str | None = None) -> tuple[LatencyReport, DeviceRun]:
    if target.config.get("backend") not in ("ort", "tvm", "openvino"):
        raise InputError(f"--device {transport.where}: ssh:// and adb:// devices run ORT, "
                         f"OpenVINO and TVM targets; '{target.name}' is "
                         f"{target.config.get('backend')}")
    labels = device_labels(target.config)
    with tempfile.TemporaryDirectory(prefix="deploykit-device-") as tmp:
        bundle = Path(tmp) / "bundle"
        package(model, target, bundle,
                PackageOptions(measure=False, seed=seed, shapes=tuple((shapes or {}).items()),
                               inputs_npz=inputs_npz))
        run = run_on_device(transport, bundle, timing=True, max_time_s=plan.max_time_s,
                            threads=target.threads, rel_ci=plan.target_rel_ci, labels=labels)
    if not passed(run):
        raise VerificationError(f"{transport.where}: the bundle failed its self-test on the "
                                f"device, so it was not timed: {first_problem(run)}")
    assert run.report is not None
    return run.report, run


def check_on_device(old_model: str | Path, new_model: str | Path, target: Target,
                    transport: Transport, feeds_cfg: Mapping, max_time_s: float,
                    warmup_max_s: float, *, min_rounds: int, round_s: float,
                    sub_s: float) -> tuple[LatencyReport, LatencyReport, DeviceRun]:
    """`deploykit check NEW --against OLD --device ...`: both packaged, pushed and self-tested on
    the device, then timed there in the gate's interleaved rounds of fresh sessions
    (`min_rounds` rounds of `round_s` seconds at least, alternating every `sub_s`)."""
    backend = target.config.get("backend")
    if backend not in ("ort", "openvino", "tvm"):
        raise InputError(f"--device {transport.where}: interleaved rounds on an ssh:// or adb:// "
                         f"device run ORT, OpenVINO and TVM targets; '{target.name}' is "
                         f"{backend}")
    labels = device_labels(target.config)
    shapes = {k: tuple(v) for k, v in (feeds_cfg.get("shapes") or {}).items()}
    opts = PackageOptions(measure=False, seed=int(feeds_cfg.get("seed", 0)),
                          shapes=tuple(shapes.items()), inputs_npz=feeds_cfg.get("npz"))
    with tempfile.TemporaryDirectory(prefix="deploykit-device-") as tmp:
        old_b, new_b = Path(tmp) / "old", Path(tmp) / "new"
        package(old_model, target, old_b, opts)
        package(new_model, target, new_b, opts)
        old = run_on_device(transport, old_b)
        if not passed(old):
            raise VerificationError(f"{transport.where}: the old model's bundle failed its "
                                    f"self-test on the device: {first_problem(old)}")
        if backend == "tvm":
            return _tvm_rounds(transport, old_b, new_b, target, labels, max_time_s,
                               min_rounds=min_rounds, round_s=round_s)
        run = run_on_device(transport, new_b, timing=True, max_time_s=max_time_s,
                            threads=target.threads, labels=labels, against=old,
                            rounds_args=f"--min-rounds {min_rounds} --round-time {round_s:g} "
                                        f"--sub-block {sub_s:g} --warmup-max {warmup_max_s:g}",
                            min_rounds=min_rounds)
    if not passed(run):
        raise VerificationError(f"{transport.where}: the new model's bundle failed its "
                                f"self-test on the device, so nothing was timed: "
                                f"{first_problem(run)}")
    old_rep, new_rep = run.report
    return old_rep, new_rep, run


def _tvm_rounds(transport: Transport, old_b: Path, new_b: Path, target: Target,
                labels: tuple[str, ...], max_time_s: float, *, min_rounds: int,
                round_s: float) -> tuple[LatencyReport, LatencyReport, DeviceRun]:
    """The gate's interleaved rounds of fresh sessions for TVM bundles, whose C++ runner times
    one model per process: each round runs both runners in turn (order alternating), each a
    fresh process with its own self-test, warm-up and `round_s` of timing; round k of each side
    becomes block k of its report, so the gate pairs them as it pairs local rounds."""
    import time

    new = run_on_device(transport, new_b)
    if not passed(new):
        raise VerificationError(f"{transport.where}: the new model's bundle failed its self-test "
                                f"on the device, so nothing was timed: {first_problem(new)}")
    sides: dict[str, list[LatencyReport]] = {"old": [], "new": []}
    runs: list[DeviceRun] = []
    t0 = time.perf_counter()
    k = 0
    while k < min_rounds or time.perf_counter() - t0 < max_time_s:
        order = (("old", old_b), ("new", new_b)) if k % 2 == 0 else (("new", new_b), ("old", old_b))
        for side, bundle in order:
            run = run_on_device(transport, bundle, timing=True, max_time_s=round_s,
                                threads=target.threads, labels=labels)
            if not passed(run) or run.report is None:
                raise VerificationError(f"{transport.where}: the {side} model's bundle failed "
                                        f"its self-test in round {k + 1}: {first_problem(run)}")
            sides[side].append(run.report)
            runs.append(run)
        k += 1
    return _as_rounds(sides["old"]), _as_rounds(sides["new"]), runs[-1]


def _as_rounds(reports: list[LatencyReport]) -> LatencyReport:
    """Several fresh-process timings of one bundle as one report, one block per process: the
    samples concatenated, each block's foreign load the sample-weighted mean of its run's, the
    init / first inference of the first run, one cold start (init + first) per run."""
    from dataclasses import replace

    from ..core import Block

    samples: list[float] = []
    blocks = []
    threshold = TimingPlan().contamination_threshold
    for r in reports:
        n = len(r.samples_ms)
        load = sum(b.foreign_cpu * b.n for b in r.blocks) / max(1, sum(b.n for b in r.blocks))
        blocks.append(Block(len(samples), n, load, load > threshold))
        samples.extend(r.samples_ms)
    first = reports[0]
    return replace(first, samples_ms=tuple(samples), blocks=tuple(blocks),
                   stop_reason="time-cap",
                   cold_start_samples_ms=tuple(r.session_create_ms + r.first_inference_ms
                                               for r in reports))
