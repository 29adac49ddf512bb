"""Per-layer latency lookup table (the NetAdapt idea): each layer of a candidate is cut out as a tiny
ONNX model (search/units.py), timed in isolation on the target and cached by its *shape
signature*; a candidate's whole-model latency is predicted from the sum of its layers, calibrated
on the candidates that were measured whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from .units import (ANCHORS, Unit, capture_values, partition, signature,  # noqa: F401 - callers
                    unit_model)


@dataclass(frozen=True)
class UnitTime:
    label: str
    op_type: str
    signature: str
    ms: float


@dataclass(frozen=True)
class Estimate:
    """A candidate's layer-table latency: the sum of its units timed alone."""

    total_ms: float
    units: tuple[UnitTime, ...]
    new_units: int  # how many units had to be timed for this estimate


class LayerTable:
    """Unit latencies on one target, cached in memory and behind `lookup` (the results store).

    `measure(sig, path, feeds) -> median ms` times one unit model on the target and records it;
    `lookup(sig)` returns a recorded median or None.
    """

    def __init__(self, measure: Callable[[str, Path, Mapping[str, np.ndarray]], float],
                 lookup: Callable[[str], float | None], workdir: Path,
                 measure_many: Callable[[list[tuple]], list[float]] | None = None):
        self._measure, self._lookup, self._measure_many = measure, lookup, measure_many
        self._dir = Path(workdir)
        self._mem: dict[str, float] = {}
        self.timed = self.reused = 0

    def unit_ms(self, sig: str, build: Callable[[], Any],
                feeds: Mapping[str, np.ndarray]) -> tuple[float, bool]:
        """(median ms, was it timed now); `build()` makes the unit model only when it is timed."""
        if sig in self._mem:
            return self._mem[sig], False
        cached = self._lookup(sig)
        if cached is not None:
            self._mem[sig] = cached
            self.reused += 1
            return cached, False
        import onnx

        from ..fsutil import atomic_path

        self._dir.mkdir(parents=True, exist_ok=True)
        path = self._dir / f"unit-{sig}.onnx"
        with atomic_path(path) as tmp:
            onnx.save(build(), str(tmp))
        try:
            ms = float(self._measure(sig, path, feeds))
        finally:
            path.unlink(missing_ok=True)
        self._mem[sig] = ms
        self.timed += 1
        return ms, True

    def _prefetch(self, units: list[tuple[str, Any, dict]]) -> set[str]:
        """Time the (sig, model, feeds) units not known yet all at once (`measure_many`: over a
        device pool, several boards at a time); `unit_ms` then finds them in memory."""
        import onnx

        from ..fsutil import atomic_path

        todo: dict[str, tuple[Path, dict]] = {}
        for sig, tiny, feeds in units:
            if sig in self._mem or sig in todo:
                continue
            cached = self._lookup(sig)
            if cached is not None:
                self._mem[sig] = cached
                self.reused += 1
                continue
            self._dir.mkdir(parents=True, exist_ok=True)
            path = self._dir / f"unit-{sig}.onnx"
            with atomic_path(path) as tmp:
                onnx.save(tiny, str(tmp))
            todo[sig] = (path, feeds)
        if len(todo) < 2:  # nothing to spread
            for path, _ in todo.values():
                path.unlink(missing_ok=True)
            return set()
        try:
            times = self._measure_many([(sig, p, f) for sig, (p, f) in todo.items()])
        finally:
            for path, _ in todo.values():
                path.unlink(missing_ok=True)
        for sig, ms in zip(todo, times):
            self._mem[sig] = float(ms)
            self.timed += 1
        return set(todo)

    def estimate(self, model, feeds: Mapping[str, np.ndarray]) -> Estimate:
        units = partition(model)
        boundary = sorted({t for u in units for t in u.inputs + u.outputs})
        values = capture_values(model, feeds, boundary)
        tinies = [(u, unit_model(model, u, values)) for u in units]
        sigs = [signature(tiny) for _, tiny in tinies]
        fresh = set() if self._measure_many is None else self._prefetch(
            [(sig, tiny, {n: values[n] for n in u.inputs}) for (u, tiny), sig in zip(tinies, sigs)])
        rows, new = [], 0
        for (u, tiny), sig in zip(tinies, sigs):
            ms, timed = self.unit_ms(sig, lambda t=tiny: t, {n: values[n] for n in u.inputs})
            timed = timed or sig in fresh
            fresh.discard(sig)
            new += timed
            rows.append(UnitTime(u.label, u.op_type, sig, ms))
        return Estimate(float(sum(r.ms for r in rows)), tuple(rows), new)


@dataclass(frozen=True)
class Predictor:
    """Whole-model latency from a layer-table sum: table x the median of (measured whole / table)
    over the candidates measured so far (the baseline first). A ratio through the origin, not a
    fitted line: the measured candidates cluster at a few table sums, and on a shared machine a
    line through such clusters extrapolates to nonsense (even negative latencies); the median
    keeps one contaminated measurement from moving the scale."""

    points: tuple[tuple[float, float], ...]  # (table sum ms, measured whole ms); baseline first

    def scale(self) -> float:
        if not self.points:
            raise ValueError("the predictor needs at least the baseline's measurement")
        return float(np.median([y / x for x, y in self.points if x > 0]))

    def predict(self, table_ms: float) -> float:
        return self.scale() * table_ms
