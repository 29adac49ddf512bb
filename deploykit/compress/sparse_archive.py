"""Deep Compression's storage format: pruned weights as relative indices + int8 values, entropy coded.

Han et al. (Deep Compression, 2016) store a pruned layer CSR-style with *relative* indices (the gap
to the previous nonzero, in a few bits; a gap wider than the index can hold gets a filler entry
with value zero) and quantized values, then Huffman-code both streams. Here: uint8 gaps (filler
entries when a gap exceeds 255), int8 values on a symmetric per-output-channel grid (scale =
max|w| / 127 of each channel), float32 for small dense tensors (biases), and the whole payload
compressed with LZMA in an xz container (LZ77 + range coding, an entropy coder at least as tight
as Huffman on these streams, and a CRC32 that catches a corrupted file).

These are real bytes on disk: `read` checks the magic, the container, every length, shape, index
and scale against the header before it builds a tensor, so a truncated or forged file is a
one-line `InputError`, never a wrong model. The weights read back are exactly
`quantized(tensors)` (the int8 grid, zeros where the input was zero or rounded to zero).
"""

from __future__ import annotations

import json
import lzma
import struct
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import InputError

MAGIC = b"DKSPARSE\x01"
FORMAT = "deploykit-sparse-int8"
MAX_GAP = 255  # uint8 relative index; wider gaps get filler entries (value 0)
MAX_RAW_BYTES = 1 << 31  # a decompressed payload larger than this is refused (no zip bombs)


def is_sparse(name: str, array: np.ndarray) -> bool:
    """Weights (2-D and up: Linear, Conv) go sparse int8; biases and other vectors stay float32."""
    return array.ndim >= 2


