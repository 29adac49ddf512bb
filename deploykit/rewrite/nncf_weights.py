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

import onnx_ir as ir

from ..errors import InputError
from . import StepPass
from .nncf_int8 import nncf_skip, quiet_nncf

MODES = ("int8_asym", "int8_sym")


@dataclass(frozen=True)
class Config:
    mode: str = "int8_asym"  # asymmetric (a zero point per channel) or symmetric weights

    def __post_init__(self):
        if self.mode not in MODES:
            raise InputError(f"nncf-weights: mode must be one of {', '.join(MODES)}, "
                             f"got '{self.mode}'")


class NncfWeightsPass(StepPass, ir.passes.FunctionalPass):
    """int8 MatMul/Gemm weights by `nncf.compress_weights`. Functional: NNCF's ONNX backend
    takes an `onnx.ModelProto`, so the model is converted at this boundary and NNCF's output read
    back."""

    fidelity_kind = "int8"

    def call(self, model):
        skip = nncf_skip(model)
        if skip:
            return self.skip(model, skip)
        import nncf

        if not any(n.op_type in ("MatMul", "Gemm") and any(
                i is not None and i.is_initializer() for i in n.inputs[:2]) for n in model.graph):
            return self.skip(model, "no MatMul/Gemm with a constant weight to compress")
        work = ir.to_proto(model)  # a fresh proto: nncf edits its input in place
        with quiet_nncf("nncf-weights"):
            # Conv weights are left alone: OpenVINO's run-time activation quantization is for
            # MatMuls, and NNCF 3.4 writes their scales in a shape ORT's DequantizeLinear refuses
            qmodel = nncf.compress_weights(
                work, mode=nncf.CompressWeightsMode(self.cfg.mode),
                ignored_scope=nncf.IgnoredScope(types=["Conv", "ConvTranspose"], validate=False))
        n_dq = sum(n.op_type == "DequantizeLinear" for n in qmodel.graph.node)
        if n_dq == 0:
            return self.skip(model, "nncf compressed no weight in this model")
        return self.done(ir.from_proto(qmodel),
                         details={"mode": self.cfg.mode, "compressed_weights": n_dq})
