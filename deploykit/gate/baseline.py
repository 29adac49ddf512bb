"""The baseline file: what `deploykit baseline` writes (meant to be committed) and `check` reads."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import __version__
from ..core import LatencyReport, TensorSpec
from ..errors import InputError


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
        from ..fsutil import write_text_atomic

        write_text_atomic(path, json.dumps(self.to_dict(), indent=1, default=str) + "\n")


def _spec_dict(s: TensorSpec) -> dict[str, Any]:
    return {"name": s.name, "shape": list(s.shape), "dtype": s.dtype}


def _spec(d: Mapping[str, Any]) -> TensorSpec:
    return TensorSpec(d["name"], tuple(d["shape"]), d["dtype"])


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
        if not report.samples_ms:
            raise ValueError("no samples")
        if report.model_sha256 != m["sha256"]:
            raise ValueError("model sha256 does not match its report")
        return Baseline(report, str(m["path"]), tuple(_spec(s) for s in m["inputs"]),
                        tuple(_spec(s) for s in m["outputs"]), dict(d.get("feeds") or {}),
                        float(d.get("created", report.created)), p)
    except (KeyError, TypeError, ValueError) as e:
        raise BaselineError(f"baseline file {p} is incomplete or corrupt ({type(e).__name__}: "
                            f"{e}); {redo}") from None


