"""Building candidates and the fidelity gate: a candidate's recipe is applied by the recipe runner
(or, for a torch-side prune, trained back by distillation), cached in OUTDIR/.work under the
build key, and its outputs are checked against the original (or a user eval) before anything is
timed. A failed build fails one candidate, never the search."""

from __future__ import annotations

import json
import math
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from ..core import ModelRef, stable_hash
from ..errors import DeployKitError, InputError, VerificationError, first_line
from .candidates import Candidate
from .keys import build_key
from .result import Row, json_default

_BUILT = ("status", "reason", "path", "sha256", "fidelity", "fidelity_detail", "metric", "stats",
          "notes")


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


def build_failed(row: Row, e: Exception) -> None:
    """The row status of a build that raised: a failed verification rejects the candidate, a
    DeployKitError fails it with its message, anything else (a bug in one step) fails it with
    the exception's type, first line and innermost frame."""
    if isinstance(e, VerificationError):
        row.status, row.reason = "rejected", str(e)
    elif isinstance(e, DeployKitError):
        row.status, row.reason = "failed", str(e)
    else:
        row.status = "failed"
        row.reason = (f"{type(e).__name__}: {first_line(e)} "
                      f"({traceback.extract_tb(e.__traceback__)[-1].name})")


def copy_build(src: Row, dst: Row) -> None:
    """The same model on another target variant: its build and fidelity carry over."""
    for k in _BUILT:
        setattr(dst, k, getattr(src, k))


