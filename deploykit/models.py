"""The Python API's model stages (re-exported by api.py, where users find them): a ModelRef from
whatever a user holds, the inputs every stage verifies and times with, `export` and `compress`,
each recording lineage in the store when asked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .core import ModelRef
from .errors import InputError

if TYPE_CHECKING:
    from .core import LatencyReport
    from .export.exporter import ExportResult
    from .rewrite.recipe import RecipeResult

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
