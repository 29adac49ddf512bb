"""ORT bundle contents, made by onnxruntime's own converter: the offline-optimized .onnx, its
ORT-format .ort, and the required-operators config for an ORT minimal (mobile) build.

The graph optimization level is the target's and is baked in: the .ort is saved after those
optimizations, so a minimal build (which cannot optimize) runs exactly that graph.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..backends.base import Target
from ..errors import TargetError
from ..onnxio import load_onnx

PLATFORMS = ("amd64", "arm")


def host_platform() -> str:
    """The converter's platform name for this machine (NCHWc layouts only on amd64)."""
    return "arm" if platform.machine().lower() in ("aarch64", "arm64") else "amd64"


def optimization_level(target: Target) -> str:
    return str(target.config.get("options", {}).get("graph_optimization_level", "all"))


def build(model_path: Path, target: Target, out: Path, ort_platform: str) -> dict[str, Any]:
    """Write model.optimized.onnx, model.ort and the operator config into `out`; return the
    manifest's "ort" section with the file roles."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.tools.convert_onnx_models_to_ort import (OptimizationStyle,
                                                               convert_onnx_models_to_ort)

    level = optimization_level(target)
    if ort_platform not in PLATFORMS:
        raise TargetError(f"unknown ORT platform {ort_platform!r} (one of {', '.join(PLATFORMS)})")
    with tempfile.TemporaryDirectory(prefix="deploykit-ort-") as tmp:
        src = Path(tmp) / "in" / "model.onnx"
        src.parent.mkdir()
        onnx.save(load_onnx(model_path), str(src))  # external data, if any, inlined
        dst = Path(tmp) / "out"
        log = io.StringIO()
        # The converter reads its level from this variable (its documented knob); restored below.
        old = os.environ.get("ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL")
        os.environ["ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"] = level
        logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)  # "Created config"
        ort.set_default_logger_severity(3)  # its NCHWc warning: the platform is recorded instead
        try:
            with contextlib.redirect_stdout(log):
                convert_onnx_models_to_ort(src, output_dir=dst,
                                           optimization_styles=[OptimizationStyle.Fixed],
                                           target_platform=ort_platform,
                                           save_optimized_onnx_model=True,
                                           enable_type_reduction=True)
        except Exception as e:  # the converter re-raises ORT's own exception types
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise TargetError(f"onnxruntime's ORT-format converter failed on {model_path}: "
                              f"{first}") from None
        finally:
            if old is None:
                os.environ.pop("ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL", None)
            else:
                os.environ["ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"] = old
        suffix = "" if level == "all" else f".{level}"
        made = {"model.ort": dst / f"model{suffix}.ort",
                "model.optimized.onnx": dst / f"model{suffix}.optimized.onnx",
                "required_operators_and_types.config":
                    dst / f"model.required_operators_and_types{suffix}.config"}
        for name, p in made.items():
            if not p.is_file():
                raise TargetError(f"onnxruntime's converter did not write {p.name} "
                                  f"(log: {' | '.join(log.getvalue().split(chr(10))[-3:])})")
            shutil.copyfile(p, out / name)
        config = out / "required_operators_and_types.config"  # names our temporary folder
        config.write_text(config.read_text().replace(str(made["model.ort"]), "model.ort"))
    return {"graph_optimization_level": level, "platform": ort_platform,
            "onnxruntime_version": ort.__version__,
            "files": {"runtime_model": "model.ort", "optimized_onnx": "model.optimized.onnx",
                      "operators_config": "required_operators_and_types.config"},
            "minimal_build": ("./build.sh --minimal_build --include_ops_by_config "
                              "required_operators_and_types.config --enable_reduced_operator_type_support"),
            "note": "model.ort was saved after the optimizations of this level; an ORT minimal "
                    "build runs it as is"}
