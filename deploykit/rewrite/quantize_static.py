"""Static int8 post-training quantization (QDQ) through onnxruntime.quantization.

Defaults are the ones measured fastest on x86 with VNNI (FACTS.md): uint8 activations with int8
per-channel weights (U8S8), 3x faster than fp32 on ResNet-shaped CNNs, where ORT's own default
(S8S8) gained only 1.1x. With `target_cosine`, each node's error is measured by quantizing it alone (ranges
come from one calibration pass, cached) and the worst are kept in fp32, 1, 2, 4, ... of them,
until the outputs reach that cosine similarity against the float model.
`method=entropy` calibrates through _entropy_calib.py (ORT's own call would search a 128-bin
histogram: the minmax range); `bias_correction` runs _bias_correction.py on every model built.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from .calibration import SYNTHETIC_WARNING, data_reader
from ..errors import DeployKitError, InputError
from ..fidelity import QUANTIZED_OPS
from . import StepPass
from ._bias_correction import correct_bias
from ._entropy_calib import entropy_cache
from ._keep_float import quantized_nodes, smallest_prefix

METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
QTYPES = {"uint8": "QUInt8", "int8": "QInt8"}
COMPUTE_OPS = ("Conv", "MatMul", "Gemm", "ConvTranspose")
# the default op set of an attention graph: the weighted ops and the embedding lookup (an int8
# table is a quarter of the size; its output is the table's values, no new range)
TRANSFORMER_OPS = ("MatMul", "Gemm", "Conv", "Gather")


@dataclass(frozen=True)
class Config:
    method: str = "minmax"  # minmax | entropy | percentile
    per_channel: bool = True
    activation_type: str = "uint8"
    weight_type: str = "int8"
    reduce_range: bool = False
    preprocess: bool = True  # onnxruntime's quant_pre_process (shape inference + optimisation)
    percentile: float = 99.999
    op_types: tuple[str, ...] = ()  # empty: every op type ORT can quantize
    exclude: tuple[str, ...] = ()  # node names kept in fp32
    target_cosine: float = 0.0  # > 0: keep the most sensitive nodes in fp32 until reached
    max_excluded: int = 16
    entropy_bins: int = 2048  # method=entropy: histogram bins of the KL threshold search
    bias_correction: bool = False  # correct the mean shift int8 weights cause (per layer)

    def __post_init__(self):
        if self.method not in METHODS:
            raise InputError(f"quantize-static: method must be one of {', '.join(METHODS)}, "
                             f"got '{self.method}'")
        for name in ("activation_type", "weight_type"):
            if getattr(self, name) not in QTYPES:
                raise InputError(f"quantize-static: {name} must be uint8 or int8, "
                                 f"got '{getattr(self, name)}'")
        if not 0.0 <= self.target_cosine < 1.0:
            raise InputError(f"quantize-static: target_cosine must be in [0, 1), "
                             f"got {self.target_cosine}")
        if not 90.0 <= self.percentile <= 100.0:
            raise InputError(f"quantize-static: percentile must be in [90, 100], "
                             f"got {self.percentile}")
        if self.max_excluded < 0:
            raise InputError("quantize-static: max_excluded must be >= 0")
        if not 512 <= self.entropy_bins <= 65536:
            raise InputError(f"quantize-static: entropy_bins must be in [512, 65536], "
                             f"got {self.entropy_bins}")


def min_opset(cfg: Config):
    """Per-channel QDQ writes DequantizeLinear with `axis`, which exists from opset 13: intake
    upgrades older models before this step runs."""
    from . import OpsetNeed

    return OpsetNeed(13, "quantize-static per_channel=true writes DequantizeLinear with an "
                         "'axis' attribute (opset >= 13)") if cfg.per_channel else None


def quantized_ops(model) -> list[str]:
    """Op types that show an onnx-ir model is already quantized (shared with the other
    quantizing steps and fp16)."""
    return sorted({n.op_type for n in model.graph if n.op_type in QUANTIZED_OPS})


def name_nodes(model) -> None:
    """Give unnamed nodes stable names, so they can be excluded and reported by name."""
    used = {n.name for n in model.graph.node if n.name}
    for i, n in enumerate(model.graph.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in used:
                name += "_"
            n.name = name
            used.add(name)


def preprocess(src: Path, dst: Path) -> str | None:
    """ORT's quant_pre_process; symbolic shape inference fails on some exported transformers,
    so retry without it. Returns a note when the model had to be quantized unprocessed.
    Runs inside `dst`'s folder: when symbolic inference is incomplete, ORT saves
    `sym_shape_infer_temp.onnx` (+ external data) into the *working directory* before raising,
    which would litter the user's folder."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = Path(src).resolve(), Path(dst).resolve()
    errors = []
    for skip_symbolic in (False, True):
        try:
            with contextlib.chdir(dst.parent):
                quant_pre_process(str(src), str(dst), skip_symbolic_shape=skip_symbolic)
            return None
        except Exception as e:  # ORT raises bare exceptions from its optimisers
            errors.append(str(e).splitlines()[0][:120] if str(e) else type(e).__name__)
    return f"quant_pre_process failed ({errors[-1]}); quantized without it"