class Builder:
    """Builds a search's candidates from one source model and gates them on fidelity."""

    def __init__(self, source: ModelRef, work: Path, store, *,
                 feeds: Mapping[str, np.ndarray], calibration: Sequence[Mapping[str, np.ndarray]],
                 synthetic: bool, min_fidelity: float, target_name: str,
                 eval_fn: Callable[[str], float] | None, log: Callable[[str], None],
                 torch_source=None):
        self.source, self.work, self.store = source, work, store
        self.feeds, self.calibration, self.synthetic = dict(feeds), tuple(calibration), synthetic
        self.min_fidelity, self.target_name = min_fidelity, target_name
        self.eval_fn, self.log = eval_fn, log
        self.torch_source = torch_source  # recover.TorchSource: pruned candidates can be distilled
        self.base_metric: float | None = None  # the user eval on the original (--eval mode)
        # a built candidate is reused only for the same source, inputs, calibration and code
        self.key = build_key(source.sha256, self.feeds, synthetic, self.calibration)

    def verify_batches(self) -> list[dict[str, np.ndarray]]:
        return [self.feeds] + (list(self.calibration[:2]) if not self.synthetic else [])

    def _held_out(self) -> int:
        """How many calibration batches recovery never trains on: the two verify_batches()
        checks, and up to a tenth more (at most 64) that judge a distilled model against its
        start, so that choice rests on more than the three verification inputs."""
        n = len(self.calibration)
        return 0 if self.synthetic or n <= 8 else max(2, min(64, n // 10))

    def distill_batches(self) -> list[dict[str, np.ndarray]]:
        """Recovery's training inputs: the calibration batches the fidelity checks do not use
        (a distilled candidate is judged on inputs it never trained on), all of them when there
        are too few to spare, the example inputs when there are none."""
        return list(self.calibration[self._held_out():]) or [self.feeds]

    def judge(self):
        """What decides whether a distillation beats its start (search/recover.py): the user's
        --eval (as a ratio to the original's score) when given, else the worst cosine vs the
        original over the example inputs and every held-out calibration batch."""
        from ..rewrite.recipe import fidelity_over
        from .recover import Judge

        if self.eval_fn is not None:
            base = self.base_metric or 1.0
            return Judge("--eval", lambda p: float(self.eval_fn(str(p))) / base)
        held = [self.feeds, *self.calibration[:self._held_out()]]

        def cosine(path: Path) -> float:
            fid = fidelity_over(self.source.path, path, held)
            return fid.cosine if fid.finite and fid.shapes_match else -math.inf
        return Judge(f"held-out cosine over {len(held)} inputs", cosine)

    def build(self, row: Row) -> None:
        """Apply the recipe (cached in .work), then check fidelity; sets row.status."""
        from ..report.realized import model_stats

        cache = self.work / stable_hash("build", row.cand.model_id, self.key) / "candidate.json"
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
            self._apply(row, cache.parent)
            self._save(row, cache)
            if row.status != "pending":
                return
        row.stats = asdict(model_stats(Path(row.path), self.feeds))
        row.stats.pop("op_counts", None)
        self._fidelity(row)
        if row.status == "pending":
            if row.fidelity is None or not row.fidelity >= self.min_fidelity:
                row.status = "rejected"
                row.reason = f"fidelity {row.fidelity:.4f} < {self.min_fidelity}"
            else:
                row.status = "ok"

    def _save(self, row: Row, cache: Path) -> None:
        from ..fsutil import write_text_atomic

        write_text_atomic(cache, json.dumps({"status": row.status, "reason": row.reason,
                                             "notes": row.notes, "path": row.path,
                                             "sha256": row.sha256, "recovery": row.recovery},
                                            default=json_default))

    def _context(self, workdir: Path):
        from ..rewrite import StepContext

        return StepContext(feeds=self.feeds, calibration=self.calibration,
                           calibration_is_synthetic=self.synthetic, workdir=workdir,
                           target=self.target_name)

    def _apply(self, row: Row, workdir: Path) -> None:
        from ..rewrite.recipe import make_step, run_recipe
        from .recover import STEP

        if row.cand.steps[0][0] == STEP:
            return self._apply_torch(row, workdir)
        try:
            steps = [make_step(name, dict(fields)) for name, fields in row.cand.steps]
            # each step is judged by the fidelity kind it declares (exact rewrites tightly,
            # lossy ones only for broken output); the search's own gate is min_fidelity
            res = run_recipe(self.source, steps, self._context(workdir))
        except Exception as e:  # a bug in one step must not end the whole search
            build_failed(row, e)
            return
        skipped = [f"{s.name}: {s.skipped}" for s in res.steps if s.skipped]
        row.notes = sorted({n for s in res.steps for n in s.notes})
        if skipped:
            row.status, row.reason = "duplicate" if not res.applied else "failed", \
                "skipped " + "; ".join(skipped)
        row.path, row.sha256 = str(res.final.path), res.final.sha256
        # lineage of every built candidate: source -> step -> ... -> candidate
        for m in (res.source, *(st.output for st in res.applied)):
            self.store.record_model(m)

    def _apply_torch(self, row: Row, workdir: Path) -> None:
        """A torch-side prune recovered by distillation (search/recover.py), then the rest of the
        recipe as ordinary rewrite steps on its export; the first step's build is shared."""
        from ..rewrite.recipe import make_step, run_recipe
        from .recover import build_recovered

        first, rest = row.cand.steps[0], row.cand.steps[1:]
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
                res = run_recipe(ModelRef.from_path(path),
                                 [make_step(n, dict(f)) for n, f in rest],
                                 self._context(workdir))
                path = Path(res.final.path)
            else:
                f = dict(first[1])
                path, rec = build_recovered(
                    self.torch_source, self.source.path, float(f["ratio"]),
                    float(f["budget_s"]), self.distill_batches(),
                    self.verify_batches(), self.min_fidelity, workdir, self.synthetic,
                    start=self._recovered_start(row.cand.family, f), judge=self.judge(),
                    residual=bool(f.get("residual", False)))
            ref = ModelRef.from_path(path)
            row.path, row.sha256, row.recovery = str(path), ref.sha256, rec
        except Exception as e:  # a bug in one candidate must not end the whole search
            build_failed(row, e)

    def _recovered_start(self, family: str, fields: dict) -> tuple[Path, dict] | None:
        """A final fine-tune (`continue_s`) continues from its short recovery's kept weights:
        that recovery's (cached) build, as (ONNX path, recovery record)."""
        from .recover import STATE, STEP

        if "continue_s" not in fields:
            return None
        # the short recipe: the final's fields (ratio, residual) at the short budget
        short_fields = {k: v for k, v in fields.items() if k not in ("continue_s", "final")}
        short = (STEP, tuple(sorted({**short_fields, "budget_s": fields["continue_s"]}.items())))
        head = Row(Candidate(family, (short,)))
        self.build(head)
        if head.path is None or not head.recovery or \
                not (Path(head.path).parent / STATE).is_file():
            raise InputError(f"the recovery {head.cand.name} to continue from did not build: "
                             f"{head.reason or 'no weights kept'}")
        return Path(head.path), head.recovery

    def _fidelity(self, row: Row) -> None:
        """Fidelity vs the original: user metric ratio, else cosine over the verify batches."""
        from ..rewrite.recipe import fidelity_over

        fid = fidelity_over(self.source.path, Path(row.path), self.verify_batches())
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
        base = self.base_metric
        row.fidelity = row.metric / base if base else float("nan")
