"""Shared fixtures: the bundled demo model exported once per session, and a tiny MLP as ONNX."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnx_models import make_mlp

REPO = Path(__file__).resolve().parent.parent
TINYRESNET = REPO / "deploykit" / "examples" / "tinyresnet.py"


@pytest.fixture(scope="session")
def tinyresnet_export(tmp_path_factory):
    """ExportResult of deploykit/examples/tinyresnet.py:build with a dynamic batch dim."""
    from deploykit.export import export_model

    out = tmp_path_factory.mktemp("tinyresnet") / "tinyresnet.onnx"
    return export_model(f"{TINYRESNET}:build", out, dynamic_batch=True)


@pytest.fixture(scope="session")
def tinyresnet_onnx(tinyresnet_export) -> Path:
    """Path of the exported tinyresnet (input x[batch,3,176,176] -> output[batch,100])."""
    return Path(tinyresnet_export.model.path)


@pytest.fixture(scope="session")
def mlp_onnx(tmp_path_factory) -> Path:
    """A tiny MLP ONNX file (x[batch,16] -> y[batch,4]) built without any exporter."""
    return make_mlp(tmp_path_factory.mktemp("mlp") / "mlp.onnx")
