"""The pipeline's types: model file (ModelRef) -> Artifact (compiled for a Target, see
backends/base.py) -> LatencyReport.

Each stage returns its own type, so a wrong order is a type error: only an Artifact can be
profiled, and a LatencyReport always knows which artifact, target and machine it came from.
This module sits at the bottom of the layers: it imports nothing of deploykit's but `stats`.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from . import stats, validity


def stable_hash(*parts: Any, n: int = 16) -> str:
    """Short id from JSON-serialisable parts (lineage ids, artifact ids)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def to_json(obj: Any, indent: int | None = 1) -> str:
    """Strict JSON text of a to_dict() result (no NaN/Infinity): fsutil.dumps_json."""
    from .fsutil import dumps_json

    return dumps_json(obj, indent)


class Result:
    """Mixin of what a pipeline stage returns: strict JSON from the class's `to_dict()`."""

    def to_json(self, indent: int | None = 1) -> str:
        return to_json(self.to_dict(), indent)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]  # str for symbolic dims ("batch")
    dtype: str  # numpy dtype name, e.g. "float32"
    # integer inputs that index a table (token ids -> embedding Gather): valid values [lo, hi),
    # read from the model so synthetic ids stay inside the vocabulary; not part of identity
    values: tuple[int, int] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ModelRef:
    """An ONNX file on disk, identified by its content hash, with its lineage.

    `parent_sha256` / `transform` / `config` say how it was made (Olive-style lineage): the store
    keeps them so that "how was this made" and the Pareto front fall out of the data.
    """

    path: Path
    sha256: str
    parent_sha256: str | None = None
    transform: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_path(cls, path: str | Path, **lineage: Any) -> "ModelRef":
        from .fsutil import sha256_file

        p = Path(path)
        return cls(path=p, sha256=sha256_file(p), **lineage)

    @property
    def id(self) -> str:
        return self.sha256[:16]


@dataclass(frozen=True)
class TimingPlan:
    """How to measure: warm-up until the running median settles, then adaptive repetitions
    until the 95% CI of the median is within +/- target_rel_ci, or a cap is hit."""

    warmup_min_s: float = 0.2
    warmup_max_s: float = 5.0
    warmup_tolerance: float = 0.02  # running median of successive windows within 2%
    target_rel_ci: float = 0.01
    min_samples: int = 30
    min_blocks: int = 8  # clean blocks needed before the CI may stop the run
    max_samples: int = 100_000
    max_time_s: float = 30.0
    block_s: float = 0.5  # foreign-load bookkeeping granularity
    contamination_threshold: float = 0.25  # foreign CPU share (of all cores) that taints a block
    wait_quiet_s: float = 0.0  # > 0: pause while foreign load is above the mark, discard blocks
    # that overlapped it, give up after this many seconds (measure.timing.QuietWaiter)


@dataclass(frozen=True)
class OpTime:
    """One node (or op type) in a per-operator breakdown; the schema shared by every backend."""

    name: str
    op_type: str
    total_ms: float  # mean time per inference spent in this node
    share: float  # fraction of the summed node time
    calls: int = 1
    layer: str = ""  # the model's node this runtime node came from (after fusion / renaming)
    module: str = ""  # the torch module path, for models deploykit exported


@dataclass(frozen=True)
class Block:
    """A slice of the timed run with the foreign CPU load seen during it."""

    start: int  # index of its first sample in samples_ms
    n: int
    foreign_cpu: float  # other processes' CPU share of all cores during the block, 0..1
    contaminated: bool


