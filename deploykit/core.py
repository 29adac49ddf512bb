"""The pipeline's types: model file -> Artifact (compiled for a Target) -> LatencyReport.

Each stage returns its own type, so a wrong order is a type error: only an Artifact can be
profiled, and a LatencyReport always knows which artifact, target and machine it came from.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import stats


def stable_hash(*parts: Any, n: int = 16) -> str:
    """Short id from JSON-serialisable parts (lineage ids, artifact ids)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


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


@dataclass(frozen=True)
class OpTime:
    """One node (or op type) in a per-operator breakdown; the schema shared by every backend."""

    name: str
    op_type: str
    total_ms: float  # mean time per inference spent in this node
    share: float  # fraction of the summed node time
    calls: int = 1


@dataclass(frozen=True)
class Block:
    """A slice of the timed run with the foreign CPU load seen during it."""

    start: int  # index of its first sample in samples_ms
    n: int
    foreign_cpu: float  # other processes' CPU share of all cores during the block, 0..1
    contaminated: bool


@dataclass(frozen=True)
class LatencyReport:
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
    def roofline_efficiency(self) -> float | None:
        return None if self.roofline_ms is None else self.roofline_ms / self.median_ms

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["samples_ms"] = list(self.samples_ms)
        d.update(
            median_ms=self.median_ms,
            p90_ms=self.p90_ms,
            p99_ms=self.p99_ms,
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
        return cls(**kw)


class Artifact:
    """A model compiled for one target, ready to run. Backends subclass it.

    `run(feeds)` must be cheap to call repeatedly (it is what gets timed); `per_op(feeds, runs)`
    returns the breakdown in the shared OpTime schema.
    """

    def __init__(self, model: ModelRef, target: "Target", inputs: Sequence[TensorSpec],
                 outputs: Sequence[TensorSpec], session_create_ms: float):
        self.model = model
        self.target = target
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.session_create_ms = session_create_ms
        self.id = stable_hash(model.sha256, target.name, dict(target.config))
        self.labels: tuple[str, ...] = ()
        # backend facts that belong in the report's environment (e.g. the precision OpenVINO ran)
        self.env: dict[str, Any] = {}

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def per_op(self, feeds: Mapping[str, np.ndarray], runs: int = 20,
               trace_path: str | None = None) -> list[OpTime]:
        raise NotImplementedError

    def timed_runner(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], None]:
        """A zero-argument callable that runs one inference: the thing the profiler times."""
        return lambda: self.run(feeds)

    def close(self) -> None:
        pass


class Target:
    """Where a model runs. Built from a `targets/*.toml` description by `deploykit.targets.get`."""

    def __init__(self, name: str, config: Mapping[str, Any]):
        self.name = name
        self.config = dict(config)

    @property
    def threads(self) -> int:
        return int(self.config.get("threads", 2))

    def unavailable_reason(self) -> str | None:
        """None when usable here, else a one-line reason ("no CUDA provider")."""
        return None

    def compile(self, model: ModelRef) -> Artifact:
        raise NotImplementedError

    def profile(self, artifact: Artifact, feeds: Mapping[str, np.ndarray],
                plan: TimingPlan = TimingPlan(), *, per_op: bool = True, progress: bool = False,
                trace_path: str | None = None) -> LatencyReport:
        """Time `artifact` locally with deploykit's methodology (backends may override, e.g. RPC)."""
        from .measure import profile_artifact

        return profile_artifact(artifact, feeds, plan, per_op=per_op, progress=progress,
                                trace_path=trace_path)
