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
import importlib
import time
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..core import ModelRef, Result
from ..errors import InputError, StepVerificationError, VerificationError
from . import StepContext, StepReport, quiet_library_warnings
from ..fidelity import Fidelity, Tolerance

# The recipe steps, each in deploykit/rewrite/<name with '-' as '_'>.py defining `Config` and
# the pass `<CamelName>Pass` (step name = file name = class name: prune-channels ->
# prune_channels.py, PruneChannelsPass).
STEPS: dict[str, str] = {name: f"deploykit.rewrite.{name.replace('-', '_')}" for name in (
    "cleanup", "fold-bn", "prune-unstructured", "prune-channels", "prune-ffn", "prune-heads",
    "remove-zero-channels", "lowrank", "tucker", "compact", "quantize-static", "quantize-dynamic",
    "nncf-int8", "nncf-weights", "fp16")}
LIST_SEP = "|"
CALIBRATED_STEPS = ("quantize-static", "nncf-int8")  # steps that read calibration batches
# Steps that approximate their parent by design: when such a step reports the default "fp32"
# fidelity kind, it is judged "lossy" (measured and reported; fails only on broken output).
@dataclass(frozen=True)
class RecipeStep:
    name: str
    config: Any  # the step module's Config instance

    def spec(self) -> str:
        """Back to recipe syntax, non-default fields only."""
        fields = []
        for f in dataclasses.fields(self.config):
            v = getattr(self.config, f.name)
            if v != f.default:
                if isinstance(v, tuple):
                    v = LIST_SEP.join(map(str, v))
                elif isinstance(v, bool):
                    v = str(v).lower()
                fields.append(f"{f.name}={v}")
        return self.name + (":" + ",".join(fields) if fields else "")


def step_module(name: str) -> types.ModuleType:
    if name not in STEPS:
        raise InputError(f"unknown recipe step '{name}' (known: {', '.join(STEPS)})")
    try:
        return importlib.import_module(STEPS[name])
    except ModuleNotFoundError as e:
        if e.name and STEPS[name].startswith(e.name):
            raise InputError(f"recipe step '{name}' is not available in this installation "
                             f"({STEPS[name]} is missing)") from None
        raise InputError(f"recipe step '{name}' needs a package that is not installed: "
                         f"{e.name}") from None


def pass_name(name: str) -> str:
    """The pass class a step's module defines: 'prune-channels' -> 'PruneChannelsPass'."""
    return "".join(part.capitalize() for part in name.split("-")) + "Pass"


def pass_class(name: str) -> type:
    """The onnx-ir pass class of step `name`."""
    cls = getattr(step_module(name), pass_name(name), None)
    if cls is None:
        raise InputError(f"recipe step '{name}' has no pass {pass_name(name)} in {STEPS[name]}")
    return cls


def _convert(raw: Any, typ: Any, where: str) -> Any:
    """A CLI string (or TOML value) as the Config field's declared type."""
    origin, args = typing.get_origin(typ), typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "")):
            if type(None) in args:
                return None
        last: InputError | None = None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(raw, a, where)
            except InputError as e:
                last = e
        raise last or InputError(f"{where}: bad value {raw!r}")
    if origin is typing.Literal:
        if raw not in args:
            raise InputError(f"{where}: must be one of {', '.join(map(str, args))}, got {raw!r}")
        return raw
    if origin is tuple:
        items = raw.split(LIST_SEP) if isinstance(raw, str) else list(raw)
        items = [i.strip() if isinstance(i, str) else i for i in items if i != ""]
        return tuple(_convert(i, args[0], where) for i in items)
    if typ is bool:
        if isinstance(raw, bool):
            return raw
        s = str(raw).strip().lower()
        if s in ("true", "1", "yes", "on"):
            return True
        if s in ("false", "0", "no", "off"):
            return False
        raise InputError(f"{where}: expected true/false, got {raw!r}")
    if typ in (int, float):
        if isinstance(raw, bool):
            raise InputError(f"{where}: expected {typ.__name__}, got {raw!r}")
        try:
            if typ is int and isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            return typ(raw)
        except (TypeError, ValueError):
            raise InputError(f"{where}: expected {typ.__name__}, got {raw!r}") from None
    if typ is str:
        return str(raw)
    raise InputError(f"{where}: unsupported field type {typ!r}")


