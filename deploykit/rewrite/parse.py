"""Recipe text and files -> validated steps: the step registry, the syntax and each step's
typed `Config` (the runner, recipe.py, applies them).

Syntax (CLI): steps separated by ';', each `name` or `name:field=value,field=value`; list values
are separated by '|':
"""

from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import InputError

# The recipe steps, each in deploykit/rewrite/<name with '-' as '_'>.py defining `Config` and
# the pass `<CamelName>Pass` (step name = file name = class name: prune-channels ->
# prune_channels.py, PruneChannelsPass).
STEPS: dict[str, str] = {name: f"deploykit.rewrite.{name.replace('-', '_')}" for name in (
    "cleanup", "fold-bn", "prune-unstructured", "prune-channels", "prune-ffn", "prune-heads",
    "prune-hidden",
    "remove-zero-channels", "lowrank", "tucker", "compact", "quantize-static", "quantize-dynamic",
    "nncf-int8", "nncf-weights", "fp16")}
LIST_SEP = "|"
CALIBRATED_STEPS = ("quantize-static", "nncf-int8")  # steps that read calibration batches


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
