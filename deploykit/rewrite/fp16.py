"""fp16 conversion of weights and arithmetic (onnxruntime.transformers.float16), keeping fp32
inputs/outputs so callers do not change. It halves the bytes on disk everywhere, but only speeds
up targets with fp16 arithmetic (CUDA tensor cores); on a CPU without avx512_fp16 ORT computes
in fp32 behind casts and the model is usually slower, which the step says up front.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from ..errors import InputError
from . import StepPass
from .quantize_static import quantized_ops

CPU_WARNING = ("WARNING: target {target} has no fast fp16 arithmetic; ORT falls back to casts "
               "around fp32 kernels, so expect a smaller file but a slower model")


@dataclass(frozen=True)
class Config:
    keep_io_types: bool = True
    op_block_list: tuple[str, ...] = ()  # op types kept in fp32 (added to ORT's default list)

    def __post_init__(self):
        if any(not op for op in self.op_block_list):
            raise InputError("fp16: op_block_list contains an empty op type")


class Fp16Pass(StepPass, ir.passes.FunctionalPass):
    """fp16 weights and arithmetic. Functional: onnxruntime's converter takes an
    `onnx.ModelProto`, so the model is converted at this boundary and the converter's output
    read back."""

    fidelity_kind = "fp16"

    def call(self, model):
        from onnx_ir.passes.common import TopologicalSortPass
        from onnxruntime.transformers.float16 import (DEFAULT_OP_BLOCK_LIST,
                                                      convert_float_to_float16)

        already = quantized_ops(model)
        if already:
            return self.skip(model, f"model is quantized (has {', '.join(already)}); "
                                    "convert to fp16 before quantizing, not after")
        if not any(v.const_value is not None and v.const_value.dtype == ir.DataType.FLOAT
                   for v in model.graph.initializers.values()):
            return self.skip(model, "no fp32 initializer to convert (already fp16 or int8?)")
        out = convert_float_to_float16(
            ir.to_proto(model), keep_io_types=self.cfg.keep_io_types,
            op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(self.cfg.op_block_list)))
        # the converter appends its input Casts at the end of the node list: restore the order
        converted = TopologicalSortPass()(ir.from_proto(out)).model
        target = self.ctx.target
        notes = (CPU_WARNING.format(target=target),) if "cuda" not in target else ()
        return self.done(converted, notes=notes)