@dataclass(frozen=True)
class LatencyReport(Result):
    """Latency is a distribution: raw samples are kept, statistics derive from them."""

    samples_ms: tuple[float, ...]
    target: str
    target_config: Mapping[str, Any]
    artifact_id: str
    model_sha256: str
    model_path: str
    env: Mapping[str, Any]
    stop_reason: str  # "ci-reached" | "time-cap" | "sample-cap"
    session_create_ms: float = float("nan")
    first_inference_ms: float = float("nan")
    warmup_samples: int = 0
    batch: int = 1
    blocks: tuple[Block, ...] = ()
    per_op: tuple[OpTime, ...] = ()
    flops: float | None = None
    roofline_ms: float | None = None
    labels: tuple[str, ...] = ()  # e.g. "emulated", "untuned: run deploykit tune"
    created: float = field(default_factory=time.time)
    discarded_blocks: int = 0  # blocks dropped by --wait-quiet because they overlapped load
    quiet_wait_s: float = 0.0  # time spent waiting for the machine to quieten
    warmup_ms: float = float("nan")  # wall time of the warm-up runs
    # peak RSS per phase (measure.memory.memory_dict: load / first / steady, absolute and as a
    # delta over the process before loading, weight and file bytes); {} when not measured
    memory: Mapping[str, Any] = field(default_factory=dict)
    # one cold start (session creation + first inference) per fresh session, for the gate
    cold_start_samples_ms: tuple[float, ...] = ()
    # measure.stability of a single profile run: drift, trend, spread, the halves flag; {}: none
    stability: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        lo, hi = self.ci95_ms
        return (f"LatencyReport({self.target}, model {self.model_sha256[:12]}: median "
                f"{self.median_ms:.4g} ms, 95% CI [{lo:.4g}, {hi:.4g}], p90 {self.p90_ms:.4g} ms, "
                f"{len(self.samples_ms)} samples in {len(self.blocks)} blocks, "
                f"{self.contaminated_fraction:.0%} under foreign load, {self.validity.state})")

    @property
    def median_ms(self) -> float:
        """The median of the block medians (the blocks `ci95_ms` is built on, contaminated ones
        dropped when enough clean ones remain), so the estimate always lies inside its interval;
        the median of all samples for results without at least 2 blocks."""
        meds = stats.block_medians(self.samples_ms, self.blocks)
        return float(np.median(meds if len(meds) >= 2 else self.samples_ms))

    @property
    def p90_ms(self) -> float:
        return float(np.percentile(self.samples_ms, 90))

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(self.samples_ms, 99))

    @property
    def mean_ms(self) -> float:
        return float(np.mean(self.samples_ms))

    @property
    def std_ms(self) -> float:
        return float(np.std(self.samples_ms, ddof=1)) if len(self.samples_ms) > 1 else 0.0

    @property
    def cv(self) -> float:
        return self.std_ms / self.mean_ms if self.mean_ms else float("nan")

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.samples_ms, q))

    @property
    def trimmed_mean_ms(self) -> float:
        """Mean of the samples between the 5th and 95th percentiles (tails cut, 10% in all)."""
        x = np.sort(np.asarray(self.samples_ms))
        k = int(len(x) * 0.05)
        return float(np.mean(x[k:len(x) - k] if len(x) > 2 * k else x))

    @property
    def cold_start_ms(self) -> float:
        """Time to the first answer: session creation (compile) + first inference."""
        return self.session_create_ms + self.first_inference_ms

    def memory_bytes(self, key: str) -> int | None:
        """A `memory` entry (e.g. "steady_peak_bytes"), None when not measured."""
        v = self.memory.get(key) if self.memory else None
        return None if v is None else int(v)

    @property
    def ci95_ms(self) -> tuple[float, float]:
        """95% CI of the median with timed blocks as the units (see stats.blocked_median_ci)."""
        return stats.blocked_median_ci(self.samples_ms, self.blocks, 0.95)

    @property
    def rel_ci_halfwidth(self) -> float:
        lo, hi = self.ci95_ms
        return (hi - lo) / 2 / self.median_ms

    @property
    def throughput_per_s(self) -> float:
        return 1000.0 * self.batch / self.median_ms

    @property
    def contaminated_fraction(self) -> float:
        n = sum(b.n for b in self.blocks)
        return sum(b.n for b in self.blocks if b.contaminated) / n if n else 0.0

    @property
    def validity(self) -> "validity.Validity":
        """Is this a result? clean / contaminated / unstable, with the reason (validity.py)."""
        return validity.assess(self.samples_ms, self.blocks,
                               threshold=TimingPlan.contamination_threshold,
                               discarded_blocks=self.discarded_blocks,
                               quiet_wait_s=self.quiet_wait_s)

    @property
    def roofline_efficiency(self) -> float | None:
        return None if self.roofline_ms is None else self.roofline_ms / self.median_ms

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["samples_ms"] = list(self.samples_ms)
        v = self.validity
        d.update(
            state=v.state,
            reason=v.reason,
            validity=v.to_dict(),
            median_ms=self.median_ms,
            p90_ms=self.p90_ms,
            p99_ms=self.p99_ms,
            min_ms=float(np.min(self.samples_ms)),
            p5_ms=self.percentile_ms(5),
            p95_ms=self.percentile_ms(95),
            max_ms=float(np.max(self.samples_ms)),
            iqr_ms=self.percentile_ms(75) - self.percentile_ms(25),
            trimmed_mean_ms=self.trimmed_mean_ms,
            cold_start_ms=self.cold_start_ms,
            mean_ms=self.mean_ms,
            std_ms=self.std_ms,
            cv=self.cv,
            ci95_ms=list(self.ci95_ms),
            throughput_per_s=self.throughput_per_s,
            contaminated_fraction=self.contaminated_fraction,
            roofline_efficiency=self.roofline_efficiency,
            schema=1,
        )
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LatencyReport":
        names = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in names}
        kw["samples_ms"] = tuple(float(x) for x in d["samples_ms"])
        kw["blocks"] = tuple(Block(**b) for b in d.get("blocks", ()))
        kw["per_op"] = tuple(OpTime(**o) for o in d.get("per_op", ()))
        kw["labels"] = tuple(d.get("labels", ()))
        kw["memory"] = dict(d.get("memory") or {})
        kw["stability"] = dict(d.get("stability") or {})
        kw["cold_start_samples_ms"] = tuple(float(x) for x in d.get("cold_start_samples_ms", ()))
        return cls(**kw)
