"""deploykit's Python API: the pipeline's stages as functions over its own types.

    import deploykit as dk
    exported = dk.export(model, torch.randn(1, 3, 64, 64), "model.onnx")   # -> ExportResult
    compressed = dk.compress(exported, "fold-bn,quantize-static", "int8.onnx")  # -> RecipeResult
    report = dk.profile(compressed, target="ort-cpu")                      # -> LatencyReport
    cmp = dk.compare([exported, compressed])                               # -> Comparison

Every function takes a model as a path, a `ModelRef` or the result of an earlier stage, raises a
`DeployKitError` subclass for what a user can fix (the CLI prints those as one line), and returns
a typed result with `.to_json()`. The CLI's verbs run the same library code. Heavy imports stay
inside the functions, so `import deploykit` is instant. The model stages (`model_ref`,
`prepare_inputs`, `export`, `compress`) live in models.py and are re-exported here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .core import ModelRef, TimingPlan
from .errors import InputError
from .models import (_record, compress as compress, export as export, model_ref as model_ref,
                     prepare_inputs as prepare_inputs)

if TYPE_CHECKING:
    from .bundle.verify import VerifyResult
    from .core import LatencyReport
    from .gatecheck import CheckOutcome
    from .measure.timing import Comparison
    from .search.engine import SearchResult

PathLike = str | os.PathLike


def _compile_with_feeds(refs: Sequence[ModelRef], target_names: Sequence[Any],
                        threads: int | None, inputs, shapes, seed: int):
    from .backends import registry

    tlist = [registry.get(n, threads=threads) if isinstance(n, str) else n
             for n in target_names]
    return compile_with_feeds(refs, tlist, seed=seed, shapes=shapes, inputs=inputs)


def compile_with_feeds(refs: Sequence[ModelRef], targets: Sequence[Any], *, seed: int = 0,
                       shapes: Mapping[str, Sequence[int]] | None = None,
                       inputs: PathLike | None = None):
    """([artifact], [feeds]): every model compiled on every target (model-major), each with the
    seeded feeds (or the `inputs` .npz) of its compiled inputs; what `profile` and `compare`
    (and the `deploykit profile` verb) time."""
    from .measure.memory import preload
    from .onnxio import make_feeds

    preload()  # memory deltas count the model, not the imports timing makes later
    shapes = {k: tuple(v) for k, v in (shapes or {}).items()}
    arts, feeds = [], []
    for ref in refs:
        for t in targets:
            art = t.compile(ref)
            arts.append(art)
            feeds.append(make_feeds(list(art.inputs), seed, shapes,
                                    None if inputs is None else str(inputs)))
    return arts, feeds


def profile(model: Any, target: str = "ort-cpu", *, plan: TimingPlan = TimingPlan(),
            inputs: PathLike | None = None, shapes: Mapping[str, Sequence[int]] | None = None,
            seed: int = 0, threads: int | None = None, per_op: bool = True,
            progress: bool = False, store: PathLike | bool | None = None) -> "LatencyReport":
    """Compile `model` for `target` and measure it (warm-up, adaptive repetitions, block CIs,
    foreign-load bookkeeping, per-op breakdown). Returns the LatencyReport (raw samples kept)."""
    ref = model_ref(model)
    (art,), (feeds,) = _compile_with_feeds([ref], [target], threads, inputs, shapes, seed)
    try:
        rep = art.target.profile(art, feeds, plan, per_op=per_op, progress=progress)
    finally:
        art.close()
    _record(store, reports=[(rep, ref)], label="api")
    return rep


def compare(models: Sequence[Any], target: Any = "ort-cpu", *,
            plan: TimingPlan = TimingPlan(), inputs: PathLike | None = None,
            shapes: Mapping[str, Sequence[int]] | None = None, seed: int = 0,
            threads: int | None = None, per_op: bool = False, progress: bool = False,
            store: PathLike | bool | None = None) -> "Comparison":
    """Measure every model x target in interleaved rounds in one process; ratios to the first,
    with paired confidence intervals. `target`: names, or Targets already configured (then
    `threads` is theirs). Sessions run as their target files say; `deploykit profile --compare`
    runs this (the shipped ORT targets turn spinning off: two spinning pools in one process
    distort each other)."""
    from .measure.timing import compare as run_compare

    refs = [model_ref(m) for m in models]
    names = list(target) if isinstance(target, (list, tuple)) else [target]
    if len(refs) * len(names) < 2:
        raise InputError("compare needs at least two models or targets")
    arts, feeds = _compile_with_feeds(refs, names, threads, inputs, shapes, seed)
    try:
        cmp = run_compare(arts, feeds, plan, progress=progress, per_op=per_op)
    finally:
        for a in arts:
            a.close()
    _record(store, reports=list(zip(cmp.reports, [a.model for a in arts])), label="api")
    return cmp


def search(model: Any, output: PathLike, target: str = "ort-cpu", *,
           min_fidelity: float = 0.99, budget_ms: float | None = None,
           time_limit_s: float = 600.0, families: Sequence[str] = (),
           calibration: PathLike | None = None, inputs: PathLike | None = None,
           shapes: Mapping[str, Sequence[int]] | None = None, seed: int = 0,
           threads: int | None = None, progress: bool = False,
           store: PathLike | bool | None = True,
           runtimes: Sequence[str] | None = (), example_inputs: Any = None,
           recover_budget_s: float | None = None, device: str | None = None,
           tracker: str | None = None, parallel: int | None = None) -> "SearchResult":
    """Latency-guided compression search; writes search.json, the report and recommended.onnx
    under `output` and returns the SearchResult (Pareto front, recommendation, lineage).
    The recommendation runs on `target`'s runtime; `runtimes` (target names, or None for every
    CPU runtime installed) are searched too and reported as alternatives. `model` may be a
    torch.nn.Module (with `example_inputs`): it is exported first and its pruned candidates can be
    recovered by distillation for `recover_budget_s` seconds each (default 60; 0: off).
    `device`/`tracker`/`parallel`: measure on up to `parallel` RPC boards of key `device` at
    once (a remote TVM target; backends/tvm/pool.py), the confirmation on one board."""
    from .backends import registry
    from .search.candidates import FAMILIES
    from .search.engine import SearchConfig
    from .store import default_store_path

    torch_source = None
    torch_mod = sys.modules.get("torch")  # a module object implies torch is imported
    if torch_mod is not None and isinstance(model, torch_mod.nn.Module):
        from .export.exporter import export_module
        from .search.recover import TorchSource

        if example_inputs is None:
            raise InputError("searching a torch module needs example_inputs")
        args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) \
            else (example_inputs,)
        model.eval()
        torch_source = TorchSource(model, args)
        model = export_module(model, args, Path(output) / ".work" / "source.onnx")
    ref = model_ref(model)
    if recover_budget_s is None:
        recover_budget_s = 60.0 if torch_source is not None else 0.0
    unknown = set(families) - set(FAMILIES)
    if unknown:
        raise InputError(f"unknown search families {sorted(unknown)} (known: {', '.join(FAMILIES)})")
    from .search.experts import other_runtimes

    from .backends.tvm.pool import PoolConfig, check_target, pool_config

    pool = pool_config(tracker, device, parallel) or (
        PoolConfig(tracker, device or "", 1) if tracker else None)
    tgt = registry.get(target, threads=threads,
                       **({} if pool is None else {"device": pool.key, "tracker": pool.tracker}))
    if pool is not None:
        check_target(tgt)
    cfg = SearchConfig(budget_ms=budget_ms, min_fidelity=min_fidelity, time_limit_s=time_limit_s,
                       families=tuple(families),
                       runtimes=other_runtimes(tgt, None if runtimes is None else list(runtimes)),
                       recover_budget_s=recover_budget_s)
    _, feeds, calib, synthetic = prepare_inputs(ref.path, seed=seed, shapes=shapes,
                                                inputs=inputs, calibration=calibration)
    out = Path(output)
    store_file = (default_store_path() if store is True else
                  store if store else out / ".work" / "results.sqlite")
    return run_search(ref.path, target, cfg, out, store_file, feeds=feeds, calibration=calib,
                      synthetic=synthetic, progress=progress, threads=threads,
                      torch_source=torch_source, pool=pool)[0]


def run_search(model: PathLike, target: str, cfg, output: PathLike, store, *,
               feeds: Mapping[str, Any], calibration: Sequence[Mapping[str, Any]] = (),
               synthetic: bool = True, eval_fn=None, progress: bool = False,
               threads: int | None = None, torch_source=None, pool=None
               ) -> tuple["SearchResult", dict[str, Path]]:
    """The search on prepared inputs (`search` and the `deploykit search` verb share it): a
    SearchConfig, feeds and calibration batches (`prepare_inputs`), results kept in the store at
    `store`; writes search.json, the report and recommended.onnx under `output` and returns the
    result with the paths written."""
    from .search.engine import Search, write_outputs
    from .store import Store

    out = Path(output)
    with Store(store) as s:
        result = Search(Path(model), target, cfg, out, s, feeds=feeds, calibration=calibration,
                        calibration_is_synthetic=synthetic, eval_fn=eval_fn, progress=progress,
                        threads=threads, torch_source=torch_source, pool=pool).run()
    return result, write_outputs(result, out)


def check(model: Any, baseline: PathLike, *, against: Any = None, max_slowdown: str = "5%",
          max_memory_increase: str = "10%", max_cold_start_increase: str = "20%",
          max_time: float = 20.0, warmup_max: float = 0.5, threads: int | None = None,
          memory_runs: int = 3, wait_quiet: float = 0.0, device: str | None = None,
          tracker: str | None = None, parallel: int | None = None,
          allow_env_change: bool = False, progress: bool = False) -> "CheckOutcome":
    """The CI gate on one model, as `deploykit check` runs it: latency interleaved against
    `against` (the old model) when given or the baseline's model when it is still on disk, else
    against the baseline's stored samples; the memory and cold-start gates beside it; on a device
    with `device="ssh://..."`, or on one board of RPC device key `device` from `tracker` (both
    models on the same board). Returns the CheckOutcome: `.result` (the verdicts, as
    `check --json`), `.failed` (what the CLI exits 1 on), both reports."""
    from .gatecheck import CheckSpec, run_check

    def path(m: Any) -> str | None:
        return None if m is None else str(model_ref(m).path)

    return run_check(CheckSpec(
        model=path(model), baseline=str(baseline), against=path(against),
        max_slowdown=max_slowdown, max_memory_increase=max_memory_increase,
        max_cold_start_increase=max_cold_start_increase, max_time=max_time,
        warmup_max=warmup_max, threads=threads, memory_runs=memory_runs, wait_quiet=wait_quiet,
        device=device, tracker=tracker, parallel=parallel, allow_env_change=allow_env_change,
        progress=progress))


def package(model: Any, target: Any, output: PathLike, *, force: bool = False,
            **options: Any) -> dict[str, Any]:
    """Build a self-checking deployment bundle for `target` (a registry name, or a Target
    already configured: threads, device) at `output`; returns its manifest. `options` are
    PackageOptions fields (e.g. original=..., ort_platform=...)."""
    from dataclasses import fields

    from .backends import registry
    from .bundle.package import PackageOptions, package as build

    known = {f.name for f in fields(PackageOptions)}
    bad = set(options) - known
    if bad:
        raise InputError(f"unknown package options {sorted(bad)} (known: {', '.join(sorted(known))})")
    tgt = registry.get(target) if isinstance(target, str) else target
    return build(model_ref(model).path, tgt, output, PackageOptions(force=force, **options))


def verify(bundle: PathLike, *, device: str | None = None, tracker: str | None = None,
           python: bool = False, repeat: int = 1) -> "VerifyResult":
    """Integrity and golden-output self-test of a bundle, here or on a device over RPC."""
    from .bundle.verify import verify as run_verify

    return run_verify(bundle, device=device, tracker=tracker, python=python, repeat=repeat)
