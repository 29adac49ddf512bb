"""deploykit's Python API: the pipeline's stages as functions over its own types.

    import deploykit as dk
    exported = dk.export(model, torch.randn(1, 3, 64, 64), "model.onnx")   # -> ExportResult
    compressed = dk.compress(exported, "fold-bn,quantize-static", "int8.onnx")  # -> RecipeResult
    report = dk.profile(compressed, target="ort-cpu")                      # -> LatencyReport
    cmp = dk.compare([exported, compressed])                               # -> Comparison

Every function takes a model as a path, a `ModelRef` or the result of an earlier stage, raises a
`DeployKitError` subclass for what a user can fix (the CLI prints those as one line), and returns
a typed result with `.to_json()`. The CLI's verbs run the same library code. Heavy imports stay
inside the functions, so `import deploykit` is instant.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .core import ModelRef, TimingPlan
from .errors import InputError

if TYPE_CHECKING:
    from .bundle.verify import VerifyResult
    from .core import LatencyReport
    from .export.exporter import ExportResult
    from .gatecheck import CheckOutcome
    from .measure.timing import Comparison
    from .rewrite.recipe import RecipeResult
    from .search.engine import SearchResult

PathLike = str | os.PathLike


def model_ref(model: Any) -> ModelRef:
    """A ModelRef from a path, a ModelRef, or a stage's result (ExportResult, RecipeResult)."""
    if isinstance(model, ModelRef):
        return model
    for attr in ("model", "final"):  # ExportResult.model, RecipeResult.final
        ref = getattr(model, attr, None)
        if isinstance(ref, ModelRef):
            return ref
    if isinstance(model, (str, os.PathLike)):
        p = Path(model)
        if p.suffix != ".onnx":
            raise InputError(f"{p}: expected an .onnx file (export torch models first)")
        if not p.is_file():
            raise InputError(f"model file not found: {p}")
        return ModelRef.from_path(p)
    raise InputError(f"expected an .onnx path, a ModelRef or a stage result, got "
                     f"{type(model).__name__}")


def _record(store: PathLike | bool | None, models: Sequence[ModelRef] = (),
            reports: Sequence[tuple["LatencyReport", ModelRef]] = (), label: str | None = None):
    """Store models (lineage) and runs when `store` is a path (True: the default store)."""
    if not store:
        return
    from .store import Store, default_store_path

    with Store(default_store_path() if store is True else store) as s:
        for m in models:
            s.record_model(m)
        for rep, m in reports:
            s.record_report(rep, label=label, model=m)


def prepare_inputs(model: Any, *, seed: int = 0,
                   shapes: Mapping[str, Sequence[int]] | None = None,
                   inputs: PathLike | None = None, calibration: PathLike | None = None,
                   calib_batches: int = 64, synthetic: bool = True):
    """(input specs, feeds, calibration batches, whether they are synthetic) of `model`: the
    seeded feeds (or the `inputs` .npz) every stage verifies and times with, and the calibration
    data: loaded from `calibration` (at most `calib_batches`), else seeded synthetic batches when
    `synthetic` asks for them, else none. `compress` and `search` (and their verbs) share it."""
    from .onnxio import io_specs, load_onnx, make_feeds
    from .rewrite.calibration import load_calibration, synthetic_calibration

    shapes = {k: tuple(v) for k, v in (shapes or {}).items()}
    path = model if isinstance(model, (str, os.PathLike)) else model_ref(model).path
    specs, _ = io_specs(load_onnx(path))
    feeds = make_feeds(specs, seed, shapes, None if inputs is None else str(inputs))
    if calibration is not None:
        return specs, feeds, load_calibration(specs, str(calibration), calib_batches), False
    if synthetic:
        return specs, feeds, synthetic_calibration(specs, min(8, calib_batches), seed + 1,
                                                   shapes), True
    return specs, feeds, [], True


