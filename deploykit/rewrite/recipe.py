"""Compression recipes: an ordered list of graph rewrites, each verified against its parent.

Syntax (CLI): steps separated by ';', each `name` or `name:field=value,field=value`; list values
are separated by '|':

    "fold-bn; prune-channels:ratio=0.5; quantize-static:per_channel=true,exclude=conv1|fc"

or a TOML file with one `[[step]]` table per step (`name = "..."` plus the fields). Every step
module `deploykit/rewrite/<step_name>.py` defines a frozen dataclass `Config` and an onnx-ir pass
class named after the step (`fold-bn` -> `FoldBnPass(cfg, ctx)`, see `deploykit.rewrite`). The
runner converts the model to onnx-ir once, runs the passes in order on it, writes every
intermediate model (with its lineage), checks it with onnx.checker and verifies its outputs
against its parent's on ORT before anything is timed; a step that did not apply (its
PassResult's `modified` is False) is recorded as skipped, with its report's reason.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..core import ModelRef, Result
from ..errors import StepVerificationError, VerificationError
from . import StepContext, StepReport, quiet_library_warnings
from ..fidelity import Fidelity, Tolerance
from .parse import (CALIBRATED_STEPS, LIST_SEP, STEPS, RecipeStep,  # noqa: F401 (the recipe
                    describe_steps, make_step, opset_need, parse_recipe,  # API, re-exported:
                    parse_recipe_file, pass_class, pass_name, split_recipe,  # parsing lives in
                    step_module)  # parse.py)

@dataclass(frozen=True)
class StepRecord:
    """What one step did: applied (with its verified output) or skipped (with the reason)."""

    index: int
    name: str
    spec: str
    parent: ModelRef
    output: ModelRef | None  # None when skipped
    skipped: str | None
    notes: tuple[str, ...]
    details: Mapping[str, Any]
    fidelity_kind: str
    fidelity: Fidelity | None
    seconds: float

    @property
    def applied(self) -> bool:
        return self.output is not None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "spec": self.spec,
                "parent_sha256": self.parent.sha256,
                "output": None if self.output is None else
                {"path": str(self.output.path), "sha256": self.output.sha256},
                "skipped": self.skipped, "notes": list(self.notes),
                "details": _jsonable(self.details), "fidelity_kind": self.fidelity_kind,
                "fidelity": None if self.fidelity is None else self.fidelity.to_dict(),
                "seconds": self.seconds}


@dataclass(frozen=True)
class RecipeResult(Result):
    source: ModelRef
    final: ModelRef
    steps: tuple[StepRecord, ...]
    fidelity: Fidelity | None  # final vs source; None when nothing applied

    @property
    def applied(self) -> tuple[StepRecord, ...]:
        return tuple(s for s in self.steps if s.applied)

    def __repr__(self) -> str:
        steps = ", ".join(s.spec for s in self.applied) or "none"
        fid = "" if self.fidelity is None else f"; vs source: {self.fidelity.summary()}"
        return f"RecipeResult({self.source.path.name} -> {self.final.path}, applied: {steps}{fid})"

    def moved_to(self, path: str | Path) -> "RecipeResult":
        """The same result with the final model at `path` (a copy of the same bytes)."""
        from dataclasses import replace

        return replace(self, final=replace(self.final, path=Path(path)))

    def to_dict(self) -> dict[str, Any]:
        return {"source": {"path": str(self.source.path), "sha256": self.source.sha256},
                "final": {"path": str(self.final.path), "sha256": self.final.sha256},
                "steps": [s.to_dict() for s in self.steps],
                "fidelity": None if self.fidelity is None else self.fidelity.to_dict()}


def _jsonable(x: Any) -> Any:
    import numpy as np

    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


def fidelity_over(parent: Path, child: Path, batches: Sequence[Mapping[str, Any]]) -> Fidelity:
    """Worst-case fidelity of `child` against `parent` over input batches, on ORT."""
    from ..fidelity import compare, run_ort, worst

    return worst([compare(run_ort(parent, b), run_ort(child, b)) for b in batches])


def _subnormal_caveat(path: Path, proto, feeds) -> str | None:
    """A note when the source model's outputs are entirely subnormal (an untrained deep net whose
    activations decayed): compared as zeros (fidelity.py), so the steps' figures say nothing."""
    from ..fidelity import run_ort, subnormal_outputs

    found = subnormal_outputs([o.name for o in proto.graph.output], run_ort(path, feeds))
    if not found:
        return None
    return (f"output(s) {', '.join(repr(n) for n in found[:3])} of the source model are entirely "
            "subnormal (below fp32's smallest normal): compared as zeros, so the fidelity "
            "figures do not judge them")


