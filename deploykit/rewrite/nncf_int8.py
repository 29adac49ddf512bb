"""int8 post-training quantization with NNCF, for the OpenVINO targets.

NNCF's ONNX backend returns an ONNX model with QuantizeLinear/DequantizeLinear pairs placed the
way OpenVINO's CPU plugin fuses them into int8 kernels (and ORT can run it too). On this machine
it gave ResNet-50 3.56x and a transformer encoder ~3.4x over ORT fp32 on ov-cpu (FACTS.md), ahead
of ORT's best hand recipes. Transformer-like graphs (MatMul + Softmax) get NNCF's transformer mode
(SmoothQuant, no quantizers on the attention-score path), which keeps their accuracy.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass

import onnx_ir as ir

from .calibration import SYNTHETIC_WARNING
from ..errors import DeployKitError, InputError
from . import StepPass
from .quantize_static import name_nodes, quantized_ops

PRESETS = ("auto", "performance", "mixed")
MODEL_TYPES = ("auto", "transformer", "default")
INSTALL_HINT = "nncf not installed: pip install 'deploykit[openvino]'"


@dataclass(frozen=True)
class Config:
    # performance: symmetric int8 activations and weights (fastest); mixed: asymmetric
    # activations, for inputs far from zero-centred (GELU, LayerNorm outputs); auto: NNCF's
    # choice, mixed for transformers and performance otherwise
    preset: str = "auto"
    subset_size: int = 300  # calibration batches used at most
    model_type: str = "auto"  # auto: transformer when the graph has MatMul and Softmax
    fast_bias_correction: bool = True
    exclude: tuple[str, ...] = ()  # node names kept in fp32 (NNCF's IgnoredScope; debug --fix)

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise InputError(f"nncf-int8: preset must be one of {', '.join(PRESETS)}, "
                             f"got '{self.preset}'")
        if self.model_type not in MODEL_TYPES:
            raise InputError(f"nncf-int8: model_type must be one of {', '.join(MODEL_TYPES)}, "
                             f"got '{self.model_type}'")
        if self.subset_size < 1:
            raise InputError(f"nncf-int8: subset_size must be >= 1, got {self.subset_size}")


def is_transformer_like(model) -> bool:
    """Attention shows up as MatMul feeding Softmax; that is what transformer mode is for."""
    ops = {n.op_type for n in model.graph}
    return "Softmax" in ops and "MatMul" in ops


@contextlib.contextmanager
def quiet_nncf(step_name: str):
    """NNCF muted (its log below ERROR, its progress bars on stdout), and NNCF's own exceptions
    as a one-line DeployKitError naming the step (shared by the NNCF steps)."""
    import nncf
    import nncf.errors as nncf_errors

    errors = tuple(v for v in vars(nncf_errors).values()
                   if isinstance(v, type) and v.__module__ == nncf_errors.__name__)
    level = logging.getLogger("nncf").level
    nncf.set_log_level(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    except errors as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DeployKitError(f"{step_name} failed: {first}") from None
    finally:
        nncf.set_log_level(level)


def nncf_skip(model) -> str | None:
    """Why no NNCF step applies to this onnx-ir model, or None: NNCF not installed, or the
    model already quantized (the skips every NNCF step shares)."""
    import importlib

    try:
        importlib.import_module("nncf")
    except ImportError:
        return INSTALL_HINT
    already = quantized_ops(model)
    if already:
        return f"already quantized (has {', '.join(already)})"
    return None


class NncfInt8Pass(StepPass, ir.passes.FunctionalPass):
    """int8 QDQ by `nncf.quantize`. Functional: NNCF's ONNX backend takes an
    `onnx.ModelProto`, so the model is converted at this boundary and NNCF's output read back."""

    fidelity_kind = "int8"

    def call(self, model):
        skip = nncf_skip(model)
        if skip:
            return self.skip(model, skip)
        import nncf

        cfg, ctx = self.cfg, self.ctx
        if not any(n.op_type in ("Conv", "MatMul", "Gemm", "ConvTranspose") for n in model.graph):
            return self.skip(model, "no Conv/MatMul/Gemm node to quantize")

        batches = [dict(b) for b in ctx.calibration] or [dict(ctx.feeds)]
        transformer = cfg.model_type == "transformer" or (
            cfg.model_type == "auto" and is_transformer_like(model))
        subset = min(cfg.subset_size, len(batches))
        preset = cfg.preset if cfg.preset != "auto" else "mixed" if transformer else "performance"
        work = ir.to_proto(model)  # a fresh proto: nncf's preprocessing edits its input in place
        name_nodes(work)  # so that every node can be excluded and reported by name
        with quiet_nncf("nncf-int8"):
            qmodel = nncf.quantize(
                work, nncf.Dataset(batches), subset_size=subset,
                preset=nncf.QuantizationPreset(preset), target_device=nncf.TargetDevice.CPU,
                model_type=nncf.ModelType.TRANSFORMER if transformer else None,
                fast_bias_correction=cfg.fast_bias_correction,
                ignored_scope=nncf.IgnoredScope(names=list(cfg.exclude)) if cfg.exclude else None)
        n_q = sum(n.op_type == "QuantizeLinear" for n in qmodel.graph.node)
        if n_q == 0:
            return self.skip(model, "nncf placed no quantizer in this model")
        notes = [f"nncf-int8: {SYNTHETIC_WARNING}"] if ctx.calibration_is_synthetic else []
        details = {"preset": preset, "model_type": "transformer" if transformer else "default",
                   "calibration_batches": subset, "quantize_linear_nodes": n_q,
                   "fast_bias_correction": cfg.fast_bias_correction,
                   "excluded_nodes": list(cfg.exclude)}
        return self.done(ir.from_proto(qmodel), notes=notes, details=details)