def export(model: Any, example_inputs: Any = None, output: PathLike | None = None, *,
           input_shapes: Mapping[str, Sequence[int]] | None = None, dynamic_batch: bool = False,
           dynamic_axes: Mapping[str, Mapping[int, str]] | None = None, opset: int | None = None,
           simplify: bool = True, seed: int = 0, weights: PathLike | None = None,
           trust_pickle: bool = False, store: PathLike | bool | None = None) -> "ExportResult":
    """Export a `torch.nn.Module` (called with `example_inputs`), a factory ("file.py:build") or
    an .onnx file to a verified, simplified ONNX file at `output` (default: NAME.onnx here).
    `trust_pickle` allows a `weights` checkpoint that needs pickle (only for files you trust)."""
    from .export.exporter import export_model, export_module

    if isinstance(model, (str, os.PathLike)):
        if example_inputs is not None:
            raise InputError("example_inputs go with a torch.nn.Module; a factory file brings "
                             "its own example_inputs() and an .onnx file its own inputs")
        src = str(model)
        stem = Path(src.rpartition(":")[2] if src.endswith(tuple("abcdefghijklmnopqrstuvwxyz_"))
                    and ":" in src else src).stem
        out = Path(output) if output else Path(f"{stem}.export.onnx" if src.endswith(".onnx")
                                               else f"{stem}.onnx")
        result = export_model(src, out, input_shapes=input_shapes, dynamic_batch=dynamic_batch,
                              dynamic_axes=dynamic_axes, opset=opset, simplify=simplify,
                              seed=seed, weights=weights, trust_pickle=trust_pickle)
    else:
        if example_inputs is None:
            raise InputError("exporting a torch.nn.Module needs example_inputs (a tensor or a "
                             "tuple of tensors)")
        if input_shapes or weights is not None:
            raise InputError("input_shapes / weights apply to factory files; an in-memory module "
                             "is exported as it is, at the example inputs' shapes")
        out = Path(output) if output else Path(f"{type(model).__name__.lower()}.onnx")
        result = export_module(model, example_inputs, out, dynamic_batch=dynamic_batch,
                               dynamic_axes=dynamic_axes, opset=opset, simplify=simplify,
                               seed=seed)
    _record(store, [result.model])
    return result


def compress(model: Any, recipe: str, output: PathLike | None = None, *,
             inputs: PathLike | None = None, calibration: PathLike | None = None,
             calib_batches: int = 64, shapes: Mapping[str, Sequence[int]] | None = None,
             seed: int = 0, target: str = "ort-cpu", workdir: PathLike | None = None,
             store: PathLike | bool | None = None) -> "RecipeResult":
    """Apply a compression recipe ("fold-bn,quantize-static:per_channel=true" or a .toml file),
    each step verified against its parent; the final model is copied to `output`
    (default: MODEL.compressed.onnx beside the input). Returns the RecipeResult (steps, fidelity,
    lineage); `deploykit compress` adds the realized-speedup measurement on top."""
    import shutil
    import tempfile

    from .fsutil import atomic_path
    from .rewrite import StepContext
    from .rewrite.recipe import CALIBRATED_STEPS, parse_recipe, run_recipe

    ref = model_ref(model)
    steps = parse_recipe(recipe)
    _, feeds, calib, synthetic = prepare_inputs(
        ref.path, seed=seed, shapes=shapes, inputs=inputs, calibration=calibration,
        calib_batches=calib_batches, synthetic=any(s.name in CALIBRATED_STEPS for s in steps))
    out = Path(output) if output else ref.path.with_suffix(".compressed.onnx")
    with tempfile.TemporaryDirectory(prefix="deploykit-compress-") as tmp:
        ctx = StepContext(feeds=feeds, calibration=tuple(calib),
                          calibration_is_synthetic=synthetic,
                          workdir=Path(workdir) if workdir else Path(tmp), target=target)
        result = run_recipe(ref, steps, ctx)
        if not result.applied:
            raise InputError("no step of the recipe applied: "
                             + "; ".join(f"{s.spec}: {s.skipped}" for s in result.steps))
        with atomic_path(out) as dst:
            shutil.copyfile(result.final.path, dst)
    result = result.moved_to(out)
    _record(store, [result.source, *(s.output for s in result.applied[:-1]), result.final])
    return result


def _compile_with_feeds(refs: Sequence[ModelRef], target_names: Sequence[str],
                        threads: int | None, inputs, shapes, seed: int):
    from .backends import registry

    tlist = [registry.get(n, threads=threads) for n in target_names]
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


def compare(models: Sequence[Any], target: str | Sequence[str] = "ort-cpu", *,
            plan: TimingPlan = TimingPlan(), inputs: PathLike | None = None,
            shapes: Mapping[str, Sequence[int]] | None = None, seed: int = 0,
            threads: int | None = None, per_op: bool = False, progress: bool = False,
            store: PathLike | bool | None = None) -> "Comparison":
    """Measure every model x target in interleaved rounds in one process; ratios to the first,
    with paired confidence intervals. Sessions run as their target files say, exactly as
    `deploykit profile --compare` runs them (the shipped ORT targets turn spinning off: two
    spinning pools in one process distort each other)."""
    from .measure.timing import compare as run_compare

    refs = [model_ref(m) for m in models]
    names = [target] if isinstance(target, str) else list(target)
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
