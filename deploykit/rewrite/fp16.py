"""fp16 conversion of weights and arithmetic (onnxruntime.transformers.float16), keeping fp32
inputs/outputs so callers do not change. It halves the bytes on disk everywhere, but only speeds
up targets with fp16 arithmetic (CUDA tensor cores); on a CPU without avx512_fp16 ORT computes
in fp32 behind casts and the model is usually slower, which the step says up front.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from . import StepContext, StepResult
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


def step(model, cfg: Config, ctx: StepContext) -> StepResult:
    import onnx_ir as ir
    from onnx_ir.passes.common import TopologicalSortPass
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    already = quantized_ops(model)
    if already:
        return StepResult(None, skipped=f"model is quantized (has {', '.join(already)}); "
                                        "convert to fp16 before quantizing, not after")
    f32 = 1
    if not any(i.data_type == f32 for i in model.graph.initializer):
        return StepResult(None, skipped="no fp32 initializer to convert (already fp16 or int8?)")
    out = convert_float_to_float16(
        model, keep_io_types=cfg.keep_io_types,
        op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(cfg.op_block_list)))
    # the converter appends its input Casts at the end of the node list: restore the order
    out = ir.serde.serialize_model(TopologicalSortPass()(ir.serde.deserialize_model(out)).model)
    notes = (CPU_WARNING.format(target=ctx.target),) if "cuda" not in ctx.target else ()
    return StepResult(out, notes=notes, fidelity_kind="fp16")
