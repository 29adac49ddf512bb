"""The target side of the pipeline: a `Target` compiles a model into an `Artifact`, which it profiles.

Backends subclass both; `registry.get(name)` builds a Target from its `targets/*.toml` description.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..core import LatencyReport, ModelRef, OpTime, TensorSpec, TimingPlan, stable_hash


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
        self.id = target.artifact_id(model)
        self.labels: tuple[str, ...] = ()
        # backend facts that belong in the report's environment (e.g. the precision OpenVINO ran)
        self.env: dict[str, Any] = {}
        # peak RSS while the target compiled / loaded it (measure.memory.Phase), set by compile
        self.load_memory = None
        # the runtime's own memory counters where it exposes them (a plain JSON mapping, set by
        # the backend, e.g. ORT's arena statistics from its profiler in per_op); None: none read
        self.runtime_memory: dict[str, Any] | None = None

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
    """Where a model runs. Built from a `targets/*.toml` description by `deploykit.backends.registry.get`."""

    def __init__(self, name: str, config: Mapping[str, Any]):
        self.name = name
        self.config = dict(config)

    def artifact_id(self, model: ModelRef) -> str:
        """The id of `model` compiled for this target (lineage: input id, target, its config)."""
        return stable_hash(model.sha256, self.name, dict(self.config))

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
        from ..measure.timing import profile_artifact

        return profile_artifact(artifact, feeds, plan, per_op=per_op, progress=progress,
                                trace_path=trace_path)
