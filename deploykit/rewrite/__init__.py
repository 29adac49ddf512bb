"""Graph-side compression steps: each module holds one transformation on an ONNX model.

A recipe step is a function `step(model, cfg, ctx) -> StepResult` registered in
`deploykit.rewrite.recipe.STEPS`; `cfg` is the step's own frozen dataclass (defaults for every field).
Every step's output is verified numerically against its input by the recipe runner before
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
class StepResult:
    """`model` is None exactly when the step did not apply; `skipped` then says why."""

    model: Any | None  # onnx.ModelProto
    skipped: str | None = None
    notes: tuple[str, ...] = ()  # warnings a user must see ("synthetic calibration data")
    details: Mapping[str, Any] = field(default_factory=dict)  # e.g. per-layer errors, rule counts
    # how outputs are judged against the parent (deploykit.verify.TOLERANCES): "fp32" for exact
    # rewrites (tight), "int8" / "fp16" / "bf16" (cosine floors), "lossy" for approximations
    # (pruning, low-rank: reported, failing only on broken output)
    fidelity_kind: str = "fp32"


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
