"""The baseline file: what `deploykit baseline` writes (meant to be committed) and `check` reads."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .._version import __version__
from ..core import LatencyReport, TensorSpec
from ..errors import InputError
from ..stats import MIN_UNITS, positive_finite


class BaselineError(InputError):
    """A baseline file is missing, corrupt, too new, or for another model."""


BASELINE_KIND = "deploykit-baseline"
BASELINE_SCHEMA = 1


@dataclass(frozen=True)
class Baseline:
    """What `deploykit baseline` writes (meant to be committed) and `deploykit check` reads."""

    report: LatencyReport
    model_path: str  # as recorded; relative to the baseline file's folder when it was inside it
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    feeds: Mapping[str, Any]  # seed, shapes, npz: how the inputs were made
    created: float
    source: Path | None = None  # the file it was read from

    def model_file(self) -> Path | None:
        """The baseline's model on disk if it is still there with the same content."""
        from ..fsutil import sha256_file

        p = Path(self.model_path)
        if not p.is_absolute() and self.source is not None:
            p = self.source.parent / p
        try:
            return p if p.is_file() and sha256_file(p) == self.report.model_sha256 else None
        except OSError:
            return None

    def signature_mismatch(self, inputs: Sequence[TensorSpec],
                           outputs: Sequence[TensorSpec]) -> str | None:
        """Why a model is not the one this baseline is for (its inputs/outputs), or None."""
        def fmt(specs):
            return ", ".join(f"{s.name}{list(s.shape)}:{s.dtype}" for s in specs)

        if tuple(inputs) != self.inputs:
            return f"inputs {fmt(inputs)} vs baseline's {fmt(self.inputs)}"
        if tuple(outputs) != self.outputs:
            return f"outputs {fmt(outputs)} vs baseline's {fmt(self.outputs)}"
        return None

    def to_dict(self) -> dict[str, Any]:
        r = self.report
        return {"kind": BASELINE_KIND, "schema": BASELINE_SCHEMA, "deploykit": __version__,
                "created": self.created,
                "model": {"path": self.model_path, "sha256": r.model_sha256,
                          "id": r.model_sha256[:16],
                          "inputs": [_spec_dict(s) for s in self.inputs],
                          "outputs": [_spec_dict(s) for s in self.outputs]},
                "artifact_id": r.artifact_id, "target": r.target,
                "target_config": dict(r.target_config), "env": dict(r.env),
                "feeds": dict(self.feeds), "report": r.to_dict()}

    def save(self, path: str | Path) -> None:
        from ..fsutil import write_json

        self.check()
        write_json(path, self.to_dict())

    def check(self) -> None:
        """ValueError unless every number a verdict rests on is usable (see check_report)."""
        check_report(self.report)
        for s in (*self.inputs, *self.outputs):
            if not (isinstance(s.name, str) and all(
                    isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool))
                    for d in s.shape)):
                raise ValueError(f"tensor spec {s.name!r} has a malformed shape {list(s.shape)}")
        shapes = self.feeds.get("shapes") or {}
        seed = self.feeds.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or not isinstance(shapes, dict) \
                or not all(isinstance(v, list) and v and all(isinstance(d, int) and d > 0
                                                             for d in v)
                           for v in shapes.values()) \
                or not isinstance(self.feeds.get("npz"), (str, type(None))):
            raise ValueError("feeds (seed, shapes, npz) are malformed")


def _spec_dict(s: TensorSpec) -> dict[str, Any]:
    return {"name": s.name, "shape": list(s.shape), "dtype": s.dtype}


def _spec(d: Mapping[str, Any]) -> TensorSpec:
    return TensorSpec(d["name"], tuple(d["shape"]), d["dtype"])


def checked(baseline: Baseline) -> Baseline:
    """`baseline`, if `check` could read it back; else a one-line error (nothing is written)."""
    try:
        baseline.check()
    except ValueError as e:
        raise InputError(f"this run cannot become the baseline ({e}); re-run the check") from None
    return baseline


