"""Entropy (KL) calibration with a histogram large enough to choose a threshold.

onnxruntime's `quantize_static(calibrate_method=Entropy)` builds its EntropyCalibrater with 128
histogram bins for 128 quantized bins, and its `extra_options` forward only `CalibTensorRange
Symmetric`, `CalibMovingAverage(Constant)`, `CalibMaxIntermediateOutputs` and `CalibPercentile`
to the calibrator (onnxruntime 1.32, quantize.py): the KL search then has exactly one candidate,
the full range, and "entropy" silently gives the minmax model. Here ORT's calibrator collects the
histograms with `num_bins` bins (TensorRT's 2048 by default; its `create_calibrator` accepts
that), `kl_threshold` searches them (ORT's algorithm, vectorised: ORT's pure-Python loop took
~150 s on MobileNetV2's tensors), and the ranges go to the calibration cache that
`quantize_static(calibration_cache_path=...)` reads instead of calibrating again.

Two kinds of tensor keep their minmax range: graph outputs (a model's result, e.g. the logits an
argmax reads, is not clipped) and tensors with fewer values than histogram bins (a KL search on 20
values chose a threshold 10x too small for a 10-logit head). On MobileNetV2 KL clipping is worse
than minmax all the same (README, debug section): a method to measure, not a default.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import DeployKitError
from .calibration import data_reader

QUANTIZED_BINS = 128  # ORT's (and TensorRT's) number of quantized bins in the KL search
_EPS = np.float32(1e-4)


def _smooth(p: np.ndarray) -> np.ndarray | None:
    """ORT's smooth_distribution: zeros become eps, taken off the non-zero entries."""
    zeros = p == 0
    nz = p.size - int(zeros.sum())
    if nz == 0:
        return None
    eps1 = _EPS * np.float32(zeros.sum()) / np.float32(nz)
    out = p.astype(np.float32) + np.where(zeros, _EPS, -eps1).astype(np.float32)
    return out if eps1 < 1.0 and bool((out > 0).all()) else None


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p, q = _smooth(p), _smooth(q)
    if p is None or q is None:
        return float("inf")
    p, q = p / p.sum(), q / q.sum()
    return float(np.sum(p * np.log(p / q), dtype=np.float32))


def kl_threshold(hist: np.ndarray, edges: np.ndarray, lo, hi,
                 quantized_bins: int = QUANTIZED_BINS) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of the symmetric window of `hist` (centred on its middle bin, as ORT's
    histogram of [-max|x|, max|x|]) whose 128-level quantization loses the least information
    (KL divergence), clipped to the observed [lo, hi]. Same algorithm and result as ORT's
    HistogramCollector.get_entropy_threshold."""
    hist = np.asarray(hist, dtype=np.int64)
    n, nq = hist.size, quantized_bins
    zero, half = n // 2, nq // 2
    cum = np.concatenate([[0], np.cumsum(hist)])
    best, window = float("inf"), None
    for i in range(half, zero + 1):
        start, end = zero - i, min(zero + i + 1, n)
        sliced = hist[start:end]
        p = sliced.copy()
        p[0] += cum[start]
        p[-1] += cum[n] - cum[end]
        m = sliced.size // nq
        merged = sliced[:nq * m].reshape(nq, m).sum(axis=1)
        merged[-1] += sliced[nq * m:].sum()
        norm = (p[:nq * m] != 0).reshape(nq, m).sum(axis=1)
        q = np.zeros(p.size, dtype=np.int64)
        with np.errstate(divide="ignore", invalid="ignore"):
            q[:nq * m] = np.repeat(np.where(norm != 0, merged / np.maximum(norm, 1), 0)
                                   .astype(np.int64), m)
        div = _kl(p, q)
        if div < best:  # the first minimum, as np.argmin
            best, window = div, (edges[start], edges[end])
    if window is None:
        window = (edges[0], edges[-1])
    low, high = window
    low, high = (lo if low < lo else low), (hi if high > hi else high)
    return np.asarray(low, np.float32), np.asarray(high, np.float32)


def entropy_cache(model: Path, batches: Sequence[Mapping[str, np.ndarray]],
                  op_types: Sequence[str] | None, num_bins: int, cache: Path) -> None:
    """Entropy-calibrate `model` on `batches` with `num_bins` histogram bins and save the
    per-tensor ranges to `cache` (ORT's calibration-cache JSON)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import (TensorData, TensorsData, create_calibrator,
                                                    save_tensors_data)

    with tempfile.TemporaryDirectory(prefix="dk-entropy-", dir=Path(cache).parent) as tmp:
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the calibrator prints progress
                cal = create_calibrator(
                    Path(model), list(op_types) if op_types else None,
                    augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                    calibrate_method=CalibrationMethod.Entropy,
                    extra_options={"num_bins": num_bins, "num_quantized_bins": QUANTIZED_BINS})
                cal.collect_data(data_reader(batches))
                hists = dict(cal.collector.histogram_dict)
        except (ValueError, RuntimeError, KeyError) as e:
            raise DeployKitError("quantize-static method=entropy: calibration failed: "
                                 f"{str(e).splitlines()[0]}") from None
    outputs = {o.name for o in onnx.load(str(model), load_external_data=False).graph.output}
    ranges = {}
    for name, (hist, edges, lo, hi, *_) in hists.items():  # (+ ORT's running threshold)
        if name in outputs or int(np.sum(hist)) < num_bins:
            low, high = np.asarray(lo, np.float32), np.asarray(hi, np.float32)
        else:
            low, high = kl_threshold(hist, edges, lo, hi)
        ranges[name] = TensorData(lowest=low, highest=high, hist=hist, hist_edges=edges)
    save_tensors_data(TensorsData(CalibrationMethod.Entropy, ranges), cache)