def quantize_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel (axis 0) int8: (q int8 of w's shape, scale float32 [out]).
    An all-zero channel gets scale 1 (its values are 0 anyway)."""
    w = np.asarray(w, np.float32)
    rows = w.reshape(w.shape[0], -1)
    amax = np.abs(rows).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(rows / scale[:, None]), -127, 127).astype(np.int8)
    return q.reshape(w.shape), scale


def dequantize(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    rows = q.reshape(q.shape[0], -1).astype(np.float32) * scale[:, None]
    return rows.reshape(q.shape)


def quantized(tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What `unpack(pack(tensors))` gives: weights on their int8 grid, the rest float32."""
    out = {}
    for name, a in tensors.items():
        a = np.asarray(a, np.float32)
        out[name] = dequantize(*quantize_int8(a)) if is_sparse(name, a) else a.copy()
    return out


def _relative(q_flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(gaps uint8, values int8) of the nonzeros of a flat int8 array, fillers included."""
    pos = np.flatnonzero(q_flat)
    if len(pos) == 0:
        return np.zeros(0, np.uint8), np.zeros(0, np.int8)
    g = np.diff(pos, prepend=-1)  # >= 1
    fill = (g - 1) // MAX_GAP
    ends = np.cumsum(fill + 1) - 1  # each nonzero's own entry, after its fillers
    gaps = np.full(int(ends[-1]) + 1, MAX_GAP, np.uint8)
    vals = np.zeros(len(gaps), np.int8)
    gaps[ends] = g - MAX_GAP * fill
    vals[ends] = q_flat[pos]
    return gaps, vals


def pack(tensors: Mapping[str, np.ndarray]) -> tuple[bytes, dict[str, Any]]:
    """(the archive's bytes, what it holds: per tensor numel / nonzeros / entries, raw and
    compressed sizes). Tensor names and shapes are kept; dtypes come back float32."""
    header: list[dict[str, Any]] = []
    sections: list[bytes] = []
    for name, a in tensors.items():
        a = np.asarray(a, np.float32)
        if not np.isfinite(a).all():
            raise InputError(f"{name}: non-finite values cannot be archived")
        entry: dict[str, Any] = {"name": name, "shape": list(a.shape)}
        if is_sparse(name, a):
            q, scale = quantize_int8(a)
            gaps, vals = _relative(q.reshape(-1))
            entry.update(kind="sparse-int8", entries=int(len(gaps)),
                         nonzeros=int(np.count_nonzero(vals)))
            sections += [scale.astype("<f4").tobytes(), gaps.tobytes(), vals.tobytes()]
        else:
            entry.update(kind="dense-f32")
            sections.append(a.astype("<f4").tobytes())
        header.append(entry)
    head = json.dumps({"format": FORMAT, "version": 1, "tensors": header},
                      separators=(",", ":")).encode()
    raw = struct.pack("<I", len(head)) + head + b"".join(sections)
    data = MAGIC + lzma.compress(raw, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                                 preset=9 | lzma.PRESET_EXTREME)
    info = {"bytes": len(data), "raw_bytes": len(raw),
            "tensors": {e["name"]: {k: e[k] for k in ("kind", "shape", "entries", "nonzeros")
                                    if k in e} for e in header}}
    return data, info


def unpack(data: bytes, what: str = "archive") -> dict[str, np.ndarray]:
    """The tensors of an archive, every length and index checked first."""
    if not data.startswith(MAGIC):
        raise InputError(f"{what}: not a deploykit sparse int8 archive (bad magic)")
    dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:
        raw = dec.decompress(data[len(MAGIC):], max_length=MAX_RAW_BYTES)
    except lzma.LZMAError as e:
        raise InputError(f"{what}: corrupted archive ({e})") from None
    if not dec.eof or dec.unused_data:
        raise InputError(f"{what}: truncated archive or trailing bytes after it")
    if len(raw) < 4:
        raise InputError(f"{what}: archive too short")
    (n_head,) = struct.unpack_from("<I", raw)
    try:
        head = json.loads(raw[4:4 + n_head])
        ok = head["format"] == FORMAT and head["version"] == 1
        entries = list(head["tensors"])
    except Exception:
        ok = False
    if not ok:
        raise InputError(f"{what}: unreadable archive header (not {FORMAT} version 1)")
    at = 4 + n_head
    out: dict[str, np.ndarray] = {}

    def take(n: int, dtype: str) -> np.ndarray:
        nonlocal at
        size = n * np.dtype(dtype).itemsize
        if n < 0 or at + size > len(raw):
            raise InputError(f"{what}: archive shorter than its header says")
        arr = np.frombuffer(raw, dtype, n, at)
        at += size
        return arr

    for e in entries:
        try:
            name, shape, kind = str(e["name"]), tuple(int(d) for d in e["shape"]), e["kind"]
        except Exception:
            raise InputError(f"{what}: bad tensor entry in the header") from None
        if any(d < 0 for d in shape) or name in out:
            raise InputError(f"{what}: {name}: bad or duplicate tensor")
        numel = int(np.prod(shape, dtype=np.int64))
        if kind == "dense-f32":
            a = take(numel, "<f4").astype(np.float32).reshape(shape)
        elif kind == "sparse-int8" and len(shape) >= 2:
            n = int(e.get("entries", -1))
            scale = take(shape[0], "<f4").astype(np.float32)
            gaps, vals = take(n, "u1"), take(n, "i1")
            pos = np.cumsum(gaps, dtype=np.int64) - 1
            if (n and (gaps.min() == 0 or pos[-1] >= numel)) or \
                    not (np.isfinite(scale).all() and (scale > 0).all()):
                raise InputError(f"{what}: {name}: index or scale out of range")
            q = np.zeros(numel, np.int8)
            q[pos] = vals
            a = dequantize(q.reshape(shape), scale)
        else:
            raise InputError(f"{what}: {name}: unknown tensor kind {kind!r}")
        if not np.isfinite(a).all():
            raise InputError(f"{what}: {name}: non-finite values")
        out[name] = a
    if at != len(raw):
        raise InputError(f"{what}: {len(raw) - at} bytes after the last tensor")
    return out


def write(path: str | Path, tensors: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Pack `tensors` into `path` (atomically); returns pack's info."""
    from ..fsutil import atomic_path

    data, info = pack(tensors)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return info


def read(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    return unpack(data, str(path))
