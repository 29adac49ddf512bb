"""Graph-side compression steps: each module holds one transformation on an ONNX model.

A recipe step is an onnx-ir pass (`onnx_ir.passes.InPlacePass` or `FunctionalPass`) in
`deploykit/rewrite/<step name>.py`, named after its step (`fold-bn` -> `FoldBnPass`), built from
the step's own frozen `Config` dataclass (defaults for every field) and a `StepContext`. Calling
it returns onnx-ir's `PassResult(model, modified)`; what a report needs beyond that (why it did
not apply, notes, details, how its output is judged) is the `StepReport` it leaves in `.report`
(the `StepPass` mix-in). The recipe runner (`recipe.py`) converts the model to onnx-ir once, runs
the passes in order, and verifies every step's output numerically against its input before
anything is timed.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np


@dataclass(frozen=True)
class StepContext:
    """What a step may need beyond the model: example/calibration inputs and a scratch folder."""

    feeds: Mapping[str, np.ndarray]  # one seeded (or user-supplied) input batch
    calibration: tuple[Mapping[str, np.ndarray], ...] = ()  # batches for static quantization
    calibration_is_synthetic: bool = True
    workdir: Path = Path(".")
    target: str = "ort-cpu"


@dataclass(frozen=True)
class OpsetNeed:
    """A step's requirement (its module's optional `min_opset(cfg)`): at least `opset` of the
    default domain, because `why`; model intake upgrades to it before step 1."""

    opset: int
    why: str


def strictest_need(needs: list[OpsetNeed | None]) -> OpsetNeed | None:
    """The strictest of several stages' needs (their reasons joined)."""
    real = [n for n in needs if n is not None]
    if not real:
        return None
    top = max(n.opset for n in real)
    return OpsetNeed(top, "; ".join(dict.fromkeys(n.why for n in real if n.opset == top)))


@dataclass(frozen=True)
class StepReport:
    """The record beside a step's `PassResult(model, modified)`: what the runner and the reports
    read that onnx-ir's result does not carry. `skipped` is set exactly when `modified` is
    False."""

    skipped: str | None = None
    notes: tuple[str, ...] = ()  # warnings a user must see ("synthetic calibration data")
    # e.g. per-layer errors; a step built on onnxscript rules counts their firings under `fired`
    details: Mapping[str, Any] = field(default_factory=dict)
    # how outputs are judged against the parent (deploykit.fidelity.TOLERANCES): "fp32" for exact
    # rewrites (tight), "int8" / "fp16" / "bf16" (cosine floors), "lossy" for approximations
    # (pruning, low-rank: reported, failing only on broken output)
    fidelity_kind: str = "fp32"


class StepPass:
    """Mixed into every recipe step's onnx-ir pass, before the onnx-ir base:
    `class FoldBnPass(StepPass, ir.passes.InPlacePass)`. It is not a second pass base class:
    `call`, `in_place`, `requires`/`ensures` and `PassResult` stay onnx-ir's. It holds the step's
    `cfg` and `ctx` and leaves the `StepReport` of the last call in `report`.

    `modified` is truthful: an in-place pass that returns False has not touched the model, and a
    functional pass never touches its input. A pass that needs an `onnx.ModelProto` (an external
    tool, onnx's shape inference) is a `FunctionalPass` that converts at its own boundary."""

    fidelity_kind = "fp32"  # the StepReport's default, per step class

    def __init__(self, cfg, ctx: StepContext | None = None):
        self.cfg = cfg
        self.ctx = ctx if ctx is not None else StepContext(feeds={})
        self.report = StepReport(fidelity_kind=self.fidelity_kind)

    def skip(self, model, why: str, notes: tuple[str, ...] = ()):
        """PassResult(model, False) for the input `model`, saying why the step did not apply (a
        functional pass returns a copy, as onnx-ir requires of it)."""
        from onnx_ir.passes import PassResult

        self.report = StepReport(skipped=why, notes=tuple(notes))  # no output: nothing judged
        return PassResult(model if self.in_place else model.clone(), False)

    def done(self, model, *, notes=(), details: Mapping[str, Any] | None = None):
        """PassResult(model, True), with the step's notes and details."""
        from onnx_ir.passes import PassResult

        self.report = StepReport(notes=tuple(notes), details=dict(details or {}),
                                 fidelity_kind=self.fidelity_kind)
        return PassResult(model, True)


@dataclass(frozen=True)
class StepOutcome:
    """One step run on an `onnx.ModelProto` by `apply_step`: the rewritten proto (None when the
    step did not apply) and the step's report."""

    model: Any | None  # onnx.ModelProto
    report: StepReport

    @property
    def skipped(self) -> str | None:
        return self.report.skipped

    @property
    def notes(self) -> tuple[str, ...]:
        return self.report.notes

    @property
    def details(self) -> Mapping[str, Any]:
        return self.report.details

    @property
    def fidelity_kind(self) -> str:
        return self.report.fidelity_kind


def apply_step(step_pass, model) -> StepOutcome:
    """Run one step pass on an `onnx.ModelProto` (tests, tools, a notebook): the proto is
    converted to onnx-ir, the pass runs, and a modified model is converted back. Nothing is
    checked or verified here; `recipe.run_recipe` does that for recipes."""
    import onnx_ir as ir

    with quiet_library_warnings():
        result = step_pass(ir.from_proto(model))
    return StepOutcome(ir.to_proto(result.model) if result.modified else None, step_pass.report)


def per_layer(items: tuple[str, ...], step: str, lo: float, hi: float,
              hi_open: bool = True) -> dict[str, float]:
    """A step's `layers` field ("NAME:VALUE" items; the last ':' splits, since exported names
    like "onnx::Conv_12" contain colons) as {name: value}, each value in [lo, hi) (or [lo, hi])."""
    from ..errors import InputError

    out: dict[str, float] = {}
    for item in items:
        name, sep, raw = item.rpartition(":")
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not sep or not name or not (lo <= value < hi or (not hi_open and value == hi)):
            raise InputError(f"{step}: bad layers item {item!r}: expected NAME:VALUE with VALUE "
                             f"in [{lo:g}, {hi:g}{')' if hi_open else ']'}")
        out[name] = value
    return out


def unknown_layers(step: str, names, known) -> None:
    """One-line error for `layers` names the model does not have, listing some it does."""
    from ..errors import InputError

    missing = sorted(set(names) - set(known))
    if missing:
        some = ", ".join(sorted(known)[:6]) or "none"
        raise InputError(f"{step}: layers {', '.join(missing[:3])} not found among the "
                         f"{len(set(known))} eligible weights (e.g. {some})")


class _AboveWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.WARNING


@contextlib.contextmanager
def quiet_library_warnings():
    """Drop WARNING-and-below records that libraries log on the root logger itself while a step
    runs (onnxruntime.quantization's "Please consider to run pre-processing" and per-weight axis
    notices, once per node): the step decides those things itself and reports what matters in
    its notes. Errors still show; named loggers are untouched."""
    root, f = logging.getLogger(), _AboveWarning()
    root.addFilter(f)  # a logger's filters see only records logged on it, not propagated ones
    try:
        yield
    finally:
        root.removeFilter(f)
