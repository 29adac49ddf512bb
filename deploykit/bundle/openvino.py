"""OpenVINO bundle contents: the model as OpenVINO IR (model.xml + model.bin, written by
OpenVINO's own `save_model`, weights kept in f32) and the CPU plugin properties the target
compiles it with (precision, threads, one stream, latency hint), so the device compiles exactly
what deploykit compiled here. The IR is the same for every architecture: one bundle serves an x86
and an aarch64 board alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..backends.base import Target
from ..errors import TargetError, first_line


def build(model_path: Path, target: Target, out: Path) -> dict[str, Any]:
    """Write model.xml and model.bin into `out`; return the manifest's "openvino" section."""
    try:
        import openvino as ov
    except ImportError:
        raise TargetError("openvino not installed: pip install 'deploykit[openvino]'") from None
    try:
        model = ov.Core().read_model(str(model_path))
        ov.save_model(model, str(out / "model.xml"), compress_to_fp16=False)
    except RuntimeError as e:
        raise TargetError(f"OpenVINO cannot convert {model_path.name}: {first_line(e)}") from None
    props = target.properties() if hasattr(target, "properties") else {}
    return {"openvino_version": ov.get_version(), "properties": dict(props),
            "files": {"xml": "model.xml", "weights": "model.bin"},
            "note": "IR written by openvino.save_model (f32 weights); compiled on the device "
                    "by its CPU plugin with these properties"}
