"""Post-processing and verification of an exported model: onnx.checker, onnxsim, and its outputs
against the reference (torch, or the ONNX file as given) at one or two sets of input shapes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ExportError, InputError, VerificationError
from ..onnxio import quiet
from .torch_source import one_line, random_like, run_torch


@dataclass(frozen=True)
class OutputCheck:
    """One output of the exported model against its reference, at one set of input shapes."""

    output: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float  # max |onnx - ref| / max |ref|
    cosine: float
    failure: str | None = None  # None when within tolerance

    @property
    def ok(self) -> bool:
        return self.failure is None



def check_model(model, source_kind: str):
    import onnx

    err = ExportError if source_kind == "torch" else InputError
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # noqa: BLE001 - ValidationError / InferenceError
        raise err(f"model fails onnx.checker: {one_line(e)}") from None
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, data_prop=True)
    except Exception as e:  # noqa: BLE001
        raise err(f"ONNX shape inference failed: {one_line(e)}") from None


def maybe_simplify(model, simplify: bool, warns: list[str]) -> tuple[Any, bool]:
    """(onnxsim's result, True), or (the input, False) with the reason appended to `warns` when
    onnxsim fails: a failed simplification is a warning, not an error."""
    import onnx
    import onnxsim

    if not simplify:
        return model, False
    try:
        with quiet():
            simple, _ = onnxsim.simplify(model, check_n=0)
        onnx.checker.check_model(simple)
        return simple, True
    except Exception as e:  # noqa: BLE001 - onnxsim raises many types
        warns.append(f"onnxsim failed, kept the unsimplified model: {one_line(e)[:200]}")
        return model, False




def compare_outputs(names: Sequence[str], ref: Sequence[np.ndarray], got: Sequence[np.ndarray],
                    where: str) -> list[OutputCheck]:
    """Per-output comparison judged by dtype tolerance (deploykit.verify); integer outputs must
    match exactly."""
    from ..fidelity import DTYPE_KIND, compare, judge

    if len(ref) != len(got):
        raise VerificationError(f"ONNX model has {len(got)} outputs, the reference {len(ref)}")
    checks = []
    for name, r, g in zip(names, ref, got):
        fid = compare([r], [g])
        if not np.issubdtype(r.dtype, np.floating):
            failure = None if fid.shapes_match and np.array_equal(r, g) else \
                "integer outputs differ"
        else:
            failure = judge(fid, DTYPE_KIND.get(str(r.dtype), "fp32"))
        checks.append(OutputCheck(name, tuple(np.shape(g)), fid.max_abs, fid.max_rel,
                                  fid.cosine, None if failure is None else f"{failure} {where}"))
    return checks


def _second_shapes(args, names, dynamic_axes) -> dict[str, tuple[int, ...]]:
    """Input shapes with every dynamic axis grown by 2 (a size the tracer never saw)."""
    shapes = {}
    for a, n in zip(args, names):
        s = list(a.shape)
        for ax in dynamic_axes.get(n, {}):
            s[ax] += 2
        shapes[n] = tuple(s)
    return shapes


def verify_torch(model, proto_bytes: bytes, args, names, out_names, dynamic_axes,
                  seed: int) -> list[OutputCheck]:
    import torch

    from ..fidelity import run_ort

    shape_sets = [{n: tuple(a.shape) for a, n in zip(args, names)}]
    if dynamic_axes:
        shape_sets.append(_second_shapes(args, names, dynamic_axes))
    checks = []
    for k, shapes in enumerate(shape_sets):
        gen = torch.Generator().manual_seed(seed + 1 + k)
        inputs = tuple(random_like(a, shapes[n], gen) for a, n in zip(args, names))
        try:
            ref = run_torch(model, inputs)
        except Exception as e:  # noqa: BLE001 - e.g. a batch size baked into the model
            why = " (needed to verify the dynamic axes)" if k else ""
            raise InputError(f"the torch model itself fails on seeded inputs of shapes "
                             f"{fmt_shapes(shapes)}{why}: {one_line(e)[:300]}") from None
        try:
            with quiet():
                got = run_ort(proto_bytes, {n: t.numpy() for n, t in zip(names, inputs)})
        except Exception as e:  # noqa: BLE001
            raise VerificationError(f"ONNX Runtime cannot run the exported model at input shapes "
                                    f"{fmt_shapes(shapes)}: {one_line(e)[:300]}") from None
        checks += compare_outputs(out_names, ref, got, f"at input shapes {fmt_shapes(shapes)}")
    return checks


def fmt_shapes(shapes: Mapping[str, Sequence[int]]) -> str:
    return ", ".join(f"{n}={'x'.join(map(str, s))}" for n, s in shapes.items())


def raise_if_failed(checks: Sequence[OutputCheck], reference: str,
                     hints: Sequence[str] = ()) -> None:
    bad = [c for c in checks if not c.ok]
    if bad:
        hint = f" (exporter said: {hints[0]})" if hints else ""
        raise VerificationError(f"output '{bad[0].output}' disagrees with {reference}: "
                                f"{bad[0].failure}{hint}")


