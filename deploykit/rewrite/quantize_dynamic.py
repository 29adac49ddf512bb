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

import onnx_ir as ir

from ..errors import DeployKitError, InputError
from . import StepPass
from .quantize_static import QTYPES, keep_sensitive_fp32, name_nodes, preprocess, quantized_ops

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
    target_cosine: float = 0.0  # > 0: keep the most sensitive MatMul/Gemm in fp32 until reached
    max_excluded: int = 16

    def __post_init__(self):
        if self.weight_type not in QTYPES:
            raise InputError(f"quantize-dynamic: weight_type must be uint8 or int8, "
                             f"got '{self.weight_type}'")
        if not 0.0 <= self.target_cosine < 1.0:
            raise InputError(f"quantize-dynamic: target_cosine must be in [0, 1), "
                             f"got {self.target_cosine}")
        if self.max_excluded < 0:
            raise InputError("quantize-dynamic: max_excluded must be >= 0")


class QuantizeDynamicPass(StepPass, ir.passes.FunctionalPass):
    """int8 weights, run-time quantized activations, by onnxruntime.quantization. Functional:
    ORT's quantizer reads and writes model files, so the model is converted to an
    `onnx.ModelProto` at this boundary and the quantized file read back."""

    fidelity_kind = "int8"

    def call(self, model):
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.onnx_model import ONNXModel

        cfg, ctx = self.cfg, self.ctx
        already = quantized_ops(model)
        if already:
            return self.skip(model, f"already quantized (has {', '.join(already)})")
        ops = ["MatMul", "Gemm"] + (["Conv"] if cfg.include_conv else [])
        present = {n.op_type for n in model.graph}
        if not present & set(ops):
            hint = "; Conv models need quantize-static" if "Conv" in present else ""
            return self.skip(model, f"no {'/'.join(ops)} node to quantize{hint}")
        notes = [CONV_WARNING] if cfg.include_conv and "Conv" in present else []
        with tempfile.TemporaryDirectory(prefix="dk-qdyn-", dir=ctx.workdir) as tmp:
            src = Path(tmp) / "float.onnx"
            onnx.save(ir.to_proto(model), str(src))
            if cfg.preprocess:
                failure = preprocess(src, Path(tmp) / "pre.onnx")
                if failure:
                    notes.append(failure)
                else:
                    src = Path(tmp) / "pre.onnx"
            fmodel = onnx.load(str(src))
            # the dynamic quantizer first turns Gemm into MatMul (+ Add) under new names; do it
            # here, so that exclusions and the sensitivity probe name the nodes it will quantize
            gemms = {n.name for n in fmodel.graph.node if n.op_type == "Gemm" and n.name}
            ONNXModel(fmodel).replace_gemm_with_matmul()  # Gemm 'g' -> MatMul 'g_MatMul' (+ Add)
            name_nodes(fmodel)
            onnx.save(fmodel, str(src))

            def quantize(exclude, only: str | None = None) -> Path:
                dst = Path(tmp) / ("only.onnx" if only else f"q{len(exclude)}.onnx")
                try:
                    quantize_dynamic(str(src), str(dst), op_types_to_quantize=ops,
                                     per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
                                     weight_type=getattr(QuantType, QTYPES[cfg.weight_type]),
                                     nodes_to_quantize=[only] if only else None,
                                     nodes_to_exclude=list(exclude) or None)
                except (ValueError, RuntimeError, KeyError) as e:
                    raise DeployKitError(f"quantize-dynamic failed: {str(e).splitlines()[0]}") \
                        from None
                return dst

            exclude = [f"{e}_MatMul" if e in gemms else e for e in cfg.exclude]
            q_path = quantize(exclude)
            details: dict = {"per_channel": cfg.per_channel, "weight_type": cfg.weight_type}
            if cfg.target_cosine > 0:
                # the inputs the recipe runner verifies on, and every calibration batch
                batches = [dict(ctx.feeds)] + list(ctx.calibration)
                q_path, exclude, note = keep_sensitive_fp32(
                    src, q_path, quantize, [n.name for n in fmodel.graph.node if n.op_type in ops],
                    exclude, batches, cfg.target_cosine, cfg.max_excluded, details)
                notes += [note] if note else []
            details["excluded_nodes"] = exclude
            qmodel = ir.from_proto(onnx.load(str(q_path)))
        if not quantized_ops(qmodel):
            if cfg.target_cosine > 0 and exclude:
                return self.skip(model, f"target cosine {cfg.target_cosine} needs every "
                                        f"quantizable node in fp32 ({len(exclude)} kept)")
            return self.skip(model, "onnxruntime quantized no node (weights not constant?)")
        counts = {op: sum(n.op_type == op for n in qmodel.graph)
                  for op in ("MatMulInteger", "ConvInteger", "DynamicQuantizeLinear")}
        details["ops"] = {k: v for k, v in counts.items() if v}
        return self.done(qmodel, notes=notes, details=details)
