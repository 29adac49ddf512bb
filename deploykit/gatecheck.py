"""The whole `deploykit check`: the latency gate, the memory and cold-start gates, here or on a
device, as one function that `deploykit check` (commands/check.py: arguments, output files,
store, table) and `deploykit.check(...)` (api.py) both call.

It sits above gate/ and bundle/ (a check on a device packages both models as bundles) and below
the API. Output locations are the caller's to validate before calling: this measures, decides
and returns the verdict (`CheckOutcome.result`, the JSON of `check --json` without the reports)
with both reports; it writes nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .core import LatencyReport


@dataclass(frozen=True)
class CheckSpec:
    """What to check and how; the CLI's options, one field each."""

    model: str
    baseline: str
    against: str | None = None
    max_slowdown: str = "5%"
    max_memory_increase: str = "10%"
    max_cold_start_increase: str = "20%"
    max_time: float = 20.0
    warmup_max: float = 0.5
    threads: int | None = None
    memory_runs: int = 3
    wait_quiet: float = 0.0
    device: str | None = None  # ssh://, adb://, or with `tracker` an RPC device key
    tracker: str | None = None  # RPC tracker HOST:PORT: old and new on one board of `device`
    parallel: int | None = None  # accepted for symmetry: the rounds need one board
    device_timeout: float | None = None  # --device-timeout: a board silent this long is hung
    allow_env_change: bool = False
    top: int = 8
    progress: bool = False


@dataclass(frozen=True)
class CheckOutcome:
    """The verdicts (`result`: strict-JSON-ready dict) and what they rest on."""

    result: dict[str, Any]
    old_report: LatencyReport
    new_report: LatencyReport
    baseline: Any  # gate.baseline.Baseline
    model: Any  # the new model (gate.rounds.load_model)
    inputs: Any
    outputs: Any

    @property
    def failed(self) -> bool:
        return bool(self.result["failed"])

    def to_json(self) -> str:
        from .fsutil import dumps_json

        return dumps_json(dict(self.result, old_report=self.old_report.to_dict(),
                               new_report=self.new_report.to_dict()))

    def __repr__(self) -> str:
        r = self.result
        return (f"CheckOutcome({r['status']}: {r['summary']}; memory {r['memory']['status']}, "
                f"cold start {r['cold_start']['status']}; {r['mode']}, {r['state']})")


