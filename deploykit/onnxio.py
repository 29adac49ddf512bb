"""Loading ONNX files safely, reading their input/output specs, and keeping the chatter of
native ONNX tools (exporters, onnxsim) off the terminal.

Refuses what a user should hear about before anything runs: missing or truncated files, protobuf
that is not an ONNX model, and external-data paths that escape the model's folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from .core import TensorSpec
from .errors import InputError

_ELEM_TO_NP = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64",
               9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16",
               0: "float32", 4: "uint16", 8: "string", 14: "complex64", 15: "complex128"}
# what deploykit can feed: seeded random or user tensors of these types
FEEDABLE = {"float32", "float16", "float64", "int8", "uint8", "int16", "uint16", "int32",
            "int64", "uint32", "uint64", "bool"}
MAX_INPUT_ELEMENTS = 1 << 31  # 8 GiB of float32: beyond that a shape is a typo, not a model

# node metadata key holding the torch module a node came from (written by export, read by the
# per-op tables of backends/op_names.py)
MODULE_KEY = "deploykit.module"


def check_external_data(model, folder: Path) -> None:
    """Every external-data location must resolve inside the model's own folder."""
    import onnx

    base = folder.resolve()
    for tensor in _all_initializers(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        loc = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (base / loc).resolve()
        if Path(loc).is_absolute() or base not in target.parents:
            raise InputError(f"external data of tensor '{tensor.name}' points outside the "
                             f"model's folder: {loc!r}")
        if not target.is_file():
            raise InputError(f"external data file of tensor '{tensor.name}' is missing: {target}")


def check_opset(model, p: Path) -> None:
    """An opset newer than the installed onnx knows cannot be checked or run (ONNX Runtime's
    own message for it is a C++ dump): say so, and what to do."""
    import onnx

    known = onnx.defs.onnx_opset_version()
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx") and not 1 <= o.version <= known:
            raise InputError(f"{p} declares ONNX opset {o.version}, but the installed onnx "
                             f"{onnx.__version__} knows opsets 1-{known}; re-export it with an "
                             f"opset in that range (deploykit export SOURCE -o OUT.onnx --opset "
                             f"{min(known, 17)})")


def _has_external(model) -> bool:
    import onnx

    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in _all_initializers(model))


def _all_initializers(model):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.t is not None and attr.HasField("t"):
                yield attr.t


