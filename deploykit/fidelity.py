"""Numerical comparison of a model's outputs against its parent's, judged per fidelity kind.

Exact rewrites (BN folding, cleanup, zero-channel removal) must match within fp32 rounding;
int8 and fp16 models are judged by cosine similarity and top-1 agreement, because element-wise
tolerances loose enough for them would be too loose to catch a broken fp32 rewrite. Lossy steps
(pruning, low-rank) are measured and reported but only fail on broken output (shape, NaN/inf):
how much accuracy a user trades is theirs to decide, with the figures in front of them.

Subnormal values (below the dtype's smallest normal number, 1.2e-38 in fp32) are compared as
zeros: runtimes may flush them (ORT's `session.set_denormal_as_zero`, GPUs' flush-to-zero, int8
kernels), and the few mantissa bits left to them make the reference itself unreliable (an
untrained MobileViT's output, all ~1e-40, differs by 13% between torch fp32 and fp64).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class Fidelity:
    """How close `got` is to `ref`, worst case over all outputs."""

    max_abs: float
    max_rel: float  # max |got - ref| / max |ref| (scale-relative, robust to zeros in ref)
    cosine: float  # min over outputs of the cosine of the flattened tensors
    top1: float | None  # argmax agreement over rows when an output looks like logits [N, C]
    finite: bool
    shapes_match: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        top1 = "" if self.top1 is None else f", top-1 {self.top1:.0%}"
        return (f"max abs {self.max_abs:.2e}, max rel {self.max_rel:.2e}, "
                f"cosine {self.cosine:.6f}{top1}")


@dataclass(frozen=True)
class Tolerance:
    max_rel: float | None = None  # exact rewrites
    min_cosine: float | None = None  # approximate numerics
    min_top1: float | None = None


# fp32: a rewrite that only reorders float arithmetic stays within ~1e-4 of the output's scale.
# int8/fp16: cosine floors chosen so that a wrong scale/zero-point or a dropped op fails clearly.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_rel=1e-4),
    "fp16": Tolerance(min_cosine=0.999),
    "bf16": Tolerance(min_cosine=0.99),
    "int8": Tolerance(min_cosine=0.98),
    "lossy": Tolerance(),
}


# Golden-output checks of bundles (elementwise, so they run without numpy on a device):
# |got - want| <= GOLDEN_ATOL_FRAC[kind] * max|want| + GOLDEN_RTOL * |want|. fp32 matches the
# exact-rewrite tolerance above; int8 allows one requantization step of difference between CPU
# kernels (x86 vs ARM), still far below what a changed weight does.
GOLDEN_ATOL_FRAC = {"fp32": TOLERANCES["fp32"].max_rel, "fp16": 1e-3, "int8": 1e-2}
GOLDEN_RTOL = TOLERANCES["fp32"].max_rel
# how a floating output dtype is judged when a model is verified against its float reference
DTYPE_KIND = {"float32": "fp32", "float64": "fp32", "float16": "fp16", "bfloat16": "fp16"}
# op types that show a model is (or has been) quantized
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
QUANTIZED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
    "QLinearMatMul", "MatMulInteger", "ConvInteger", "MatMulNBits", "QGemm", "QAttention",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat"})


def fidelity_kind_of(model) -> str:
    """How a model's outputs are judged against its float parent: "int8" when it holds quantized
    ops, "fp16" when it holds fp16 weights, else "fp32"."""
    if any(n.op_type in QUANTIZED_OPS for n in model.graph.node):
        return "int8"
    if any(i.data_type == 10 for i in model.graph.initializer):  # FLOAT16
        return "fp16"
    return "fp32"


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def flush_subnormal(a: np.ndarray) -> np.ndarray:
    """`a` with its subnormal entries (|x| < the dtype's smallest normal) set to zero, as float64;
    integer arrays as float64 unchanged."""
    out = np.asarray(a).astype(np.float64)
    if np.issubdtype(np.asarray(a).dtype, np.floating):
        out[np.abs(out) < np.finfo(np.asarray(a).dtype).tiny] = 0.0
    return out


def subnormal_outputs(names: Sequence[str], outs: Sequence[np.ndarray]) -> list[str]:
    """Names of the floating outputs that are nonzero but entirely subnormal: compared as zeros,
    so their values are not verified (a randomly initialised deep net whose activations decayed)."""
    found = []
    for name, a in zip(names, outs):
        a = np.asarray(a)
        if np.issubdtype(a.dtype, np.floating) and a.size and np.any(a != 0) \
                and not np.any(flush_subnormal(a)):
            found.append(name)
    return found


def compare(ref: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> Fidelity:
    """Compare output lists (graph output order); subnormal values count as zeros."""
    if len(ref) != len(got):
        return Fidelity(float("inf"), float("inf"), 0.0, None, True, False)
    max_abs = max_rel = 0.0
    cos = 1.0
    top1: float | None = None
    finite = all(np.all(np.isfinite(np.asarray(g, dtype=np.float64))) for g in got
                 if np.issubdtype(np.asarray(g).dtype, np.number))
    for r, g in zip(ref, got):
        r, g = np.asarray(r), np.asarray(g)
        if r.shape != g.shape:
            return Fidelity(float("inf"), float("inf"), 0.0, None, finite, False)
        if not np.issubdtype(r.dtype, np.floating):
            same = float(np.mean(r == g)) if r.size else 1.0
            cos = min(cos, same)
            continue
        r, g = flush_subnormal(r), flush_subnormal(g)
        diff = float(np.max(np.abs(r - g))) if r.size else 0.0
        scale = float(np.max(np.abs(r))) if r.size else 0.0
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf")))
        cos = min(cos, cosine(r, g))
        if r.ndim == 2 and r.shape[1] > 1:
            agree = float(np.mean(np.argmax(r, axis=1) == np.argmax(g, axis=1)))
            top1 = agree if top1 is None else min(top1, agree)
    return Fidelity(max_abs, max_rel, cos, top1, finite, True)


def judge(fid: Fidelity, kind: str, overrides: Mapping[str, Tolerance] | None = None
          ) -> str | None:
    """None when `fid` is acceptable for `kind`, else the reason in one line."""
    tols = {**TOLERANCES, **(overrides or {})}
    if kind not in tols:
        raise InputError(f"unknown fidelity kind '{kind}' (known: {', '.join(tols)})")
    tol = tols[kind]
    if not fid.shapes_match:
        return "output count or shapes differ from the parent's"
    if not fid.finite:
        return "outputs contain NaN or inf"
    if tol.max_rel is not None and not fid.max_rel <= tol.max_rel:
        return f"max rel error {fid.max_rel:.2e} > {tol.max_rel:.0e} ({kind} tolerance)"
    if tol.min_cosine is not None and not fid.cosine >= tol.min_cosine:
        return f"cosine {fid.cosine:.6f} < {tol.min_cosine} ({kind} tolerance)"
    if tol.min_top1 is not None and fid.top1 is not None and fid.top1 < tol.min_top1:
        return f"top-1 agreement {fid.top1:.1%} < {tol.min_top1:.0%} ({kind} tolerance)"
    return None


def run_ort(model: Any, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of an ONNX model (ModelProto or path) on ORT CPU, 2 threads, no spinning:
    the reference runtime for verification, independent of the target being measured."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    src = model if isinstance(model, (str, bytes)) else (
        str(model) if hasattr(model, "suffix") else model.SerializeToString())
    sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})


def worst(fids: Sequence[Fidelity]) -> Fidelity:
    """The worst case of several comparisons (e.g. over input batches)."""
    top1s = [f.top1 for f in fids if f.top1 is not None]
    return Fidelity(max(f.max_abs for f in fids), max(f.max_rel for f in fids),
                    min(f.cosine for f in fids), min(top1s) if top1s else None,
                    all(f.finite for f in fids), all(f.shapes_match for f in fids))