def run_check(spec: CheckSpec) -> CheckOutcome:
    """Measure and decide; raises InputError/BaselineError for anything unusable (exit 2)."""
    from .bundle.transport import is_url
    from .errors import InputError
    from .gate.baseline import BaselineError, load_baseline
    from .gate.decision import (decide, env_differences, interleaved_estimate, parse_threshold,
                                per_op_diff, refuse_contaminated, stored_estimate)
    from .gate.resources import cold_start_verdict
    from .gate.rounds import gate_target, load_model, measure_rounds
    from .validity import summary_dict

    t_start = time.perf_counter()
    _validate(spec)
    threshold = parse_threshold(spec.max_slowdown)
    mem_threshold = parse_threshold(spec.max_memory_increase)
    cold_threshold = parse_threshold(spec.max_cold_start_increase)
    base = load_baseline(spec.baseline)
    model, inputs, outputs = load_model(spec.model)
    why = base.signature_mismatch(inputs, outputs)
    if why:
        raise BaselineError(f"baseline {spec.baseline} is for a different model ({why}); pass "
                            f"this model's baseline, or record one with `deploykit baseline "
                            f"{spec.model} --target {base.report.target} -o {spec.baseline}`")
    if spec.against:
        old_model, old_in, old_out = load_model(spec.against)
        if (old_in, old_out) != (inputs, outputs):
            raise InputError(f"--against {spec.against} has other inputs/outputs than "
                             f"{spec.model}")
    else:
        old_path = base.model_file()
        old_model = None
        if old_path is not None and base.report.model_sha256 != model.sha256:
            old_model = load_model(str(old_path))[0]
    threads = spec.threads or base.report.env.get("threads") or None
    pool = _pool(spec)
    target = gate_target(base.report.target, threads,
                         **({} if pool is None else {"device": pool.key, "tracker": pool.tracker}))
    if pool is not None:
        from .backends.tvm.pool import check_target

        check_target(target)
    env_diffs = env_differences(base.report.env, _fingerprint(target))
    if old_model is None and env_diffs and not spec.allow_env_change:
        raise InputError("environment differs from the baseline's (" + "; ".join(env_diffs) +
                         "): stored samples are not comparable; pass --against OLD_MODEL for an "
                         "interleaved check, re-record the baseline on this machine, or pass "
                         "--allow-env-change")
    wait = spec.wait_quiet
    if is_url(spec.device):
        from .bundle.device_profile import check_on_device
        from .bundle.transport import parse
        from .gate.rounds import MIN_ROUNDS, ROUND_S, SUB_S

        transport = parse(spec.device)
        if old_model is None:
            raise InputError("--device measures old and new interleaved on the device: pass "
                             "--against OLD_MODEL")
        if wait:
            raise InputError("--wait-quiet waits for this machine to quieten, not the device: "
                             "drop it with --device")
        round_s = min(ROUND_S, max(2 * SUB_S, spec.max_time / (2 * MIN_ROUNDS)))
        old_rep, new_rep, _ = check_on_device(old_model.path, model.path, target, transport,
                                              base.feeds, spec.max_time, spec.warmup_max,
                                              min_rounds=MIN_ROUNDS, round_s=round_s,
                                              sub_s=SUB_S)
        estimate = interleaved_estimate(old_rep, new_rep)
    elif pool is not None:  # every round's old and new on the same board (pool.py)
        from .backends.tvm.pool import DevicePool

        if old_model is None:
            raise InputError("--tracker measures old and new interleaved on one board: pass "
                             "--against OLD_MODEL (or keep the baseline's model file)")
        from .backends.tvm.pool_compare import compare_on_boards

        # the rounds give no sign of life between sessions: the whole check is the budget.
        # With --parallel N every board runs its own rounds of both models, for 1/N of the
        # time (at least MIN_ROUNDS each), and the rounds are pooled (measure/pooled.py)
        with DevicePool(pool, budget_s=spec.max_time + 2 * spec.warmup_max) as boards:
            share = spec.max_time / max(1, len(boards.devices))
            old_rep, new_rep = compare_on_boards(boards, lambda i: measure_rounds(
                target, [old_model, model], base.feeds, share, spec.warmup_max,
                progress=spec.progress and len(boards.devices) == 1, wait_quiet=wait))
        estimate = interleaved_estimate(old_rep, new_rep)
    elif old_model is not None:
        old_rep, new_rep = measure_rounds(target, [old_model, model], base.feeds, spec.max_time,
                                          spec.warmup_max, progress=spec.progress,
                                          wait_quiet=wait)
        estimate = interleaved_estimate(old_rep, new_rep)
    else:
        old_rep = base.report
        # before timing anything (stored_estimate checks both sides again)
        refuse_contaminated("baseline", old_rep, f"`deploykit baseline {spec.model} -o "
                                                 f"{spec.baseline} --wait-quiet 120`")
        (new_rep,) = measure_rounds(target, [model], base.feeds, spec.max_time,
                                    spec.warmup_max, progress=spec.progress, wait_quiet=wait)
        estimate = stored_estimate(old_rep, new_rep)
    verdict = decide(estimate, threshold)
    old_rep, new_rep, mem_v = _memory_gate(spec, base, threads, old_model, model, old_rep,
                                           new_rep, mem_threshold)
    cold_v = cold_start_verdict(old_rep, new_rep, cold_threshold, paired=old_model is not None)
    failed = verdict.failed or mem_v.failed or cold_v.failed
    ops = per_op_diff(old_rep.per_op, new_rep.per_op, top=spec.top)
    vo, vn = old_rep.validity, new_rep.validity
    result = {
        **summary_dict({"old": vo, "new": vn}),
        "contaminated_share": {"old": vo.contaminated_share, "new": vn.contaminated_share},
        "status": verdict.status, "failed": failed, "summary": verdict.summary,
        "latency_failed": verdict.failed, "memory": mem_v.to_dict(),
        "cold_start": cold_v.to_dict(),
        "threshold": threshold, "mode": estimate.mode, "ratio": estimate.ratio,
        "ratio_ci": [estimate.lo, estimate.hi], "conf": estimate.conf,
        "n_units": estimate.n_units, "p_units": estimate.p_units, "p_raw": estimate.p_raw,
        "old_median_ms": estimate.old_median_ms, "new_median_ms": estimate.new_median_ms,
        "note": estimate.note, "env_differences": env_diffs,
        **_boards(old_rep, new_rep),
        "model": str(spec.model), "model_sha256": model.sha256,
        "baseline": str(spec.baseline), "baseline_model_sha256": old_rep.model_sha256,
        "target": target.name, "wall_s": time.perf_counter() - t_start,
        "per_op_diff": [{"name": o.name, "op_type": o.op_type, "old_ms": o.old_ms,
                         "new_ms": o.new_ms, "delta_ms": o.delta_ms} for o in ops],
    }
    return CheckOutcome(result, old_rep, new_rep, base, model, inputs, outputs)


