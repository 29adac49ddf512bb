"""Latency-guided compression search: measured latency, not FLOPs, decides what to apply.

1. Every candidate recipe (search/candidates.py) is applied with the recipe runner and its fidelity is
   checked against the original outputs (or a user eval) *before* anything is timed.
2. A per-layer lookup table (search/layer_table.py) predicts each surviving candidate's latency; only the
   promising ones are measured whole, and each whole measurement recalibrates the predictor.
3. The recommendation is measured once more, interleaved with the baseline, before it is reported.
Every measurement goes to the results store under a key of (model sha256, target fingerprint,
timing plan, inputs), and every built candidate stays in OUTDIR/.work, so a search killed at any
point continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..core import LatencyReport, ModelRef, Result, TimingPlan, stable_hash
from ..backends.base import Target
from ..errors import DeployKitError, InputError, VerificationError, first_line
from .candidates import Candidate

# Layer units are sub-millisecond: a short plan with a looser CI is enough for a lookup table.
UNIT_PLAN = TimingPlan(warmup_min_s=0.01, warmup_max_s=0.05, target_rel_ci=0.03, min_samples=15,
                       max_time_s=0.1, block_s=0.03)
WHOLE_PLAN = TimingPlan(warmup_min_s=0.1, warmup_max_s=1.0, target_rel_ci=0.02, min_samples=30,
                        max_time_s=2.0, block_s=0.25)
# --eval mode: a runtime other than ORT must give the same file's outputs within this cosine
RUNTIME_AGREEMENT = 0.99
BUILD_SHARE = 0.6  # of the time limit for building candidates; the rest is for measuring whole
NETADAPT_SHARE = 0.8  # per-layer (NetAdapt) moves may run until this share of the time limit
FINAL_PLAN = TimingPlan(warmup_min_s=0.2, warmup_max_s=2.0, target_rel_ci=0.01, min_samples=50,
                        max_time_s=8.0, block_s=0.5)


@dataclass(frozen=True)
class SearchConfig:
    budget_ms: float | None = None  # None: as fast as possible at min_fidelity
    min_fidelity: float = 0.99  # cosine vs original outputs, or eval metric / original's metric
    time_limit_s: float = 1200.0
    whole_fraction: float = 0.25  # measure at most this share of the candidates whole
    exhaustive: bool = False  # measure every candidate whole (to judge the predictor)
    target_options: bool = True  # also try thread counts / graph optimisation levels
    netadapt: bool = True  # also per-layer pruning ratios / ranks chosen by the layer table
    families: tuple[str, ...] = ()  # restrict the space ("int8", "prune", ...); empty: all
    # other runtimes (registry names) searched as alternatives; the recommendation stays on the
    # runtime of the target (search/experts.py)
    runtimes: tuple[str, ...] = ()
    experts: bool = True  # build and measure whole the expert recipes of each runtime first
    # seconds of distillation per pruned candidate of a torch source (search/recover.py); 0: off
    recover_budget_s: float = 0.0
    # seconds of distillation for the final pick: the deepest recovered prune still below the
    # floor after its short recovery is pruned and distilled again this long (0: off)
    recover_final_s: float = 0.0
    unit_plan: TimingPlan = UNIT_PLAN
    whole_plan: TimingPlan = WHOLE_PLAN
    final_plan: TimingPlan = FINAL_PLAN


@dataclass
class Row:
    """Everything the search learned about one candidate (JSON-able via `to_dict`)."""

    cand: Candidate
    status: str = "pending"  # ok | rejected | failed | duplicate | pending
    reason: str | None = None
    path: str | None = None
    sha256: str | None = None
    fidelity: float | None = None
    fidelity_detail: dict[str, Any] = field(default_factory=dict)
    metric: float | None = None  # raw user eval value
    stats: dict[str, Any] = field(default_factory=dict)  # params, bytes, flops
    notes: list[str] = field(default_factory=list)
    table_ms: float | None = None  # layer-table sum
    predicted_ms: float | None = None  # prediction made before it was measured whole
    measured: dict[str, Any] | None = None  # median_ms, ci95_ms, n, stop_reason
    reused: bool = False  # measurement came from the store
    expert: str | None = None  # why an expert would pick this recipe on this runtime
    runtime: str | None = None  # the runtime (target name) it runs on
    recovery: dict[str, Any] | None = None  # fidelity before/after distillation, its cost

    @property
    def median(self) -> float | None:
        return None if self.measured is None else self.measured["median_ms"]

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "cand"}
        d.update(self.cand.to_dict())
        return d


@dataclass
class SearchResult(Result):
    config: SearchConfig
    model: str
    target: str
    rows: list[Row]
    recommendation: dict[str, Any] | None
    infeasible: str | None
    predictor: dict[str, Any]
    cost: dict[str, Any]
    env: dict[str, Any]
    per_op: dict[str, list[dict[str, Any]]]
    notes: list[str]
    alternatives: list[dict[str, Any]] = field(default_factory=list)  # other runtimes' best
    runtimes: dict[str, Any] = field(default_factory=dict)  # searched / not searched

    def __repr__(self) -> str:
        rec = self.recommendation
        pick = (f"recommends {rec.get('recipe') or rec.get('id')} at {rec.get('median_ms')} ms"
                if rec else f"no recommendation ({self.infeasible})")
        return f"SearchResult({self.model} on {self.target}: {len(self.rows)} candidates, {pick})"

    def to_dict(self) -> dict[str, Any]:
        from .pareto import pareto_front

        ok = [r for r in self.rows if r.status == "ok" and r.median is not None]
        front = pareto_front([(r.median, r.fidelity) for r in ok], ("min", "max"))
        front3 = pareto_front([(r.median, r.fidelity, r.stats.get("bytes", 0)) for r in ok],
                              ("min", "max", "min"))
        cfg = asdict(self.config)
        return {"schema": 1, "kind": "deploykit-search", "model": self.model,
                "target": self.target, "config": cfg,
                "candidates": [r.to_dict() for r in self.rows],
                "pareto": [ok[i].cand.id for i in front],
                "pareto_size": [ok[i].cand.id for i in front3],  # latency, fidelity, bytes
                "recommendation": self.recommendation, "infeasible": self.infeasible,
                "predictor": self.predictor, "cost": self.cost, "env": self.env,
                "per_op": self.per_op, "notes": self.notes,
                "alternatives": self.alternatives, "runtimes": self.runtimes}


def load_eval(spec: str) -> Callable[[str], float]:
    """`module.py:fn` (or `package.module:fn`) -> fn(onnx_path) -> float."""
    import importlib
    import importlib.util

    mod_name, sep, fn_name = spec.rpartition(":")
    if not sep or not mod_name or not fn_name:
        raise InputError(f"bad --eval {spec!r}: expected module.py:function")
    try:
        if mod_name.endswith(".py"):
            p = Path(mod_name)
            if not p.exists():
                raise InputError(f"--eval file not found: {p}")
            s = importlib.util.spec_from_file_location(f"deploykit_eval_{p.stem}", p)
            mod = importlib.util.module_from_spec(s)
            s.loader.exec_module(mod)
        else:
            mod = importlib.import_module(mod_name)
    except InputError:
        raise
    except Exception as e:  # user code may raise anything while importing
        raise InputError(f"cannot import --eval module {mod_name}: {type(e).__name__}: {e}") \
            from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise InputError(f"--eval: {mod_name} has no function '{fn_name}'")
    return fn


def _target_fp(target: Target) -> dict[str, Any]:
    from ..measure.env import comparable_part, fingerprint

    return {**comparable_part(fingerprint(target.name, target.config, target.threads)),
            "config": {k: v for k, v in target.config.items() if k != "description"}}


def _feeds_digest(feeds: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(feeds):
        a = np.ascontiguousarray(feeds[k])
        h.update(k.encode())
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]




def reference_runtime(target: Target) -> bool:
    """Does `target` compute like the verification runtime (ORT's CPU provider)?"""
    providers = list(target.config.get("options", {}).get("providers", ["CPUExecutionProvider"]))
    return target.config.get("backend") == "ort" and providers[:1] == ["CPUExecutionProvider"]


def code_id() -> str:
    """The deploykit version and the library versions a built candidate depends on: a build
    made by other code is rebuilt, not reused from OUTDIR/.work."""
    from importlib import metadata

    from .._version import __version__

    versions = []
    for dist in ("onnx", "onnxruntime", "onnxscript", "onnx-ir", "onnxsim", "nncf", "numpy"):
        try:
            versions.append(f"{dist}={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{dist}=-")
    from .. import fidelity, rewrite

    # everything that builds or verifies a candidate: the rewrite package (steps, recipe runner,
    # calibration) and the fidelity checks
    sources = sorted([Path(fidelity.__file__), *Path(rewrite.__file__).parent.glob("*.py")])
    return stable_hash(__version__, versions,
                       [(p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in sources])


def measurement_key(kind: str, what: str, target: Target, plan: TimingPlan, feeds_id: str) -> str:
    """Store key of one measurement: what was timed, where, how, on which inputs."""
    return f"search:{kind}:" + stable_hash(what, _target_fp(target), asdict(plan), feeds_id, n=32)


class Search:
    """One search run; `run()` returns a SearchResult (its `infeasible` says when nothing fits)."""

    def __init__(self, model_path: Path, target_spec: str, cfg: SearchConfig, outdir: Path,
                 store, *, feeds: Mapping[str, np.ndarray],
                 calibration: Sequence[Mapping[str, np.ndarray]] = (), calibration_is_synthetic=True,
                 eval_fn: Callable[[str], float] | None = None, progress: bool = False,
                 threads: int | None = None, log: Callable[[str], None] | None = None,
                 torch_source=None):
        from ..backends import registry as targets

        self.cfg = cfg
        self.outdir = Path(outdir)
        self.work = self.outdir / ".work"
        self.store = store
        self.feeds = dict(feeds)
        self.feeds_id = _feeds_digest(self.feeds)
        self.calibration = tuple(calibration)
        self.synthetic = calibration_is_synthetic
        self.eval_fn = eval_fn
        self.progress = progress
        self.target_spec = target_spec
        self.target = targets.get(target_spec, threads=threads)
        self.threads = threads
        self.source = ModelRef.from_path(model_path)
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.t0 = time.monotonic()
        self.whole_now = self.whole_reused = 0
        self.notes: list[str] = []
        self.time_limit_hits: list[str] = []  # where the time limit cut the search short
        self._targets: dict[tuple, Target] = {(): self.target}
        self._base_metric: float | None = None
        self.netadapt_log: dict[str, Any] | None = None
        # a built candidate is reused only for the same source, inputs, calibration and code
        self.build_key = stable_hash(self.source.sha256, self.feeds_id, self.synthetic,
                                     [_feeds_digest(b) for b in self.calibration], code_id())
        self._ref_outputs: list[list[np.ndarray]] | None = None
        self._borrowed_table: set[tuple] = set()  # variants predicted from the default table
        self.torch_source = torch_source  # recover.TorchSource: pruned candidates can be distilled

    # ---- helpers --------------------------------------------------------------------------

    def time_left(self) -> float:
        return self.cfg.time_limit_s - (time.monotonic() - self.t0)

    def within_time(self, reserve: float, where: str) -> bool:
        """True while more than `reserve` seconds of the time limit are left; else records
        `where` the limit cut the search short (`cost.time_limit_reached`: a result says whether
        it is all the search would have done, or what the limit left out)."""
        if self.time_left() > reserve:
            return True
        if where not in self.time_limit_hits:
            self.time_limit_hits.append(where)
        return False

    def target_of(self, options: tuple) -> Target:
        if options not in self._targets:
            from .candidates import target_for

            opts = dict(options)
            if self.threads is not None and "threads" not in opts:
                opts["threads"] = self.threads
            self._targets[options] = target_for(self.target_spec, self.target.config,
                                                tuple(sorted(opts.items())))
        return self._targets[options]

    def _measure_whole(self, row: Row, plan: TimingPlan) -> LatencyReport | None:
        """Time the candidate whole on its target variant; None (row rejected, nothing timed)
        when its outputs on a runtime other than the reference one miss the fidelity floor."""
        target = self.target_of(row.cand.options)
        art = None
        try:
            if not reference_runtime(target):
                art = self._runtime_fidelity(row, target)
                if row.status != "ok":
                    return None
            key = measurement_key("whole", row.sha256, target, plan, self.feeds_id)
            rep = self.store.get_measurement(key)
            if rep is not None:
                self.whole_reused += 1
                row.reused = True
            else:
                art = art or target.compile(ModelRef.from_path(row.path))
                rep = target.profile(art, self.feeds, plan, per_op=False)
                self.store.put_measurement(key, rep, model=ModelRef.from_path(row.path))
                self.whole_now += 1
        finally:
            if art is not None:
                art.close()
        row.measured = {"median_ms": rep.median_ms, "ci95_ms": list(rep.ci95_ms),
                        "n": len(rep.samples_ms), "stop_reason": rep.stop_reason,
                        "cv": rep.cv, "contaminated_fraction": rep.contaminated_fraction,
                        "state": rep.validity.state}
        return rep

    def _verify_batches(self) -> list[dict[str, np.ndarray]]:
        return [self.feeds] + (list(self.calibration[:2]) if not self.synthetic else [])

    def _runtime_fidelity(self, row: Row, target: Target):
        """Fidelity of the candidate as `target` runs it: ORT (the verification runtime) and,
        say, OpenVINO's CPU plugin need not compute the same int8 model alike (OpenVINO
        quantizes the activations of int8-weight MatMuls at run time). Cosine mode: the worse of
        the ORT cosine and the runtime's (its outputs vs the original model's on ORT) becomes
        the row's fidelity, and a row below the floor is rejected before it is timed. --eval mode (the metric runs on ORT): the runtime
        must agree with ORT on the same file (cosine >= RUNTIME_AGREEMENT). Returns the compiled
        artifact (reused for timing), or None when the result came from OUTDIR/.work."""
        from ..fsutil import write_text_atomic
        from ..fidelity import Fidelity, compare, run_ort, worst

        cache = self.work / "runtime-fidelity" / (
            stable_hash(row.sha256, _target_fp(target), self.build_key) + ".json")
        art = None
        if cache.exists():
            fid = Fidelity(**json.loads(cache.read_text()))
        else:
            art = target.compile(ModelRef.from_path(row.path))
            batches = self._verify_batches()
            if self.eval_fn is None:
                if self._ref_outputs is None:
                    self._ref_outputs = [run_ort(self.source.path, b) for b in batches]
                refs = self._ref_outputs
            else:
                refs = [run_ort(row.path, b) for b in batches]
            fid = worst([compare(r, art.run(b)) for r, b in zip(refs, batches)])
            write_text_atomic(cache, json.dumps(asdict(fid), default=_json_default))
        against = "the original on ORT" if self.eval_fn is None else "the same file on ORT"
        row.fidelity_detail = {**row.fidelity_detail,
                               "runtime": {"target": target.name, "against": against,
                                           **fid.to_dict()}}
        if not row.cand.steps and not row.cand.options:
            return art  # the baseline as the user's target runs it: the reference point
        floor = self.cfg.min_fidelity if self.eval_fn is None else RUNTIME_AGREEMENT
        if not fid.finite or not fid.shapes_match or not fid.cosine >= floor:
            row.status = "rejected"
            row.reason = (f"on {target.name}: cosine {fid.cosine:.4f} vs {against} "
                          f"< {floor}")
        elif self.eval_fn is None:
            row.fidelity = min(row.fidelity, fid.cosine) if row.fidelity is not None \
                else fid.cosine
        return art

    def _time_unit(self, target: Target, sig: str, path: Path,
                   feeds: Mapping[str, np.ndarray]) -> float:
        key = measurement_key("unit", sig, target, self.cfg.unit_plan, "unit")
        art = target.compile(ModelRef.from_path(path))
        try:
            rep = target.profile(art, feeds, self.cfg.unit_plan, per_op=False)
        finally:
            art.close()
        self.store.put_measurement(key, rep)
        return rep.median_ms

    def _lookup_unit(self, target: Target, sig: str) -> float | None:
        rep = self.store.get_measurement(
            measurement_key("unit", sig, target, self.cfg.unit_plan, "unit"))
        return None if rep is None else rep.median_ms

    # ---- building candidates --------------------------------------------------------------

    def _fidelity(self, row: Row) -> None:
        """Fidelity vs the original: user metric ratio, else cosine over the verify batches."""
        from ..rewrite.recipe import fidelity_over

        fid = fidelity_over(self.source.path, Path(row.path), self._verify_batches())
        row.fidelity_detail = fid.to_dict()
        if not fid.finite or not fid.shapes_match:
            row.status, row.reason = "rejected", "outputs are not finite or have the wrong shape"
            return
        if self.eval_fn is None:
            row.fidelity = fid.cosine
            return
        try:
            row.metric = float(self.eval_fn(row.path))
        except Exception as e:  # user code: name the candidate, keep searching
            row.status = "failed"
            row.reason = f"--eval raised {type(e).__name__}: {e}"
            self.log(f"warning: candidate '{row.cand.name}': {row.reason}")
            return
        base = self._base_metric
        row.fidelity = row.metric / base if base else float("nan")

    def build(self, row: Row) -> None:
        """Apply the recipe (cached in .work), then check fidelity; sets row.status."""
        from ..report.realized import model_stats

        cache = self.work / stable_hash("build", row.cand.model_id, self.build_key) / \
            "candidate.json"
        if not row.cand.steps:
            row.path, row.sha256 = str(self.source.path), self.source.sha256
        elif cache.exists():
            d = json.loads(cache.read_text())
            row.status, row.reason, row.notes = d["status"], d["reason"], d["notes"]
            row.path, row.sha256 = d["path"], d["sha256"]
            row.recovery = d.get("recovery")
            if row.status != "pending":
                return
        else:
            self._apply(row, cache)
            if row.status != "pending":
                return
        row.stats = asdict(model_stats(Path(row.path), self.feeds))
        row.stats.pop("op_counts", None)
        self._fidelity(row)
        if row.status == "pending":
            if row.fidelity is None or not row.fidelity >= self.cfg.min_fidelity:
                row.status = "rejected"
                row.reason = f"fidelity {row.fidelity:.4f} < {self.cfg.min_fidelity}"
            else:
                row.status = "ok"

    def _apply(self, row: Row, cache: Path) -> None:
        from ..fsutil import write_text_atomic
        from ..rewrite.recipe import make_step, run_recipe
        from ..rewrite import StepContext
        from .recover import STEP

        if row.cand.steps[0][0] == STEP:
            return self._apply_torch(row, cache)
        workdir = cache.parent
        ctx = StepContext(feeds=self.feeds, calibration=self.calibration,
                          calibration_is_synthetic=self.synthetic, workdir=workdir,
                          target=self.target.name)
        try:
            steps = [make_step(name, dict(fields)) for name, fields in row.cand.steps]
            # each step is judged by the fidelity kind it declares (exact rewrites tightly,
            # lossy ones only for broken output); the search's own gate is min_fidelity
            res = run_recipe(self.source, steps, ctx)
        except VerificationError as e:
            row.status, row.reason = "rejected", str(e)
        except DeployKitError as e:
            row.status, row.reason = "failed", str(e)
        except Exception as e:  # a bug in one step must not end the whole search
            row.status = "failed"
            row.reason = f"{type(e).__name__}: {e} ({traceback.extract_tb(e.__traceback__)[-1].name})"
        else:
            skipped = [f"{s.name}: {s.skipped}" for s in res.steps if s.skipped]
            row.notes = sorted({n for s in res.steps for n in s.notes})
            if skipped:
                row.status, row.reason = "duplicate" if not res.applied else "failed", \
                    "skipped " + "; ".join(skipped)
            row.path, row.sha256 = str(res.final.path), res.final.sha256
            # lineage of every built candidate: source -> step -> ... -> candidate
            for m in (res.source, *(st.output for st in res.applied)):
                self.store.record_model(m)
        write_text_atomic(cache, json.dumps({"status": row.status, "reason": row.reason,
                                             "notes": row.notes, "path": row.path,
                                             "sha256": row.sha256}))

    def _apply_torch(self, row: Row, cache: Path) -> None:
        """A torch-side prune recovered by distillation (search/recover.py), then the rest of the
        recipe as ordinary rewrite steps on its export; the first step's build is shared."""
        from ..fsutil import write_text_atomic
        from ..rewrite import StepContext
        from ..rewrite.recipe import make_step, run_recipe
        from .recover import build_recovered

        first, rest = row.cand.steps[0], row.cand.steps[1:]
        workdir = cache.parent
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            if self.torch_source is None:
                raise InputError("a torch-prune candidate needs the torch source")
            if rest:  # the recovered model itself is a candidate: built (and cached) once
                head = Row(Candidate(row.cand.family.replace("+int8", ""), (first,)))
                self.build(head)
                if head.path is None or head.status == "failed":
                    raise InputError(head.reason or "the recovered model failed to build")
                path, rec = Path(head.path), head.recovery
                ctx = StepContext(feeds=self.feeds, calibration=self.calibration,
                                  calibration_is_synthetic=self.synthetic, workdir=workdir,
                                  target=self.target.name)
                res = run_recipe(ModelRef.from_path(path),
                                 [make_step(n, dict(f)) for n, f in rest], ctx)
                path = Path(res.final.path)
            else:
                f = dict(first[1])
                path, rec = build_recovered(
                    self.torch_source, self.source.path, float(f["ratio"]),
                    float(f["budget_s"]), list(self.calibration) or [self.feeds],
                    self._verify_batches(), self.cfg.min_fidelity, workdir, self.synthetic)
            ref = ModelRef.from_path(path)
            row.path, row.sha256, row.recovery = str(path), ref.sha256, rec
        except VerificationError as e:
            row.status, row.reason = "rejected", str(e)
        except DeployKitError as e:
            row.status, row.reason = "failed", str(e)
        except Exception as e:  # a bug in one candidate must not end the whole search
            row.status = "failed"
            row.reason = f"{type(e).__name__}: {first_line(e)}"
        write_text_atomic(cache, json.dumps({"status": row.status, "reason": row.reason,
                                             "notes": row.notes, "path": row.path,
                                             "sha256": row.sha256, "recovery": row.recovery},
                                            default=_json_default))

    def _recover_candidates(self, source_model) -> list[Candidate]:
        """Torch-side prunes recovered by distillation (and each made int8), when the source is
        a torch module and --recover-budget allows; a note says why not otherwise."""
        from .candidates import available_steps, int8_finish, model_traits
        from .recover import RATIOS, STEP, UNAVAILABLE_ONNX

        budget = self.cfg.recover_budget_s
        if budget <= 0 or (self.cfg.families and "prune" not in self.cfg.families):
            return []
        if self.torch_source is None:
            self.notes.append(UNAVAILABLE_ONNX)
            return []
        traits = model_traits(source_model)
        finish = int8_finish(traits, available_steps(["quantize-static", "quantize-dynamic"])) \
            if not self.cfg.families or "int8" in self.cfg.families else []
        out = []
        for r in RATIOS:
            step = (STEP, (("budget_s", budget), ("ratio", r)))
            out.append(Candidate("prune+kd", (step,)))
            out += [Candidate("prune+kd+int8", (step, q)) for q in finish]
        return out

    # ---- the search -----------------------------------------------------------------------

    def run(self) -> SearchResult:
        from ..onnxio import load_onnx
        from .layer_table import LayerTable, Predictor
        from .candidates import model_candidates, option_variants

        source_model = load_onnx(self.source.path)
        models = model_candidates(source_model, self.cfg.min_fidelity, self.cfg.families)
        runtimes = tuple(self.cfg.runtimes)
        variants = option_variants(self.target, runtimes) if self.cfg.target_options else \
            [(), *((("target", n),) for n in runtimes)]
        experts = self._experts(source_model, models, runtimes)
        # the experts' recipes first: built whatever the time limit, then measured whole; then
        # the recovered prunes of a torch source (their training takes the longest)
        models = [models[0], *(c for c in models[1:] if c.model_id in experts),
                  *self._recover_candidates(source_model),
                  *(c for c in models[1:] if c.model_id not in experts)]
        n_experts = sum(c.model_id in experts for c in models)
        self._experts_by_model = experts
        base = Row(models[0])
        if self.eval_fn is not None:
            try:
                self._base_metric = float(self.eval_fn(str(self.source.path)))
            except Exception as e:
                raise InputError(f"--eval failed on the original model: {type(e).__name__}: {e}") \
                    from None
        self.build(base)
        rows_by_model: dict[str, Row] = {base.cand.model_id: base}
        rows: list[Row] = [base]
        for v in variants[1:]:
            r = Row(base.cand.with_options(v))
            self._copy_build(base, r)
            rows.append(r)
        n_space = len(models) * len(variants)

        # one layer table per target variant: a unit's latency depends on threads and graph level
        self._tables = {v: LayerTable(partial(self._time_unit, self.target_of(v)),
                                      partial(self._lookup_unit, self.target_of(v)),
                                      self.work / "units") for v in variants}
        bar = _Bar(self.progress, n_space)
        try:
            # 1. the baseline measured whole: the predictor's anchor; its variants only tabled
            self._measure_whole(base, self.cfg.whole_plan)
            for r in rows:
                r.table_ms = self._estimate(r)
                bar.advance(r)
            # (table sum, measured) per target variant: a variant's scale can differ (two threads
            # suffer more than one from foreign load; another runtime fuses differently)
            points: dict[tuple, list[tuple[float, float]]] = {v: [] for v in variants}
            if base.table_ms is not None:
                points[()].append((base.table_ms, base.median))

            # 2. build, verify and table-estimate every model candidate (cheap families first)
            sha_seen = {base.sha256: base}
            for i, cand in enumerate(models[1:]):
                if i == n_experts:  # every expert recipe built: measure them whole, now
                    self._measure_experts(rows, points, bar)
                if i >= n_experts and not self.within_time(
                        (1 - BUILD_SHARE) * self.cfg.time_limit_s, "building candidates"):
                    self.notes.append("time limit reached while building candidates; "
                                      f"{len(models) - len(rows_by_model)} recipes not tried")
                    break
                row = Row(cand)
                self.build(row)
                if row.status == "ok" and row.sha256 in sha_seen:
                    row.status = "duplicate"
                    row.reason = f"same model as {sha_seen[row.sha256].cand.name}"
                if row.status == "ok":
                    sha_seen[row.sha256] = row
                    row.table_ms = self._estimate(row)
                rows_by_model[cand.model_id] = row
                rows.append(row)
                rows += self._variant_rows(row, variants)
                bar.advance(row, len(variants))
                self._status(bar, rows)
            if n_experts == len(models) - 1:
                self._measure_experts(rows, points, bar)

            # 2a. recovery's final, longer fine-tune of the deepest prune still below the floor
            # (NetAdapt's long-term fine-tune; search/recover.py picks it)
            from .recover import final_candidates

            while True:  # deepest first; the next one only when a final one missed the floor
                finals, why_not = final_candidates(
                    rows, self.cfg.recover_final_s, self.time_left(),
                    (1 - BUILD_SHARE) * self.cfg.time_limit_s)
                if why_not:
                    self.notes.append(why_not)
                if not finals:
                    break
                self._build_finals(finals, rows, sha_seen, variants, bar)
                n_space += len(finals) * len(variants)

            # 2b. NetAdapt: per-layer cuts, each iteration keeping the most faithful proposal
            # that meets its latency goal on the layer table; then int8 on the last ones
            if self.cfg.netadapt and base.table_ms is not None:
                na_rows, kept = self._netadapt(base, sha_seen, bar)
                kept_ids = {id(r) for r in kept}
                for row in na_rows:  # other target variants only for the deepest kept states
                    rows.append(row)
                    if id(row) in kept_ids and self.within_time(0, "NetAdapt target variants"):
                        variant_rows = self._variant_rows(row, variants)
                        rows += variant_rows
                        n_space += len(variant_rows)
                n_space += len(na_rows)

            # 3. measure whole what the calibrated table says could win
            timeable = [r for r in rows if r.status == "ok"]
            # the cap counts only candidates that passed fidelity (what exhaustive search times);
            # the anchor, one candidate per variant and one more are measured even past the time
            # limit: the predictor needs them, and the report judges it on them
            min_whole = min(len(timeable), len(variants) + 2)
            max_whole = len(timeable) if self.cfg.exhaustive else \
                max(min_whole, math.floor(self.cfg.whole_fraction * len(timeable)))
            errors: list[float] = []
            while True:
                measured = [r for r in timeable if r.median is not None]
                if len(measured) >= max_whole or (len(measured) >= min_whole and
                                                  not self.within_time(0, "whole measurements")):
                    break
                everywhere = [p for pts in points.values() for p in pts]
                pool = [r for r in timeable if r.median is None]
                if not pool:
                    break
                for r in pool:
                    pts = points[r.cand.options] or everywhere
                    r.predicted_ms = None if r.table_ms is None or not pts else \
                        Predictor(tuple(pts)).predict(r.table_ms)
                margin = max(0.05, float(np.mean(np.abs(errors))) if errors else 0.05)
                # calibrate every variant first: its most promising candidate, measured whole
                fresh = [r for r in pool if not points[r.cand.options]
                         and r.predicted_ms is not None]
                # a runtime without a layer table of its own: measured whole, in turn with the
                # predicted ones (a fair share of the whole measurements), the same model's
                # table sum on the default variant only ordering them
                whole_only = [r for r in pool if r.table_ms is None and self._whole_only(r)]
                done_whole = sum(self._whole_only(r) for r in measured)
                if self.cfg.exhaustive:
                    nxt = pool[0]
                elif fresh:
                    nxt = min(fresh, key=lambda r: r.predicted_ms)
                else:
                    nxt = self._next([r for r in pool if r not in whole_only],
                                     measured if len(measured) >= min_whole else [], margin)
                if whole_only and (nxt is None or done_whole * 2 < len(measured)):
                    hint = {r.cand.model_id: r.table_ms for r in rows if not r.cand.options
                            and r.table_ms is not None}
                    nxt = min(whole_only, key=lambda r: hint.get(r.cand.model_id, math.inf))
                if nxt is None:
                    break
                try:
                    if self._measure_whole(nxt, self.cfg.whole_plan) is None:
                        timeable.remove(nxt)  # below the floor on its own runtime
                        continue
                except DeployKitError as e:  # e.g. a runtime that cannot load this model
                    nxt.status, nxt.reason = "failed", str(e)
                    timeable.remove(nxt)
                    continue
                if nxt.predicted_ms is not None:
                    errors.append((nxt.predicted_ms - nxt.median) / nxt.median)
                if nxt.table_ms is not None:
                    points[nxt.cand.options].append((nxt.table_ms, nxt.median))
                bar.advance(nxt, 0)
                self._status(bar, rows)
        finally:
            bar.close()

        # 4. the recommendation (on the target's runtime), measured interleaved against the
        # baseline; each other runtime searched: its best, measured the same way
        for r in rows:
            r.runtime = self.runtime_of(r)
            r.expert = r.expert or experts.get(r.cand.model_id, {}).get(r.cand.options)
        own = [r for r in rows if r.runtime == self.target.name]
        recommendation, infeasible, per_op = self._recommend(own, base)
        alternatives = [self._alternative(rows, base, n) for n in runtimes]
        tested = [r for r in rows if r.median is not None and r.predicted_ms is not None]
        errs = [(r.predicted_ms - r.median) / r.median for r in tested]
        rank = None
        if len(tested) >= 5:  # fewer points give a rank correlation of pure chance
            from scipy.stats import spearmanr

            rank = float(spearmanr([r.predicted_ms for r in tested],
                                   [r.median for r in tested]).statistic)
        predictor = {
            "measured_whole": len(tested),
            "mean_abs_rel_error": float(np.mean(np.abs(errs))) if errs else None,
            "max_abs_rel_error": float(np.max(np.abs(errs))) if errs else None,
            "errors": [{"id": r.cand.id, "predicted_ms": r.predicted_ms, "measured_ms": r.median}
                       for r in tested],
            "rank_correlation": rank,  # Spearman: does the table order candidates right?
            "scale": {",".join(f"{k}={v}" for k, v in opts) or "default":
                      Predictor(tuple(pts)).scale() for opts, pts in points.items() if pts},
            "baseline_table_ms": base.table_ms, "baseline_measured_ms": base.median,
        }
        timeable = [r for r in rows if r.status == "ok"]
        cost = {"candidates": n_space, "built": len(rows),
                "fidelity_ok": len(timeable),
                "measured_whole": sum(r.median is not None for r in rows),
                "whole_measured_now": self.whole_now, "whole_reused": self.whole_reused,
                "units_timed": sum(t.timed for t in self._tables.values()),
                "units_reused": sum(t.reused for t in self._tables.values()),
                "seconds": time.monotonic() - self.t0, "exhaustive": self.cfg.exhaustive,
                "time_limit_reached": list(self.time_limit_hits),
                "netadapt": self.netadapt_log}
        from ..measure.env import fingerprint

        return SearchResult(self.cfg, str(self.source.path), self.target.name, rows,
                            recommendation, infeasible, predictor, cost,
                            fingerprint(self.target.name, self.target.config, self.target.threads),
                            per_op, self.notes, alternatives, self._runtimes_info(runtimes))

    def runtime_of(self, row: Row) -> str:
        """The runtime (target name) a candidate runs on."""
        return dict(row.cand.options).get("target", self.target.name)

    def _whole_only(self, row: Row) -> bool:
        """Is the candidate on another runtime whose layer table cannot be built?"""
        return "target" in dict(row.cand.options) and row.cand.options in self._borrowed_table

    def _experts(self, source_model, models: list[Candidate], runtimes: Sequence[str]
                 ) -> dict[str, dict[tuple, str]]:
        """{model id: {target variant: why}}: the expert recipes of every runtime searched,
        added to `models` when the space lacks them (not when --families leaves out int8)."""
        from .candidates import available_steps
        from .experts import expert_steps

        if not self.cfg.experts or (self.cfg.families and "int8" not in self.cfg.families):
            return {}
        have = available_steps(["quantize-static", "quantize-dynamic", "nncf-int8",
                                "nncf-weights"])
        out: dict[str, dict[tuple, str]] = {}
        known = {c.model_id for c in models}
        for opts in [(), *((("target", n),) for n in runtimes)]:
            backend = self.target_of(opts).config.get("backend", "")
            for step, why in expert_steps(source_model, backend, have):
                cand = Candidate("int8", (step,))
                if cand.model_id not in known:
                    models.append(cand)
                    known.add(cand.model_id)
                out.setdefault(cand.model_id, {})[opts] = why
        return out

    def _measure_experts(self, rows: list[Row], points: dict, bar: "_Bar") -> None:
        """Measure whole every expert recipe on its own runtime, whatever the predictor says."""
        from .layer_table import Predictor

        for r in rows:
            why = self._experts_by_model.get(r.cand.model_id, {}).get(r.cand.options)
            if why is None:
                continue
            r.expert = why
            if r.status != "ok" or r.median is not None:
                continue
            pts = points.get(r.cand.options)
            if r.table_ms is not None and pts:  # a real prediction, made before measuring
                r.predicted_ms = Predictor(tuple(pts)).predict(r.table_ms)
            try:
                if self._measure_whole(r, self.cfg.whole_plan) is None:
                    continue  # below the floor on its own runtime
            except DeployKitError as e:
                r.status, r.reason = "failed", str(e)
                continue
            if r.table_ms is not None:
                points[r.cand.options].append((r.table_ms, r.median))
            bar.advance(r, 0)
            self._status(bar, rows)

    def _alternative(self, rows: list[Row], base: Row, runtime: str) -> dict[str, Any]:
        """Another runtime's best candidate, measured interleaved with the baseline on the
        target (its ratio is what switching runtimes would buy), or why there is none."""
        from ..measure.timing import Comparison
        from ..report.realized import verdict

        mine = [r for r in rows if r.runtime == runtime]
        best = self._best(mine)
        if best is None:
            why = "no candidate passed fidelity and was measured on it" if mine else \
                "not searched"
            return {"runtime": runtime, "id": None, "reason": why}
        try:
            reports = self._compare(base, best)
        except DeployKitError as e:
            return {"runtime": runtime, "id": best.cand.id, "name": best.cand.name,
                    "reason": f"interleaved measurement failed: {first_line(e)}"}
        sp, lo, hi = Comparison(tuple(reports), ("baseline", best.cand.name)).speedup(1, 0)
        return {"runtime": runtime, "id": best.cand.id, "name": best.cand.name,
                "recipe": best.cand.recipe, "options": dict(best.cand.options),
                "median_ms": reports[1].median_ms, "ci95_ms": list(reports[1].ci95_ms),
                "baseline_ms": reports[0].median_ms, "speedup": sp, "speedup_ci95": [lo, hi],
                "verdict": verdict(lo, hi), "fidelity": best.fidelity, "expert": best.expert,
                "interleaved": True}

    def _runtimes_info(self, runtimes: Sequence[str]) -> dict[str, Any]:
        from .experts import other_runtimes

        try:
            installed = other_runtimes(self.target, None)
        except Exception:  # only informative
            installed = ()
        return {"recommendation": self.target.name, "searched": [self.target.name, *runtimes],
                "not_searched": [n for n in installed if n not in runtimes]}

    def _build_finals(self, cands, rows: list[Row], sha_seen: dict[str, Row],
                      variants: Sequence[tuple], bar: "_Bar") -> None:
        """Build recovery's final candidates (search/recover.py) into `rows`, on every variant."""
        for cand in cands:
            row = Row(cand)
            self.build(row)
            if row.status == "ok" and row.sha256 not in sha_seen:
                sha_seen[row.sha256] = row
                row.table_ms = self._estimate(row)
            elif row.status == "ok":
                row.status, row.reason = "duplicate", \
                    f"same model as {sha_seen[row.sha256].cand.name}"
            rows.append(row)
            rows += self._variant_rows(row, variants)
            bar.grow(row)

    def _variant_rows(self, row: Row, variants: Sequence[tuple]) -> list[Row]:
        """The candidate on every other target variant (same model, own table estimate)."""
        out = []
        for v in variants[1:]:
            vr = Row(row.cand.with_options(v))
            self._copy_build(row, vr)
            if vr.status == "ok":
                vr.table_ms = self._estimate(vr)
            out.append(vr)
        return out

    def _netadapt(self, base: Row, sha_seen: dict[str, Row], bar: "_Bar"
                  ) -> tuple[list[Row], list[Row]]:
        """(every row the NetAdapt loop (search/netadapt.py) built, the deepest ones it kept): its
        proposals, and the int8 composition of the last two accepted states. A failure inside
        the loop (e.g. a graph shape inference cannot follow) ends only the loop, with a note."""
        out: list[Row] = []
        try:
            return out, self._netadapt_loop(base, sha_seen, bar, out)
        except Exception as e:  # the rows built so far stay; the search goes on without it
            self.notes.append(f"NetAdapt per-layer loop stopped: {type(e).__name__}: "
                              f"{first_line(e)}")
            return out, []

    def _netadapt_loop(self, base: Row, sha_seen: dict[str, Row], bar: "_Bar",
                       out: list[Row]) -> list[Row]:
        import onnx

        from ..onnxio import load_onnx
        from .netadapt import NetAdaptConfig, layer_costs, layers_of, netadapt
        from .candidates import Candidate, available_steps, int8_finish, model_traits

        source = load_onnx(self.source.path)
        traits = model_traits(source)
        kinds = {k for k in ("prune", "lowrank")
                 if not self.cfg.families or k in self.cfg.families}
        # transformers' structured pruning (feed-forward neurons, attention heads) is "prune" too
        kinds |= {"ffn", "heads"} if "prune" in kinds else set()
        have = available_steps(["prune-channels", "prune-ffn", "prune-heads", "lowrank",
                                "quantize-static", "quantize-dynamic"])
        kinds &= {k for k, st in (("prune", "prune-channels"), ("ffn", "prune-ffn"),
                                  ("heads", "prune-heads"), ("lowrank", "lowrank")) if st in have}
        if traits["quantized"] or not kinds:
            return []
        layers = layers_of(source, kinds)
        if not layers:
            return []
        limit = (1 - NETADAPT_SHARE) * self.cfg.time_limit_s
        estimates: dict[str, Any] = {}  # model path -> its layer-table estimate

        def add(cand: Candidate) -> Row:
            row = Row(cand)
            self.build(row)
            if row.status == "ok" and row.sha256 in sha_seen:
                seen = sha_seen[row.sha256]
                row.status, row.reason = "duplicate", f"same model as {seen.cand.name}"
                row.table_ms = seen.table_ms  # the loop may still step past it
            elif row.status == "ok":
                sha_seen[row.sha256] = row
                row.table_ms = self._estimate(row, estimates)
            out.append(row)
            bar.grow(row)
            self._status(bar, out)
            return row

        def propose(state: dict) -> Row:
            from .netadapt import state_steps

            family = "+".join(sorted({f"{k}/layer" for k, _ in state}))
            return add(Candidate(family, state_steps(state)))

        def costs(row: Row | None) -> dict[str, float]:  # a kept row was estimated when built
            m = source if row is None else onnx.load(row.path)
            est = None if row is None else estimates.get(row.path)
            return layer_costs(m, est or self._tables[()].estimate(m, self.feeds), layers)

        def done(row: Row) -> bool:  # the budget, on the baseline-calibrated table
            return self.cfg.budget_ms is not None and base.median is not None and \
                row.table_ms * base.median / base.table_ms <= self.cfg.budget_ms

        accepted, log = netadapt(base.table_ms, layers, NetAdaptConfig(), propose, costs, done,
                                 lambda: self.within_time(limit, "NetAdapt"))
        self.netadapt_log = {"layers": len(layers), "proposals": len(out),
                             "iterations": [asdict(it) for it in log]}
        finish = int8_finish(traits, have) if not self.cfg.families or \
            "int8" in self.cfg.families else []
        kept = accepted[-2:]  # the two deepest cuts, and those made int8
        for row in accepted[-2:] if finish else []:
            if not self.within_time(limit, "NetAdapt int8"):
                break
            kept.append(add(Candidate(row.cand.family + "+int8", row.cand.steps + tuple(finish))))
        return kept

    def _copy_build(self, src: Row, dst: Row) -> None:
        for k in ("status", "reason", "path", "sha256", "fidelity", "fidelity_detail", "metric",
                  "stats", "notes"):
            setattr(dst, k, getattr(src, k))

    def _estimate(self, row: Row, keep: dict | None = None) -> float | None:
        """Layer-table sum of a candidate on its target variant; None (and a note) when its graph
        cannot be cut. A target variant that cannot time a unit alone (a runtime refusing a
        fragment) uses the default variant's table from then on: its own whole measurements
        calibrate that table's scale for it, so its candidates are still ranked and measured.
        `keep` collects the per-unit estimate by model path (NetAdapt ranks layers by it)."""
        import onnx

        opts = row.cand.options
        model = onnx.load(row.path)
        other_runtime = "target" in dict(opts)
        if opts and opts not in self._borrowed_table:
            try:
                return self._table_estimate(opts, model, row.path, keep)
            except Exception as e:
                self._borrowed_table.add(opts)
                self.notes.append(
                    f"{row.cand.name}: no layer table of its own ({type(e).__name__}: "
                    f"{first_line(e)}); " + (
                        "its candidates on this runtime are measured whole instead of predicted "
                        "from another runtime's table" if other_runtime else
                        "this target variant is predicted from the default variant's table, "
                        "scaled by its own whole measurements"))
        if other_runtime and opts in self._borrowed_table:
            return None
        try:
            return self._table_estimate((), model, row.path, keep)
        except Exception as e:  # an uncuttable graph only costs the prediction, not the search
            self.notes.append(f"{row.cand.name}: no layer table ({type(e).__name__}: "
                              f"{first_line(e)}); measured whole only if no predicted candidate "
                              "is left")
            return None

    def _table_estimate(self, opts: tuple, model, path: str, keep: dict | None) -> float:
        est = self._tables[opts].estimate(model, self.feeds)
        if keep is not None:
            keep[path] = est
        return est.total_ms

    def _next(self, pool: list[Row], measured: list[Row], margin: float) -> Row | None:
        """The unmeasured candidate most likely to beat the incumbent, or None."""
        unknown = [r for r in pool if r.predicted_ms is None]
        pool = [r for r in pool if r.predicted_ms is not None]
        if not pool:  # no table for these (e.g. a runtime that cannot run a unit alone)
            return unknown[0] if unknown else None
        best = self._best(measured)
        if self.cfg.budget_ms is None:
            r = min(pool, key=lambda r: r.predicted_ms)
            if best is not None and r.predicted_ms > best.median * (1 + margin):
                return None
            return r
        room = self.cfg.budget_ms * (1 + margin)
        fits = [r for r in pool if r.predicted_ms <= room
                and (best is None or r.fidelity > best.fidelity
                     or (r.fidelity == best.fidelity and r.predicted_ms < best.median))]
        if fits:
            return max(fits, key=lambda r: (r.fidelity, -r.predicted_ms))
        if best is None:
            return min(pool, key=lambda r: r.predicted_ms)
        return None

    def _best(self, measured: Sequence[Row]) -> Row | None:
        """Least latency (no budget) or most fidelity within the budget."""
        ok = [r for r in measured if r.median is not None and r.status == "ok"]
        if self.cfg.budget_ms is None:
            return min(ok, key=lambda r: r.median, default=None)
        fits = [r for r in ok if r.median <= self.cfg.budget_ms]
        return max(fits, key=lambda r: (r.fidelity, -r.median), default=None)

    def _recommend(self, rows: list[Row], base: Row):
        """Interleaved baseline-vs-best comparison; the next best is tried (up to 3) when the
        interleaved run shows the first one outside the budget."""
        from ..measure.timing import Comparison
        from ..report.realized import verdict

        ok = [r for r in rows if r.status == "ok" and r.median is not None]
        tried: set[str] = set()
        per_op: dict[str, list[dict[str, Any]]] = {}
        for _ in range(3):
            best = self._best([r for r in ok if r.cand.id not in tried])
            if best is None:
                break
            tried.add(best.cand.id)
            reports = self._compare(base, best)
            comp = Comparison(tuple(reports), ("baseline", best.cand.name))
            sp, lo, hi = comp.speedup(1, 0)
            med = reports[1].median_ms
            rec = {"id": best.cand.id, "name": best.cand.name, "recipe": best.cand.recipe,
                   "options": dict(best.cand.options), "median_ms": med,
                   "ci95_ms": list(reports[1].ci95_ms), "baseline_ms": reports[0].median_ms,
                   "baseline_ci95_ms": list(reports[0].ci95_ms), "speedup": sp,
                   "speedup_ci95": [lo, hi], "verdict": verdict(lo, hi),
                   "fidelity": best.fidelity, "path": best.path, "sha256": best.sha256,
                   "interleaved": True}
            per_op = {"baseline": [asdict(o) for o in reports[0].per_op],
                      "recommendation": [asdict(o) for o in reports[1].per_op]}
            if self.cfg.budget_ms is None or med <= self.cfg.budget_ms:
                return rec, None, per_op
            best.notes.append(f"interleaved re-measurement {med:.3f} ms exceeds the budget")
        fastest = min(ok, key=lambda r: r.median, default=None)
        if fastest is None:
            msg = (f"no candidate meets {self.cfg.budget_ms} ms; no candidate reached fidelity "
                   f"{self.cfg.min_fidelity}")
        else:
            msg = (f"no candidate meets {self.cfg.budget_ms:g} ms; fastest found is "
                   f"{fastest.median:.3f} ms at fidelity {fastest.fidelity:.4f} "
                   f"({fastest.cand.name})")
        return None, msg, per_op

    def _compare(self, base: Row, best: Row) -> list[LatencyReport]:
        from ..measure.timing import compare

        plan = self.cfg.final_plan
        # Targets as deployed (spinning included): measure_many alternates blocks of ~0.25 s, so
        # the idle session's pool is asleep while the other one runs. Turning spinning off here
        # would time a configuration nobody deploys (it slows 2-thread runs of small models).
        ta, tb = self.target_of(()), self.target_of(best.cand.options)
        keys = [measurement_key("final:0", f"{base.sha256}|{best.sha256}|{best.cand.id}", ta,
                                plan, self.feeds_id),
                measurement_key("final:1", f"{base.sha256}|{best.sha256}|{best.cand.id}", tb,
                                plan, self.feeds_id)]
        got = [self.store.get_measurement(k) for k in keys]
        if all(got):
            self.whole_reused += 1
            return got
        arts = [ta.compile(ModelRef.from_path(base.path)), tb.compile(ModelRef.from_path(best.path))]
        try:
            comp = compare(arts, [self.feeds, self.feeds], plan, per_op=True,
                           names=["baseline", best.cand.name])
        finally:
            for a in arts:
                a.close()
        for k, rep, r in zip(keys, comp.reports, (base, best)):
            self.store.put_measurement(k, rep, model=ModelRef.from_path(r.path))
        self.whole_now += 1
        return list(comp.reports)

    def _status(self, bar: "_Bar", rows: list[Row]) -> None:
        best = self._best([r for r in rows if r.median is not None])
        if best is not None:
            bar.describe(f"best {best.median:.3f} ms @ fidelity {best.fidelity:.4f} "
                         f"({best.cand.name})")


class _Bar:
    """Progress over the candidate space, showing the current best."""

    def __init__(self, enabled: bool, total: int):
        self._p = None
        if enabled:
            from ..progress import progress_bar

            self._p = progress_bar(True, "search", count=True)
            self._p.start()
            self._task = self._p.add_task("", total=total, info="")

    def advance(self, row: Row, n: int = 1) -> None:
        if self._p:
            self._p.advance(self._task, n)

    def grow(self, row: Row) -> None:
        """One more candidate than the space counted at the start (a NetAdapt proposal)."""
        if self._p:
            task = self._p.tasks[0]
            self._p.update(self._task, total=(task.total or 0) + 1, advance=1)

    def describe(self, text: str) -> None:
        if self._p:
            self._p.update(self._task, info=text)

    def close(self) -> None:
        if self._p:
            self._p.stop()


def write_outputs(result: SearchResult, outdir: Path) -> dict[str, Path]:
    """search.json, the recommended model and the report, committed together; a run without a
    recommendation removes the recommended.onnx an earlier run left in `outdir`."""
    from ..outputs import Outputs
    from ..report.html import write_report

    data = result.to_dict()
    paths = {"json": outdir / "search.json"}
    with Outputs() as outs:
        if result.recommendation:
            paths["model"] = outdir / "recommended.onnx"
            outs.copy(result.recommendation["path"], paths["model"])
            data["recommendation"]["exported"] = str(paths["model"])
        else:
            outs.remove(outdir / "recommended.onnx")
        outs.json(paths["json"], data)
        paths.update(write_report(json.loads(json.dumps(data, default=_json_default)), outdir,
                                  outs))
        outs.commit()
    return paths


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.generic,)):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return str(x)