def make_baseline(report: LatencyReport, inputs: Sequence[TensorSpec],
                  outputs: Sequence[TensorSpec], feeds: Mapping[str, Any],
                  out_path: str | Path) -> Baseline:
    """A Baseline whose model path is relative to the baseline file when the model lies below it,
    so the pair can be committed together."""
    model = Path(report.model_path).resolve()
    folder = Path(out_path).resolve().parent
    try:
        rel = str(model.relative_to(folder))
    except ValueError:
        rel = str(model)
    return Baseline(report, rel, tuple(inputs), tuple(outputs), dict(feeds), time.time())


def check_report(r: LatencyReport) -> None:
    """ValueError unless the samples and rounds a verdict rests on are usable: finite, positive
    samples, at least MIN_UNITS of them, blocks that tile the samples, a 64-hex model sha256."""
    if len(r.samples_ms) < MIN_UNITS:
        raise ValueError(f"{len(r.samples_ms)} samples (need >= {MIN_UNITS})")
    bad = next((x for x in r.samples_ms if not positive_finite(x)), None)
    if bad is not None:
        raise ValueError(f"a latency sample is {bad!r} (samples must be finite and positive)")
    end = 0
    for b in r.blocks:
        if not (isinstance(b.start, int) and isinstance(b.n, int) and b.start == end
                and b.n >= 1 and isinstance(b.contaminated, bool)
                and isinstance(b.foreign_cpu, (int, float)) and math.isfinite(b.foreign_cpu)):
            raise ValueError(f"malformed timed round {b} (rounds must tile the samples in order)")
        end = b.start + b.n
    if r.blocks and end != len(r.samples_ms):
        raise ValueError(f"the rounds cover {end} samples, the report has {len(r.samples_ms)}")
    if r.blocks and len(r.blocks) < MIN_UNITS:
        raise ValueError(f"{len(r.blocks)} timed rounds (need >= {MIN_UNITS})")
    sha = r.model_sha256
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise ValueError("the model sha256 is not 64 hex digits")
    for o in r.per_op:
        if not (isinstance(o.total_ms, (int, float)) and math.isfinite(o.total_ms)
                and o.total_ms >= 0):
            raise ValueError(f"per-op time of {o.name!r} is {o.total_ms!r}")
    if not isinstance(r.env, Mapping) or not isinstance(r.target, str):
        raise ValueError("env or target is malformed")


def load_baseline(path: str | Path) -> Baseline:
    """Read a baseline file, or a one-line BaselineError that says what to do."""
    p = Path(path)
    redo = f"re-record it with `deploykit baseline MODEL --target T -o {p}`"
    if not p.is_file():
        raise BaselineError(f"baseline file not found: {p}; record one with "
                            f"`deploykit baseline MODEL --target T -o {p}`")
    try:
        d = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BaselineError(f"baseline file {p} is corrupt ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}); {redo}") from None
    if not isinstance(d, dict) or d.get("kind") != BASELINE_KIND:
        raise BaselineError(f"{p} is not a deploykit baseline file; {redo}")
    schema = d.get("schema")
    if not isinstance(schema, int) or schema < 1:
        raise BaselineError(f"baseline file {p} has no valid schema version; {redo}")
    if schema > BASELINE_SCHEMA:
        raise BaselineError(f"baseline file {p} has schema {schema}, newer than this deploykit "
                            f"understands ({BASELINE_SCHEMA}, deploykit {__version__}): upgrade "
                            f"deploykit, or {redo}")
    try:
        m = d["model"]
        report = LatencyReport.from_dict(d["report"])
        if report.model_sha256 != m["sha256"]:
            raise ValueError("model sha256 does not match its report")
        base = Baseline(report, str(m["path"]), tuple(_spec(s) for s in m["inputs"]),
                        tuple(_spec(s) for s in m["outputs"]), dict(d.get("feeds") or {}),
                        float(d.get("created", report.created)), p)
        base.check()
        return base
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BaselineError(f"baseline file {p} is incomplete or corrupt ({type(e).__name__}: "
                            f"{e}); {redo}") from None