def _boards(old_rep, new_rep) -> dict:
    """A check spread over a device pool's boards: each board's own ratio new / old, and a
    note naming a board that disagrees with the others ({} for a check on one board)."""
    from .measure.pooled import disagreement_note, per_board

    rows = per_board([old_rep, new_rep], 1, 0)
    if not rows:
        return {}
    note = disagreement_note(rows, "the new/old ratio")
    return {"boards": rows, **({"boards_note": note} if note else {})}


def _pool(spec: CheckSpec):
    """The pool of --tracker/--device (None without --tracker): one board, or --parallel N,
    each of which interleaves old and new itself (a ratio is only a ratio on one board)."""
    from .backends.tvm.pool import PoolConfig, pool_config
    from .bundle.transport import is_url
    from .errors import InputError

    if not spec.tracker:
        # --parallel without --tracker, or a bad --device-timeout: refused
        pool_config(None, spec.device, spec.parallel, spec.device_timeout)
        return None
    if is_url(spec.device) or not spec.device:
        raise InputError("--tracker needs --device KEY (an RPC device key, not ssh:// or adb://)")
    return PoolConfig(spec.tracker, spec.device, spec.parallel or 1,
                      **({} if spec.device_timeout is None else {"hang_s": spec.device_timeout}))


def _validate(spec: CheckSpec) -> None:
    """The numbers a check's timing rests on, refused (exit 2) before anything is loaded."""
    import math

    from .errors import InputError

    if not (math.isfinite(spec.max_time) and spec.max_time > 0):
        raise InputError(f"--max-time must be a positive number of seconds, got {spec.max_time}")
    if not (math.isfinite(spec.warmup_max) and spec.warmup_max >= 0):
        raise InputError(f"--warmup-max must be >= 0 seconds, got {spec.warmup_max}")
    if not (math.isfinite(spec.wait_quiet) and spec.wait_quiet >= 0):
        raise InputError(f"--wait-quiet must be a finite number of seconds >= 0, got "
                         f"{spec.wait_quiet}")
    if spec.memory_runs < 0:
        raise InputError(f"--memory-runs must be >= 0, got {spec.memory_runs}")
    if spec.threads is not None and spec.threads < 1:
        raise InputError(f"--threads must be >= 1, got {spec.threads}")


def _memory_gate(spec, base, threads, old_model, model, old_rep, new_rep, threshold):
    """Fresh-process memory runs of the new model (and of the old one when it is at hand,
    alternating with the new); the old side otherwise comes from the baseline. Returns both
    reports with their runs attached (so --update-baseline carries them) and the verdict."""
    from dataclasses import replace

    from .bundle.transport import is_url
    from .gate.memory_probe import measure_memory
    from .gate.resources import ResourceVerdict, memory_runs, memory_verdict, with_memory_runs

    if spec.memory_runs == 0:
        return old_rep, new_rep, memory_verdict(memory_runs(old_rep), [], threshold)
    if spec.tracker:  # the same: fresh processes here, not on the board
        return old_rep, new_rep, ResourceVerdict(
            "memory", "no-data", threshold, None, None, None,
            "not gated with --tracker: its fresh-process runs would measure this machine, not "
            "the board")
    if is_url(spec.device):  # fresh processes here would measure this machine, not the device
        return old_rep, new_rep, ResourceVerdict(
            "memory", "no-data", threshold, None, None, None,
            "not gated with --device: its fresh-process runs would measure this machine, not "
            "the device; each side's peak RSS on the device is in its report (`memory`)")
    paths = ([str(old_model.path)] if old_model is not None else []) + [str(model.path)]
    runs = measure_memory(base.report.target, threads, paths, base.feeds, spec.memory_runs)
    new_rep = replace(new_rep, memory=with_memory_runs(runs[-1]))
    if old_model is not None:
        old_rep = replace(old_rep, memory=with_memory_runs(runs[0]))
    return old_rep, new_rep, memory_verdict(memory_runs(old_rep), memory_runs(new_rep), threshold)


def _fingerprint(target) -> dict:
    from .measure.env import fingerprint

    return fingerprint(target.name, target.config, target.threads)
