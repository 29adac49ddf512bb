"""The inputs deploykit feeds a model: seeded synthetic tensors of its input specs (token ids,
masks and sequence lengths of text models made plausible), or a user's .npz, checked against the
specs before anything runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..core import TensorSpec
from ..errors import InputError

# what deploykit can feed: seeded random or user tensors of these types
FEEDABLE = {"float32", "float16", "float64", "int8", "uint8", "int16", "uint16", "int32",
            "int64", "uint32", "uint64", "bool"}
MAX_INPUT_ELEMENTS = 1 << 31  # 8 GiB of float32: beyond that a shape is a typo, not a model


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
