"""Dynamic int8 quantization (weights int8 offline, activations quantized at run time) through
onnxruntime.quantization: the right tool for MatMul-heavy models (transformers, MLPs), where ORT
runs MatMulInteger at full int8 speed. For Conv it produces ConvInteger, which ORT's CPU kernels
do not optimise (Olive's fallback made ResNet-50 3.75x slower): Conv is left out unless
`include_conv` is set, and then a warning says to use quantize-static instead.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import DeployKitError, InputError
from . import StepContext, StepResult
from .quantize_static import QTYPES, preprocess, quantized_ops

CONV_WARNING = ("WARNING: dynamic quantization of Conv gives ConvInteger, which is unoptimised "
                "on ORT CPU and usually slower than fp32; use quantize-static for Conv")


@dataclass(frozen=True)
class Config:
    per_channel: bool = True  # MiniLM embeddings: cosine 0.9935 per-channel vs 0.966 per-tensor
    weight_type: str = "int8"
    reduce_range: bool = False
    include_conv: bool = False
    preprocess: bool = True  # onnxruntime's quant_pre_process (shape inference + optimisation)
    exclude: tuple[str, ...] = ()

    def __post_init__(self):
        if self.weight_type not in QTYPES:
            raise InputError(f"quantize-dynamic: weight_type must be uint8 or int8, "
                             f"got '{self.weight_type}'")


def step(model, cfg: Config, ctx: StepContext) -> StepResult:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    already = quantized_ops(model)
    if already:
        return StepResult(None, skipped=f"already quantized (has {', '.join(already)})")
    ops = ["MatMul", "Gemm"] + (["Conv"] if cfg.include_conv else [])
    present = {n.op_type for n in model.graph.node}
    if not present & set(ops):
        hint = "; Conv models need quantize-static" if "Conv" in present else ""
        return StepResult(None, skipped=f"no {'/'.join(ops)} node to quantize{hint}")
    notes = [CONV_WARNING] if cfg.include_conv and "Conv" in present else []
    with tempfile.TemporaryDirectory(prefix="dk-qdyn-", dir=ctx.workdir) as tmp:
        src, out = Path(tmp) / "float.onnx", Path(tmp) / "q.onnx"
        onnx.save(model, str(src))
        if cfg.preprocess:
            failure = preprocess(src, Path(tmp) / "pre.onnx")
            if failure:
                notes.append(failure)
            else:
                src = Path(tmp) / "pre.onnx"
        try:
            quantize_dynamic(str(src), str(out), op_types_to_quantize=ops,
                             per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
                             weight_type=getattr(QuantType, QTYPES[cfg.weight_type]),
                             nodes_to_exclude=list(cfg.exclude) or None)
        except (ValueError, RuntimeError, KeyError) as e:
            raise DeployKitError(f"quantize-dynamic failed: {str(e).splitlines()[0]}") from None
        qmodel = onnx.load(str(out))
    if not quantized_ops(qmodel):
        return StepResult(None, skipped="onnxruntime quantized no node (weights not constant?)")
    counts = {op: sum(n.op_type == op for n in qmodel.graph.node)
              for op in ("MatMulInteger", "ConvInteger", "DynamicQuantizeLinear")}
    return StepResult(qmodel, notes=tuple(notes), fidelity_kind="int8",
                      details={"per_channel": cfg.per_channel, "weight_type": cfg.weight_type,
                               "ops": {k: v for k, v in counts.items() if v}})
