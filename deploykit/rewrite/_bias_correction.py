"""Empirical bias correction of a QDQ model (Nagel et al. 2019, "Data-Free Quantization", sec. 4.2;
AIMET's empirical variant): int8 weights shift the mean of a layer's output (E[W_q x] != E[W x]),
and the shift accumulates through the network. For each quantized Conv/Gemm with an int32 bias, in
the float graph's order, the per-channel mean of its output over the calibration batches is
measured in the float model and in the quantized model (with every earlier layer already
corrected), and the difference is added to the int32 bias (in units of its scale).

Measured on MobileNetV2 (ImageNet weights, 16 calibration views, 176 held-out views): the worst
output cosine of U8S8 minmax 0.954 -> 0.974, of uint16-activation/int8-weight 0.970 -> 0.997
(README, compress section). A layer is corrected against the *pre-activation* output of the float
node of the same name: ORT's QDQ quantizer removes a Relu/Clip that the output's quantization
range replaces, so the quantized Conv's output tensor carries the activation's name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import InputError

LAYER_OPS = ("Conv", "Gemm", "ConvTranspose")


def _session(model):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _channel_means(model, names: Sequence[str], batches) -> dict[str, np.ndarray]:
    """Per-channel (axis 1) mean of each tensor in `names` over `batches`, read by exposing them
    as graph outputs of a copy of `model`."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                          for n in dict.fromkeys(names) if n not in have)
    sess = _session(m)
    inputs = {i.name for i in sess.get_inputs()}
    sums: dict[str, np.ndarray] = {}
    for b in batches:
        outs = sess.run(list(names), {k: v for k, v in b.items() if k in inputs})
        for n, o in zip(names, outs):
            o = np.asarray(o, dtype=np.float64)
            axes = tuple(i for i in range(o.ndim) if i != 1) if o.ndim > 1 else ()
            sums[n] = sums.get(n, 0.0) + (o.mean(axis=axes) if axes else o)
    return {n: s / len(batches) for n, s in sums.items()}


def _targets(fmodel, qmodel) -> list[tuple[object, object, str]]:
    """(quantized node, its bias DequantizeLinear, the float node's output) for every quantized
    layer with an int32 bias, in the float graph's (topological) order."""
    prod = {o: n for n in qmodel.graph.node for o in n.output}
    inits = {i.name for i in qmodel.graph.initializer}
    by_name = {n.name: n for n in qmodel.graph.node if n.op_type in LAYER_OPS}
    out = []
    for fn in fmodel.graph.node:
        qn = by_name.get(fn.name) if fn.name else None
        if qn is None or len(qn.input) < 3 or not qn.input[2]:
            continue
        dq = prod.get(qn.input[2])
        w = prod.get(qn.input[1])
        if (dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits
                or w is None or w.op_type != "DequantizeLinear"):
            continue  # a float bias or float weights: the layer was kept in float
        out.append((qn, dq, fn.output[0]))
    return out


def correct_bias(float_path: Path, q_path: Path, out_path: Path,
                 batches: Sequence[Mapping[str, np.ndarray]]) -> dict:
    """Write `q_path` with its int32 biases corrected to `out_path`; returns details (layers
    corrected, mean |shift| found before correction)."""
    import onnx
    from onnx import numpy_helper

    fmodel, qmodel = onnx.load(str(float_path)), onnx.load(str(q_path))
    if max(fmodel.ByteSize(), qmodel.ByteSize()) >= 2**31:
        raise InputError("quantize-static bias_correction: the model is over 2 GB, which this "
                         "correction (in-memory ORT sessions) does not handle; leave it off")
    targets = _targets(fmodel, qmodel)
    if not targets:
        onnx.save(qmodel, str(out_path))
        return {"bias_corrected_layers": 0}
    inits = {i.name: i for i in qmodel.graph.initializer}
    ref = _channel_means(fmodel, [f for _, _, f in targets], batches)
    shifts = []
    for qn, dq, fname in targets:
        got = _channel_means(qmodel, [qn.output[0]], batches)[qn.output[0]]
        delta = ref[fname] - got
        bias = inits[dq.input[0]]
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
        if delta.shape != np.broadcast_shapes(delta.shape, scale.shape):
            continue  # an output whose channel axis is not the bias's: leave it
        q = numpy_helper.to_array(bias).astype(np.int64) + np.round(delta / scale).astype(np.int64)
        info = np.iinfo(np.int32)
        bias.CopyFrom(numpy_helper.from_array(np.clip(q, info.min, info.max).astype(np.int32),
                                              bias.name))
        shifts.append(float(np.mean(np.abs(delta))))
    onnx.save(qmodel, str(out_path))
    return {"bias_corrected_layers": len(shifts),
            "bias_shift_mean_abs": float(np.mean(shifts)) if shifts else 0.0}