def make_step(name: str, values: Mapping[str, Any]) -> RecipeStep:
    """RecipeStep with `values` parsed into the step's Config field types."""
    mod = step_module(name)
    hints = typing.get_type_hints(mod.Config)
    known = [f.name for f in dataclasses.fields(mod.Config)]
    kwargs = {}
    for key, raw in values.items():
        if key not in known:
            hint = "; separate steps with ';'" if ":" in key else ""
            raise InputError(f"unknown field '{key}' for step '{name}' "
                             f"(fields: {', '.join(known) or 'none'}){hint}")
        kwargs[key] = _convert(raw, hints[key], f"{name}.{key}")
    try:
        return RecipeStep(name, mod.Config(**kwargs))
    except (TypeError, ValueError) as e:
        raise InputError(f"bad configuration for step '{name}': {e}") from None


def parse_recipe(text: str) -> list[RecipeStep]:
    """Steps from recipe syntax, or from a TOML file when `text` names one."""
    if text.strip().endswith(".toml"):
        return parse_recipe_file(text.strip())
    steps = [make_step(name, values) for name, values in split_recipe(text)]
    if not steps:
        raise InputError("empty recipe: give steps like 'fold-bn; quantize-static:per_channel=true'")
    return steps


def split_recipe(text: str) -> list[tuple[str, dict[str, str]]]:
    """Recipe syntax 'name:field=value,...; name2' -> [(name, {field: raw text})], the names
    and fields not yet checked (the ONNX steps here and `deploykit distill`'s torch steps share
    the syntax)."""
    steps = []
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        name, _, rest = part.partition(":")
        if "," in name or "=" in name:
            raise InputError(f"bad recipe step {name.strip()!r}: write steps as "
                             "name:field=value,... and separate steps with ';'")
        values = {}
        for item in filter(None, (s.strip() for s in rest.split(","))):
            key, eq, val = item.partition("=")
            if not eq or not key.strip():
                raise InputError(f"bad recipe field {item!r} in step '{name.strip()}': "
                                 "expected field=value")
            values[key.strip()] = val.strip()
        steps.append((name.strip(), values))
    return steps


def parse_recipe_file(path: str | Path) -> list[RecipeStep]:
    from ..fsutil import tomllib

    p = Path(path)
    if not p.exists():
        raise InputError(f"recipe file not found: {p}")
    try:
        data = tomllib.loads(p.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"cannot read recipe file {p}: {e}") from None
    tables = data.get("step")
    if not isinstance(tables, list) or not tables:
        raise InputError(f"recipe file {p} has no [[step]] tables")
    steps = []
    for t in tables:
        if "name" not in t:
            raise InputError(f"recipe file {p}: a [[step]] has no name")
        values = {k: v for k, v in t.items() if k != "name"}
        steps.append(make_step(t["name"], values))
    return steps


def opset_need(steps: Sequence[RecipeStep]):
    """The newest default-domain opset any step needs (a step module's optional
    `min_opset(cfg) -> intake.OpsetNeed | None`), for intake to upgrade to before step 1."""
    from . import strictest_need

    return strictest_need([getattr(step_module(s.name), "min_opset", lambda cfg: None)(s.config)
                      for s in steps])


def describe_steps() -> list[tuple[str, str]]:
    """(name, 'field=default, ...') for every step whose module is installed."""
    rows = []
    for name in STEPS:
        try:
            mod = step_module(name)
        except InputError as e:
            rows.append((name, f"(unavailable: {e})"))
            continue
        fields = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(mod.Config))
        rows.append((name, fields))
    return rows


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
        records.append(StepRecord(output=child, skipped=None, fidelity=fid,
                                  seconds=time.perf_counter() - t0, **common))
        current, parent_proto, model = child, out, result.model
    overall = fidelity_over(model_ref.path, current.path, batches) if current is not model_ref \
        else None
    return RecipeResult(model_ref, current, tuple(records), overall)