def _check(model, where: str) -> None:
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise VerificationError(f"{where} fails onnx.checker: {str(e).splitlines()[0]}") from None


def _same_graph(a, b) -> bool:
    """The same computation: nodes, weights, inputs and outputs equal (value_info, the shape
    annotations onnx-ir writes for every typed value, aside)."""
    return all(list(getattr(a, f)) == list(getattr(b, f))
               for f in ("node", "initializer", "sparse_initializer", "input", "output"))


def run_recipe(model_ref: ModelRef, steps: Sequence[RecipeStep], ctx: StepContext, *,
               tolerances: Mapping[str, Tolerance] | None = None) -> RecipeResult:
    """Apply `steps` in order; intermediates go to ctx.workdir as NN-step.onnx.

    The model is converted to onnx-ir once and handed from pass to pass in memory; each applied
    step's output is serialized once, to be checked, written and verified. A skipped step leaves
    the model as it was (`modified` is truthful, see `deploykit.rewrite.StepPass`)."""
    import onnx
    import onnx_ir as ir

    from ..fsutil import atomic_path
    from ..onnxio import load_onnx
    from ..fidelity import judge

    batches = [dict(ctx.feeds)]
    if not ctx.calibration_is_synthetic:
        batches += [dict(b) for b in ctx.calibration[:2]]
    Path(ctx.workdir).mkdir(parents=True, exist_ok=True)
    current, records = model_ref, []
    parent_proto = load_onnx(current.path)
    model = ir.from_proto(parent_proto)
    caveat = _subnormal_caveat(model_ref.path, parent_proto, batches[0])
    for i, rs in enumerate(steps, 1):
        t0 = time.perf_counter()
        step_pass = pass_class(rs.name)(rs.config, ctx)
        with quiet_library_warnings():
            result = step_pass(model)
        rep: StepReport = step_pass.report
        common = dict(index=i, name=rs.name, spec=rs.spec(), parent=current, notes=rep.notes,
                      details=rep.details, fidelity_kind=rep.fidelity_kind)
        skipped = None if result.modified else rep.skipped or "step left the model unchanged"
        out = ir.to_proto(result.model) if result.modified else None
        if out is not None and _same_graph(out.graph, parent_proto.graph):
            skipped = "step left the model unchanged"
        if skipped:
            records.append(StepRecord(output=None, skipped=skipped, fidelity=None,
                                      seconds=time.perf_counter() - t0, **common))
            continue
        where = f"step {i} '{rs.name}'"
        _check(out, where)
        out_path = Path(ctx.workdir) / f"{i:02d}-{rs.name}.onnx"
        with atomic_path(out_path) as tmp:
            onnx.save(out, str(tmp))
        child = ModelRef.from_path(out_path, parent_sha256=current.sha256, transform=rs.name,
                                   config=dataclasses.asdict(rs.config))
        fid = fidelity_over(current.path, child.path, batches)
        reason = judge(fid, rep.fidelity_kind, tolerances)
        if reason:
            raise StepVerificationError(f"{where} fails verification against its parent: "
                                        f"{reason} ({fid.summary()})", current.path, child.path)
        if caveat:
            common["notes"] = (*common["notes"], caveat)
        records.append(StepRecord(output=child, skipped=None, fidelity=fid,
                                  seconds=time.perf_counter() - t0, **common))
        current, parent_proto, model = child, out, result.model
    overall = fidelity_over(model_ref.path, current.path, batches) if current is not model_ref \
        else None
    return RecipeResult(model_ref, current, tuple(records), overall)
