"""The explicit target registry, built from the TOML descriptions in `targets/`.

A target file names its backend and that backend's options:

    name = "ort-cpu"
    backend = "ort"
    description = "ONNX Runtime, CPU execution provider"
    threads = 2
    [options]
    providers = ["CPUExecutionProvider"]
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from .base import Target
from ..errors import TargetError
from ..fsutil import tomllib

# backend name -> "module:Class"; imported only when a target of that backend is used.
BACKENDS = {
    "ort": "deploykit.backends.ort:OrtTarget",
    "tvm": "deploykit.backends.tvm.local:TvmTarget",
    "openvino": "deploykit.backends.openvino:OpenVinoTarget",
}


def targets_dirs() -> list[Path]:
    """Where target TOMLs are read from: $DEPLOYKIT_TARGETS (os.pathsep list), then the repo's."""
    dirs = [Path(p) for p in os.environ.get("DEPLOYKIT_TARGETS", "").split(os.pathsep) if p]
    dirs.append(Path(__file__).resolve().parents[2] / "targets")
    return dirs


def _read(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise TargetError(f"cannot read target file {path}: {e}") from None
    for key in ("name", "backend"):
        if key not in data:
            raise TargetError(f"target file {path} has no '{key}'")
    if data["backend"] not in BACKENDS:
        raise TargetError(f"target file {path}: unknown backend '{data['backend']}' "
                          f"(known: {', '.join(BACKENDS)})")
    data["_file"] = str(path)
    return data


def load_all() -> dict[str, dict[str, Any]]:
    """name -> target description; earlier directories win."""
    found: dict[str, dict[str, Any]] = {}
    for d in targets_dirs():
        if d.is_dir():
            for f in sorted(d.glob("*.toml")):
                data = _read(f)
                found.setdefault(data["name"], data)
    return found


def get(name_or_path: str, *, require_available: bool = True, **overrides: Any) -> Target:
    """A Target by registry name or by path to a TOML file; `overrides` replace config keys
    (e.g. threads=4)."""
    if name_or_path.endswith(".toml"):
        p = Path(name_or_path)
        if not p.exists():
            raise TargetError(f"target file not found: {p}")
        desc = _read(p)
    else:
        all_targets = load_all()
        if name_or_path not in all_targets:
            raise TargetError(f"unknown target '{name_or_path}' "
                              f"(known: {', '.join(sorted(all_targets))})")
        desc = all_targets[name_or_path]
    config = {k: v for k, v in desc.items() if not k.startswith("_")}
    config.update({k: v for k, v in overrides.items() if v is not None})
    if not isinstance(config.get("threads", 1), int) or config.get("threads", 1) < 1:
        raise TargetError(f"target '{desc['name']}': threads must be a positive integer, "
                          f"got {config.get('threads')!r}")
    module, cls = BACKENDS[desc["backend"]].split(":")
    target = getattr(importlib.import_module(module), cls)(desc["name"], config)
    if require_available:
        reason = target.unavailable_reason()
        if reason:
            raise TargetError(f"target '{target.name}' is unavailable here: {reason}")
    return target
