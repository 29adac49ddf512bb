"""int8 weight compression with NNCF (`nncf.compress_weights`): data-free, for the OpenVINO CPU
targets and MatMul/Gemm-heavy models (transformers, MLPs).

Each MatMul/Gemm weight (and the embedding table) is stored as int8 with a per-output-channel
scale behind a DequantizeLinear; activations stay fp32 in the file. OpenVINO's CPU plugin runs
such MatMuls as int8 kernels, quantizing the activations at run time in groups of 32 (its
DYNAMIC_QUANTIZATION_GROUP_SIZE): measured on all-MiniLM-L6-v2 here, 10.3 ms with that
quantization vs 18.5 ms with it switched off, and cosine 0.9993 of the embeddings vs fp32 where
ORT's per-channel quantize_dynamic gives 0.9921 — finer activation groups than one scale per
tensor. On ORT the same file runs the fp32 MatMuls on dequantized weights (smaller, not faster),
which is why the search times it on every CPU runtime and checks its fidelity on the runtime it
runs on. No calibration data is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from . import StepContext, StepResult
from .nncf_int8 import nncf_skip, quiet_nncf

MODES = ("int8_asym", "int8_sym")


@dataclass(frozen=True)
class Config:
    mode: str = "int8_asym"  # asymmetric (a zero point per channel) or symmetric weights

    def __post_init__(self):
        if self.mode not in MODES:
            raise InputError(f"nncf-weights: mode must be one of {', '.join(MODES)}, "
                             f"got '{self.mode}'")


def step(model, cfg: Config, ctx: StepContext) -> StepResult:
    skip = nncf_skip(model)
    if skip:
        return skip
    import nncf
    import onnx

    inits = {t.name for t in model.graph.initializer}
    if not any(n.op_type in ("MatMul", "Gemm") and any(i in inits for i in n.input[:2])
               for n in model.graph.node):
        return StepResult(None, skipped="no MatMul/Gemm with a constant weight to compress")
    work = onnx.ModelProto()
    work.CopyFrom(model)  # nncf edits its input in place
    with quiet_nncf("nncf-weights"):
        # Conv weights are left alone: OpenVINO's run-time activation quantization is for
        # MatMuls, and NNCF 3.4 writes their scales in a shape ORT's DequantizeLinear refuses
        qmodel = nncf.compress_weights(
            work, mode=nncf.CompressWeightsMode(cfg.mode),
            ignored_scope=nncf.IgnoredScope(types=["Conv", "ConvTranspose"], validate=False))
    n_dq = sum(n.op_type == "DequantizeLinear" for n in qmodel.graph.node)
    if n_dq == 0:
        return StepResult(None, skipped="nncf compressed no weight in this model")
    return StepResult(qmodel, details={"mode": cfg.mode, "compressed_weights": n_dq},
                      fidelity_kind="int8")
