"""What `deploykit debug` finds: one row per paired tensor (accumulated, introduced and
output-impact error, and the SQNR the layer adds), ranked worst first in a DebugResult."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from .match import Pair
from .metrics import Metric

RANKS = ("introduced", "output", "accumulated", "total")


@dataclass(frozen=True)
class Row:
    pair: Pair
    acc: Metric | None  # accumulated: whole candidate vs whole reference
    own: Metric | None  # introduced: the candidate layer alone on the reference's inputs
    # what that introduced error alone does to the model's outputs (the layer's output injected
    # into the reference, everything else exact): its sensitivity, where local figures mislead
    impact: Metric | None
    # the accumulated error this layer adds, as an SQNR: 10 log10(1 / (NSR_out - worst NSR_in))
    # with NSR = 10^(-SQNR/10); +inf when it adds none (damage only inherited), lower is worse
    added_db: float | None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"tensor": self.pair.ref, "candidate_tensor": self.pair.cand,
                "matched_by": self.pair.how, "op_type": self.pair.op_type,
                "reference_node": self.pair.ref_node, "candidate_node": self.pair.cand_node,
                "depth": self.pair.depth,
                "accumulated": None if self.acc is None else self.acc.to_dict(),
                "introduced": None if self.own is None else self.own.to_dict(),
                "output_impact": None if self.impact is None else self.impact.to_dict(),
                "added_error_sqnr_db": _finite(self.added_db), "note": self.note}


@dataclass(frozen=True)
class DebugResult:
    reference: str
    candidate: str
    reference_target: str
    target: str
    rows: tuple[Row, ...]  # in depth order
    batches: int
    chunks: int
    seconds: float
    peak_rss_mb: float  # the whole process's peak resident memory
    max_chunk_mb: float  # the largest set of exposed tensors held at once
    notes: tuple[str, ...] = field(default_factory=tuple)

    def ranked(self, by: str = "introduced") -> list[Row]:
        """Worst first. `introduced`: the layer's own error; `output`: what that error alone
        does to the model's outputs; `accumulated`: the SQNR the accumulated error gains at this
        layer (added_db); `total`: accumulated error as it stands."""
        def key(r: Row) -> float:
            if by in ("introduced", "output"):
                m = (r.impact if by == "output" else None) or r.own or r.acc
                return m.badness if m else -math.inf
            if by == "accumulated":
                if r.acc is not None and not r.acc.finite:
                    return math.inf
                return -r.added_db if r.added_db is not None else -math.inf
            return r.acc.badness if r.acc else -math.inf
        if by not in RANKS:
            raise InputError(f"rank by {', '.join(RANKS)}, got {by!r}")
        return sorted(self.rows, key=lambda r: (-key(r), r.pair.depth))

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "candidate": self.candidate,
                "reference_target": self.reference_target, "target": self.target,
                "batches": self.batches, "chunks": self.chunks, "seconds": self.seconds,
                "peak_rss_mb": self.peak_rss_mb, "max_chunk_mb": self.max_chunk_mb,
                "notes": list(self.notes),
                "ranked_introduced": [r.pair.ref for r in self.ranked("introduced")],
                "ranked_output": [r.pair.ref for r in self.ranked("output")],
                "ranked_accumulated": [r.pair.ref for r in self.ranked("accumulated")],
                "layers": [r.to_dict() for r in self.rows], "schema": 1}


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def build_rows(pairs, layers, acc, own, impact, notes, cand2ref) -> list[Row]:
    """The rows from the running statistics (metrics.Stats by reference tensor)."""
    accm = {p.ref: acc[p.ref].metric() for p in pairs if acc[p.ref].count}
    rows = []
    for p in pairs:
        a = accm.get(p.ref)
        o = own[p.ref].metric() if p.ref in own and own[p.ref].count else None
        imp = impact[p.ref].metric() if p.ref in impact and impact[p.ref].count else None
        added = None
        if a is not None and p.ref in layers:
            nsr_in = max((_nsr(accm[cand2ref[t]]) for t in layers[p.ref].inputs
                          if cand2ref.get(t) in accm), default=0.0)  # graph inputs arrive exact
            gain = 0.0 if nsr_in == math.inf else _nsr(a) - nsr_in
            added = -math.inf if gain == math.inf else (
                -10.0 * math.log10(gain) if gain > 0 else math.inf)
        rows.append(Row(p, a, o, imp, added, notes.get(p.ref)))
    return rows


def _nsr(m: Metric) -> float:
    """Error power over signal power (0 when exact, inf when the output is not finite)."""
    if not m.finite:
        return math.inf
    return 0.0 if m.sqnr_db == math.inf else 10.0 ** (-m.sqnr_db / 10.0)
