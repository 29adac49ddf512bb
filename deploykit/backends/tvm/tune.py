"""MetaSchedule tuning of a model for a TVM target, with a trial budget; the database is kept per
(model sha256, target dict) so that every later build of that pair applies it (tuning is paid
once; `tvm_build.build` finds it)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ...core import ModelRef
from ...errors import InputError, TargetError, first_line
from . import build as tvm_build


def cpu_tensor_intrinsics_only() -> None:
    """Register only the CPU tensor intrinsics. `import tvm.s_tir.tensor_intrin` registers every
    backend's (CUDA's alone take 30-90 s on 2 busy cores), and MetaSchedule does that import in
    the tuner and again in each builder process; an llvm target needs x86's and arm's only.
    Runs in this process and, as the builder's initializer, in its workers."""
    import importlib
    import sys
    import types

    name = "tvm.s_tir.tensor_intrin"
    if name not in sys.modules:
        import tvm.s_tir

        pkg = types.ModuleType(name)
        pkg.__path__ = [str(Path(tvm.s_tir.__file__).parent / "tensor_intrin")]
        pkg.__package__ = name
        sys.modules[name] = pkg
        for sub in ("x86", "arm_cpu"):
            importlib.import_module(f"{name}.{sub}")


@dataclass(frozen=True)
class TuneResult:
    db: Path
    tasks: int
    trials: int  # candidates measured in this run
    records_before: int
    records_after: int
    seconds: float


def tune(model: ModelRef, target, trials: int, db: str | None = None,
         per_task: int | None = None, on_trials: Callable[[int, int], None] | None = None,
         seed: int = 0) -> TuneResult:
    """Run MetaSchedule with at most `trials` measured candidates over all tasks; a database
    already in `db` seeds the search, so tuning again continues rather than restarts."""
    import tvm
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    if trials < 1:
        raise InputError(f"--trials must be >= 1, got {trials}")
    if target.remote:
        raise InputError(f"{target.name}: tuning runs candidates on this machine; tuning over RPC "
                         f"is not supported (tune a local target such as tvm-x86)")
    tdict = target.tvm_target
    cpu = tdict["kind"] == "llvm"
    if cpu:
        cpu_tensor_intrinsics_only()
    mod, _, _ = tvm_build.import_model(model, target.name)
    mod = tvm_build.prepare(mod, tdict)
    tvm_target = tvm.target.Target(dict(tdict))
    tasks = ms.relax_integration.extract_tasks(mod, tvm_target)
    if not tasks:
        raise TargetError(f"{target.name}: {model.path.name} has no tunable kernels")
    # Spread the budget over the kernels (MetaSchedule would give it all to the first one).
    per_task = per_task or max(1, -(-trials // len(tasks)))
    work_dir = tvm_build.tuning_dir(model.sha256, tdict, db or target.config.get("tuning_db"))
    work_dir.mkdir(parents=True, exist_ok=True)
    before = tvm_build.record_count(work_dir)
    done = [0]

    @derived_object
    class _Progress(ms.measure_callback.PyMeasureCallback):
        def apply(self, task_scheduler, task_id, candidates, builder_results, runner_results):
            done[0] += len(candidates)
            if on_trials:
                on_trials(min(done[0], trials), trials)

    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)  # our bar, not logs
    cores = int(tdict.get("num-cores", target.threads))
    runner = ms.runner.LocalRunner(timeout_sec=60)
    t0 = time.perf_counter()
    try:
        ms.relax_integration.tune_relax(
            mod, {}, tvm_target, str(work_dir), max_trials_global=trials,
            max_trials_per_task=per_task, num_trials_per_iter=min(64, per_task),
            builder=ms.builder.LocalBuilder(
                max_workers=cores, timeout_sec=120,
                initializer=cpu_tensor_intrinsics_only if cpu else None),
            runner=runner,
            measure_callbacks=[*ms.MeasureCallback.create("default"), _Progress()], seed=seed)
    except Exception as e:
        raise TargetError(f"{target.name}: MetaSchedule tuning failed: {first_line(e)}") from None
    finally:
        runner.pool.shutdown()  # its worker process outlives us otherwise
    return TuneResult(work_dir, len(tasks), done[0], before, tvm_build.record_count(work_dir),
                      time.perf_counter() - t0)