def load_onnx(path: str | Path, load_external: bool = True):
    """onnx.ModelProto from `path`, or a one-line InputError naming what is wrong."""
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    if not p.exists():
        raise InputError(f"model file not found: {p}")
    if p.is_dir():
        raise InputError(f"expected an .onnx file, got a directory: {p}")
    if p.stat().st_size == 0:
        raise InputError(f"model file is empty: {p}")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as e:
        raise InputError(f"not a valid ONNX model (corrupt or truncated?): {p}: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not model.graph.node and not model.graph.output:
        raise InputError(f"not a valid ONNX model (empty graph; corrupt or truncated?): {p}")
    check_opset(model, p)
    check_external_data(model, p.parent)
    if load_external:
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(model, str(p.parent))
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read the external data of {p}: {e}") from None
    try:
        if load_external or not _has_external(model):
            onnx.checker.check_model(model)
        else:  # the checker resolves external data of a proto against the working directory
            onnx.checker.check_model(str(p.absolute()))
    except onnx.checker.ValidationError as e:
        raise InputError(f"ONNX model fails onnx.checker: {p}: {str(e).splitlines()[0]}") from None
    return model


_PASS_THROUGH = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"}


def _index_ranges(model) -> dict[str, tuple[int, int]]:
    """{integer graph input: (0, rows)} for inputs that index a constant table through a Gather
    (token ids into an embedding), following Cast/Reshape/Unsqueeze on the way."""
    import onnx

    tables = {t.name: list(t.dims) for t in model.graph.initializer}
    users: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    out: dict[str, tuple[int, int]] = {}
    for v in model.graph.input:
        if v.type.tensor_type.elem_type not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            continue
        frontier, seen, rows = [v.name], set(), []
        while frontier:
            name = frontier.pop()
            for n in users.get(name, []):
                if id(n) in seen:
                    continue
                seen.add(id(n))
                if n.op_type == "Gather" and n.input[1] == name and n.input[0] in tables:
                    axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
                    dims = tables[n.input[0]]
                    if dims:
                        rows.append(int(dims[axis % len(dims)]))
                elif n.op_type in _PASS_THROUGH and n.input[0] == name:
                    frontier.extend(n.output)
        if rows and min(rows) > 0:
            out[v.name] = (0, min(rows))
    return out


def _spec(value_info) -> TensorSpec:
    t = value_info.type.tensor_type
    dims: list[int | str] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
    return TensorSpec(value_info.name, tuple(dims),
                      _ELEM_TO_NP.get(t.elem_type, f"onnx-elem-type-{t.elem_type}"))


def io_specs(model) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Graph inputs (excluding initializers) and outputs."""
    from dataclasses import replace

    inits = {i.name for i in model.graph.initializer}
    ranges = _index_ranges(model)
    ins = [replace(_spec(v), values=ranges.get(v.name)) for v in model.graph.input
           if v.name not in inits]
    outs = [_spec(v) for v in model.graph.output]
    return ins, outs


def resolve_shape(spec: TensorSpec, overrides: dict[str, tuple[int, ...]] | None = None,
                  dim_values: dict[str, int] | None = None) -> tuple[int, ...]:
    """A concrete shape: user override > named dim value (e.g. batch=1) > 1 for unknown dims."""
    if overrides and spec.name in overrides:
        shape = tuple(overrides[spec.name])
    else:
        dim_values = dim_values or {}
        shape = tuple(d if isinstance(d, int) else int(dim_values.get(d, 1)) for d in spec.shape)
    check_size(shape, f"input '{spec.name}' of shape {list(shape)}")
    return shape


def check_size(shape: tuple[int, ...], what: str) -> None:
    """Refuse absurd tensor sizes before anything is allocated (a MemoryError is no message)."""
    n = 1
    for d in shape:
        n *= int(d)
    if n > MAX_INPUT_ELEMENTS:
        raise InputError(f"{what}: {n:,} elements is more than deploykit allocates for one input "
                         f"({MAX_INPUT_ELEMENTS:,}); give a smaller shape")


def check_feedable(specs, source: str | Path = "the model") -> None:
    """Inputs deploykit cannot make or feed are a clear error before any work: non-numeric
    element types (strings) and fixed dims that are not positive."""
    for s in specs:
        if s.dtype not in FEEDABLE:
            raise InputError(f"{source}: input '{s.name}' has element type {s.dtype}; deploykit "
                             "measures models with numeric inputs only (export a model that takes "
                             "numeric tensors)")
        bad = [d for d in s.shape if isinstance(d, int) and d <= 0]
        if bad:
            raise InputError(f"{source}: input '{s.name}' has dimension {bad[0]} in shape "
                             f"{list(s.shape)}; fixed dims must be positive (re-export the model, "
                             "with a named dim where the size varies)")


def make_feeds(specs: list[TensorSpec], seed: int = 0,
               overrides: dict[str, tuple[int, ...]] | None = None,
               npz: str | Path | None = None) -> dict[str, np.ndarray]:
    """Seeded random inputs of the model's shapes, or the arrays of a user .npz (checked).

    `overrides` (from --shape) must name model inputs and agree with their fixed dims."""
    check_feedable(specs)
    unknown = sorted(set(overrides or {}) - {s.name for s in specs})
    if unknown:
        raise InputError(f"--shape names no model input: {', '.join(unknown)} "
                         f"(inputs: {', '.join(s.name for s in specs)})")
    for s in specs:
        if overrides and s.name in overrides:
            check_shape(s, tuple(overrides[s.name]))
    if npz is not None:
        return load_npz_feeds(specs, npz)
    rng = np.random.default_rng(seed)
    feeds = {}
    dims = _text_dims(specs, overrides)
    for s in specs:
        shape = resolve_shape(s, overrides, dims)
        if s.dtype.startswith("int") or s.dtype.startswith("uint"):
            kind = _int_kind(s)
            if kind == "mask":
                feeds[s.name] = np.ones(shape, dtype=s.dtype)
            elif kind == "type":
                feeds[s.name] = np.zeros(shape, dtype=s.dtype)
            elif kind == "ids":
                feeds[s.name] = rng.integers(*s.values, size=shape).astype(s.dtype)
            else:
                feeds[s.name] = rng.integers(0, 2, size=shape).astype(s.dtype)
        elif s.dtype == "bool":
            feeds[s.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            feeds[s.name] = rng.standard_normal(shape).astype(s.dtype)
    return feeds


SYNTHETIC_SEQ = 128  # a symbolic sequence length of token inputs, when no --shape names it
_NOTED: set[str] = set()


def _int_kind(s: TensorSpec) -> str:
    low = s.name.lower()
    if "mask" in low:
        return "mask"
    if "token_type" in low or "segment" in low:
        return "type"
    return "ids" if s.values is not None else "other"


def _text_dims(specs, overrides) -> dict[str, int]:
    """Values of symbolic dims: those an overridden input binds (so inputs sharing a dim agree),
    then SYNTHETIC_SEQ for the sequence dims of token-id inputs (a sequence of 1 token says
    nothing about a text model's speed), with a note printed once on stderr."""
    dims: dict[str, int] = {}
    for s in specs:
        if overrides and s.name in overrides:
            for d, v in zip(s.shape, overrides[s.name]):
                if isinstance(d, str):
                    dims.setdefault(d, int(v))
    ids = [s for s in specs if _int_kind(s) == "ids"]
    if not ids:
        return dims
    seq = sorted({d for s in ids for d in s.shape[1:] if isinstance(d, str) and d not in dims})
    text = [s for s in specs if _int_kind(s) != "other" and s.dtype.startswith(("int", "uint"))]
    parts = [f"{s.name}: " + {"mask": "ones", "type": "zeros",
                              "ids": f"random ids in [0, {s.values[1] if s.values else 2})"}
             [_int_kind(s)] for s in text]
    note = ("deploykit: note: synthetic text inputs (" + "; ".join(parts) + ")"
            + (f", sequence length {SYNTHETIC_SEQ} for {', '.join(seq)}" if seq else "")
            + "; pass --inputs NPZ with real tokens (or --shape NAME=1,LEN)")
    if note not in _NOTED:
        _NOTED.add(note)
        print(note, file=sys.stderr)
    return {**dims, **{d: SYNTHETIC_SEQ for d in seq}}


def read_npz(path: str | Path, what: str = "inputs") -> dict[str, np.ndarray]:
    """The arrays of a user .npz (never unpickled), or a one-line InputError saying what to do."""
    p = Path(path)
    how = "save them with numpy.savez(PATH, NAME=array, ...), one array per model input"
    if not p.exists():
        raise InputError(f"{what} file not found: {p}")
    if p.is_dir():
        raise InputError(f"{what} {p} is a folder; give an .npz file ({how})")
    try:
        data = np.load(p, allow_pickle=False)
    except Exception:  # numpy raises several types (and suggests allow_pickle) for non-.npz
        raise InputError(f"cannot read {what} from {p}: not an .npz archive (corrupt, or another "
                         f"format); {how}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise InputError(f"{p} is a single .npy array, not an .npz archive of named arrays; "
                         f"{how}")
    try:
        with data:
            arrays = {k: data[k] for k in data.files}
    except Exception as e:  # a damaged member, or an object array that would need pickle
        first = (str(e).splitlines() or [type(e).__name__])[0]
        if "pickle" in first:
            first = "it holds Python objects (deploykit never unpickles)"
        raise InputError(f"cannot read {what} from {p}: {first}; {how}") from None
    for k, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise InputError(f"{what} {p}: array '{k}' has dtype {a.dtype} (not numeric); "
                             f"{how} with numeric arrays")
    return arrays


def load_npz_feeds(specs: list[TensorSpec], npz: str | Path) -> dict[str, np.ndarray]:
    p = Path(npz)
    arrays = read_npz(p, "inputs")
    feeds = {}
    for s in specs:
        if s.name not in arrays:
            raise InputError(f"{p} has no array named '{s.name}' "
                             f"(has: {', '.join(arrays) or 'none'})")
        a = arrays[s.name]
        check_shape(s, a.shape)
        feeds[s.name] = a.astype(s.dtype, copy=False)
    return feeds


def check_shape(spec: TensorSpec, shape: tuple[int, ...]) -> None:
    if len(shape) != len(spec.shape) or any(
            isinstance(d, int) and d != got for d, got in zip(spec.shape, shape)):
        raise InputError(f"input '{spec.name}' has shape {list(shape)}, model expects "
                         f"{list(spec.shape)}")


@contextlib.contextmanager
def quiet():
    """Exporters and onnxsim print progress (some from C++, so fds 1 and 2 too) and warn freely:
    keep all of it off the terminal. Yields the list the warnings are recorded into."""
    torch_log = logging.getLogger("torch")
    old_level = torch_log.level
    torch_log.setLevel(logging.ERROR)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as null, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            with contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
                yield caught
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            torch_log.setLevel(old_level)
