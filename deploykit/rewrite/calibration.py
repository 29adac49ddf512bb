"""Calibration batches for static quantization: user data (.npz or a folder of .npz), or seeded
synthetic data, which is flagged loudly because random inputs hide real activation ranges."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..core import TensorSpec
from ..errors import InputError
from ..onnxio import check_shape, make_feeds, resolve_shape

SYNTHETIC_WARNING = ("WARNING: calibrated on seeded synthetic data; activation ranges of real "
                     "inputs may differ (pass --calib with real samples)")


def _batches_from_arrays(specs: Sequence[TensorSpec], arrays: Mapping[str, np.ndarray],
                         source: Path) -> list[dict[str, np.ndarray]]:
    """One batch when arrays have the model's rank; N batches when they have one extra
    leading sample axis (e.g. [N, 1, 3, 224, 224] or [N, 3, 224, 224] for a batch-1 model)."""
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise InputError(f"calibration file {source} has no array named '{missing[0]}' "
                         f"(has: {', '.join(arrays) or 'none'})")
    first = specs[0]
    a0 = arrays[first.name]
    if a0.ndim == len(first.shape) + 1:
        n = a0.shape[0]
        out = []
        for i in range(n):
            batch = {}
            for s in specs:
                a = arrays[s.name]
                if a.ndim != len(s.shape) + 1 or a.shape[0] != n:
                    raise InputError(f"calibration file {source}: '{s.name}' has shape "
                                     f"{list(a.shape)}, expected {n} samples of {list(s.shape)}")
                check_shape(s, a[i].shape)
                batch[s.name] = np.ascontiguousarray(a[i]).astype(s.dtype, copy=False)
            out.append(batch)
        return out
    batch = {}
    for s in specs:
        check_shape(s, arrays[s.name].shape)
        batch[s.name] = arrays[s.name].astype(s.dtype, copy=False)
    return [batch]


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as e:  # numpy raises several types for a bad archive
        raise InputError(f"cannot read calibration data from {path}: {e}") from None


def load_calibration(specs: Sequence[TensorSpec], path: str | Path,
                     max_batches: int = 64) -> list[dict[str, np.ndarray]]:
    """Batches from one .npz or every .npz in a folder (sorted), checked against the model."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"calibration data not found: {p}")
    files = sorted(p.glob("*.npz")) if p.is_dir() else [p]
    if not files:
        raise InputError(f"no .npz files in calibration folder {p}")
    batches: list[dict[str, np.ndarray]] = []
    for f in files:
        batches.extend(_batches_from_arrays(specs, _read_npz(f), f))
        if len(batches) >= max_batches:
            break
    return batches[:max_batches]


def synthetic_calibration(specs: Sequence[TensorSpec], n: int = 8, seed: int = 0,
                          overrides: dict[str, tuple[int, ...]] | None = None
                          ) -> list[dict[str, np.ndarray]]:
    """n seeded random batches of the model's input shapes."""
    for s in specs:
        resolve_shape(s, overrides)  # symbolic dims resolve to 1 unless overridden
    return [make_feeds(list(specs), seed=seed + i, overrides=overrides) for i in range(n)]


def data_reader(batches: Iterable[Mapping[str, np.ndarray]]):
    """An onnxruntime CalibrationDataReader over in-memory batches (a fresh one per use)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self, items):
            self._items = list(items)
            self._it = iter(self._items)

        def get_next(self):
            return next(self._it, None)

        def rewind(self):
            self._it = iter(self._items)

    return _Reader(batches)