_SHAPE_ONLY = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose"}


def output_softmax(model) -> list[str]:
    """Softmax nodes whose output reaches a graph output through shape-only ops. ORT quantizes
    a Softmax output on the fixed range [0, 1], a resolution of 1/255: every probability of a
    1000-class head below ~0.002 becomes 0 (the uniform output of the onnx zoo files lost all of
    it). Keeping them fp32 costs nothing: nothing after them computes."""
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in model.graph.output}

    def reaches(value: str) -> bool:
        if value in outputs:
            return True
        users = consumers.get(value, [])
        return bool(users) and all(u.op_type in _SHAPE_ONLY and reaches(u.output[0])
                                   for u in users)

    return [n.name for n in model.graph.node if n.op_type == "Softmax" and reaches(n.output[0])]


def attention_graph(model) -> str | None:
    """Why `model` (onnx.ModelProto) is a transformer-style graph, or None: a LayerNormalization,
    or a Softmax that is not an output head (attention probabilities). There the default
    quantizes only the weighted ops (`TRANSFORMER_OPS`): ORT's full op set also puts QDQ on the
    attention-mask Add (its input holds the -3.4e38 sentinel of masked positions: the calibrated
    range [-3.4e38, x] leaves no resolution for the scores), on the attention Softmax (its QDQ
    has the fixed range [0, 1]; the probabilities still enter the attention MatMul as int8, on
    their calibrated range) and on the residual-stream Adds and norms, which gain little; GPT-2 (768 wide, 2 layers, random weights) fell to cosine 0.979, 0.998 with
    MatMul/Gemm alone, and BERT's speedup was the same within its CI either way (README)."""
    heads = set(output_softmax(model))
    for n in model.graph.node:
        if n.op_type == "LayerNormalization":
            return f"LayerNormalization '{n.name}'"
        if n.op_type == "Softmax" and n.name not in heads:
            return f"attention Softmax '{n.name}'"
    return None


def _cosine_vs_float(float_path: Path, q_path: Path,
                     batches: Sequence[Mapping[str, np.ndarray]]) -> float:
    from ..fidelity import compare, run_ort

    cos = 1.0
    for b in batches:
        cos = min(cos, compare(run_ort(float_path, b), run_ort(q_path, b)).cosine)
    return cos


def keep_sensitive_fp32(src: Path, q_path: Path, quantize, nodes: Sequence[str],
                        exclude: list[str], batches, target: float, max_excluded: int,
                        details: dict) -> tuple[Path, list[str], str | None]:
    """Keep the nodes that hurt most in fp32 until the outputs reach cosine `target` against the
    float model: each node's own damage is measured by quantizing it alone
    (`quantize(exclude, only=name) -> path`), then the smallest number of the worst is excluded
    (rewrite/_keep_float.py, the search `deploykit debug --fix` uses too).
    Returns (model path, excluded nodes, a note when the target is not met); fills `details`."""
    cos = _cosine_vs_float(src, q_path, batches)
    details["cosine_all_int8"] = cos
    if cos < target and max_excluded > 0:
        probe = batches[:4]
        scores = sorted(((n, 1.0 - _cosine_vs_float(src, quantize(exclude, only=n), probe))
                         for n in nodes if n not in exclude), key=lambda kv: -kv[1])
        details["sensitivity"] = dict(scores[:20])
        ranked = [n for n, _ in scores]
        found, k, k_cos, _ = smallest_prefix(
            ranked, lambda names: quantize(exclude + names),
            lambda path: _cosine_vs_float(src, path, batches), target, max_excluded)
        if found is not None:
            q_path, cos = found, k_cos
        exclude = exclude + ranked[:k]
    details["cosine_vs_float"] = cos
    note = None if cos >= target else (f"target cosine {target} not met: {cos:.5f} with "
                                       f"{len(exclude)} node(s) kept in fp32")
    return q_path, exclude, note


class QuantizeStaticPass(StepPass, ir.passes.FunctionalPass):
    """int8 QDQ by onnxruntime.quantization. Functional: ORT's quantizer reads and writes model
    files, so the model is converted to an `onnx.ModelProto` at this boundary and the quantized
    file read back."""

    fidelity_kind = "int8"

    def call(self, model):
        import onnx
        from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)

        cfg, ctx = self.cfg, self.ctx
        already = quantized_ops(model)
        if already:
            return self.skip(model, f"already quantized (has {', '.join(already)})")
        wanted = cfg.op_types or COMPUTE_OPS
        if not any(n.op_type in wanted for n in model.graph):
            return self.skip(model, f"no {'/'.join(wanted)} node to quantize")
        batches = list(ctx.calibration) or [dict(ctx.feeds)]
        notes = [SYNTHETIC_WARNING] if ctx.calibration_is_synthetic else []
        extra = {"CalibPercentile": cfg.percentile} if cfg.method == "percentile" else {}

        with tempfile.TemporaryDirectory(prefix="dk-qstatic-", dir=ctx.workdir) as tmp:
            work = Path(tmp)
            src = work / "float.onnx"
            onnx.save(ir.to_proto(model), str(src))
            if cfg.preprocess:
                failure = preprocess(src, work / "pre.onnx")
                if failure:
                    notes.append(failure)
                else:
                    src = work / "pre.onnx"
            fmodel = onnx.load(str(src))
            name_nodes(fmodel)
            onnx.save(fmodel, str(src))
            op_types = list(cfg.op_types)
            why = None if op_types else attention_graph(fmodel)
            if why:
                op_types = list(TRANSFORMER_OPS)
                notes.append(f"transformer graph ({why}): quantized {'/'.join(op_types)} only; "
                             "mask Adds, Softmax, norms and residual Adds stay fp32 (op_types=... "
                             "to choose)")
            cache = work / "calibration.json"
            if cfg.method == "entropy":  # ORT alone would search 128 bins: the minmax range
                entropy_cache(src, batches, op_types, cfg.entropy_bins, cache)
            details: dict = {"activation_type": cfg.activation_type, "weight_type": cfg.weight_type,
                             "method": cfg.method, "per_channel": cfg.per_channel,
                             "calibration_batches": len(batches),
                             "op_types": op_types or "every op ORT quantizes"}

            def quantize(exclude: Sequence[str], only: str | None = None) -> Path:
                safe = re.sub(r"[^A-Za-z0-9_.-]", "_", only or "")  # node names may hold '/'
                out = work / (f"only-{safe}.onnx" if only else f"q{len(exclude)}.onnx")
                try:
                    with contextlib.redirect_stdout(io.StringIO()):  # calibrators print progress
                        quantize_static(
                            str(src), str(out), data_reader(batches), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=op_types or None,
                            per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
                            activation_type=getattr(QuantType, QTYPES[cfg.activation_type]),
                            weight_type=getattr(QuantType, QTYPES[cfg.weight_type]),
                            nodes_to_quantize=[only] if only else None,
                            nodes_to_exclude=list(exclude) or None,
                            calibrate_method=getattr(CalibrationMethod, METHODS[cfg.method]),
                            extra_options=extra, calibration_cache_path=str(cache))
                except (ValueError, RuntimeError, KeyError) as e:
                    raise DeployKitError("quantize-static failed: "
                                         f"{str(e).splitlines()[0]}") from None
                if cfg.bias_correction and not only:  # probes measure a node's own damage
                    corrected = out.with_name("bc-" + out.name)
                    details.update(correct_bias(src, out, corrected, batches[:16]))
                    out = corrected
                return out

            exclude = list(cfg.exclude)
            if "Softmax" not in op_types:
                heads = [n for n in output_softmax(fmodel) if n not in exclude]
                exclude += heads
                notes += [f"kept the output Softmax {', '.join(heads)} in fp32 (int8 probabilities "
                          "have a resolution of 1/255)"] if heads else []
            q_path = quantize(exclude)
            if cfg.bias_correction and not details.get("bias_corrected_layers"):
                notes.append("bias_correction: no int8 Conv/Gemm with an int32 bias to correct "
                             "(a MatMul's bias is a separate float Add)")
            if cfg.target_cosine > 0:
                q_path, exclude, note = keep_sensitive_fp32(
                    src, q_path, quantize, quantized_nodes(onnx.load(str(q_path))),
                    exclude, batches, cfg.target_cosine, cfg.max_excluded, details)
                notes += [note] if note else []
            details["excluded_nodes"] = list(exclude)
            qmodel = ir.from_proto(onnx.load(str(q_path)))
        return self.done(qmodel, notes=notes, details=details)
