"""The statistical latency gate: is the new model slower than the old one, really and by enough?

Why not asv's rule as is (point ratio above a threshold AND a Mann-Whitney test on raw samples):
on a shared machine, raw samples are not independent -- the median drifts from one half-second
block to the next by up to 1.7x -- so a test that treats thousands of raw samples as independent
calls every drift significant, and a point threshold detects a slowdown equal to the threshold
only half the time. So the unit of evidence here is the block:

* interleaved mode (old and new measured in alternating rounds in one process, the robust mode):
  per round, d = log(median new / median old); drift hits both alike and cancels in d. The ratio
  is exp(Hodges-Lehmann estimate of d) with the Wilcoxon signed-rank confidence interval;
* stored mode (new run against the baseline's stored samples): two-sample Hodges-Lehmann shift
  of log block medians with the Mann-Whitney (Moses) interval. Weaker: drift between the two
  runs is not cancelled, which is why the environment must match.

Decision (log scale, L = log(1 + threshold), CI at `conf`, default 99%):
  regression  <=> lo > 0 (significant) AND raw-sample Mann-Whitney p < 1 - conf (asv's test)
                  AND hi >= L (a slowdown of the threshold is within the interval)
                  AND estimate >= L / 2 (and not a trivially small one);
  improvement  is the mirror image; a significant change that fails the size test is reported as
  "within threshold", anything else as "no significant change". A slowdown equal to the threshold
  is therefore caught whenever it is significant, while one measured precisely to be smaller than
  the threshold passes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import __version__, stats
from .core import LatencyReport, OpTime, TensorSpec
from .errors import InputError

DEFAULT_CONF = 0.99
MIN_UNITS = 8  # fewer rounds than this cannot give a 99% signed-rank interval at all


class BaselineError(InputError):
    """A baseline file is missing, corrupt, too new, or for another model."""


# ---- estimates ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Estimate:
    """Ratio new/old of median latency with its interval, and how it was obtained."""

    ratio: float
    lo: float
    hi: float
    conf: float
    mode: str  # "interleaved" | "stored"
    n_units: int  # rounds (interleaved) or blocks (stored) used
    p_units: float  # signed-rank / rank-sum p-value on the units
    p_raw: float  # asv-style Mann-Whitney p-value on all raw samples
    old_median_ms: float
    new_median_ms: float
    note: str = ""


def block_medians(report: LatencyReport, drop_contaminated: bool = True) -> np.ndarray:
    """Median of each timed block (a block is ~0.25-0.5 s of consecutive samples)."""
    x = np.asarray(report.samples_ms, dtype=float)
    blocks = [(b.start, b.n, b.contaminated) for b in report.blocks]
    if not blocks:  # a report without block bookkeeping: cut it into ~sqrt(n) chunks
        k = max(1, int(math.sqrt(len(x))))
        edges = np.linspace(0, len(x), k + 1).astype(int)
        blocks = [(int(a), int(b - a), False) for a, b in zip(edges[:-1], edges[1:]) if b > a]
    clean = [(s, n) for s, n, c in blocks if not c]
    use = clean if drop_contaminated and len(clean) >= MIN_UNITS else [(s, n) for s, n, _ in blocks]
    return np.array([np.median(x[s:s + n]) for s, n in use if n > 0])


def _signed_rank_cdf(n: int) -> np.ndarray:
    """P(T+ <= t) for t = 0..n(n+1)/2 under H0 (exact, by counting subsets of 1..n)."""
    counts = np.zeros(n * (n + 1) // 2 + 1)
    counts[0] = 1.0
    for r in range(1, n + 1):
        counts[r:] = counts[r:] + counts[:-r].copy()
        counts /= 2.0  # keep it a probability as we go (avoids overflow for large n)
    return np.cumsum(counts)


def _rank_index(m_total: int, cdf_or_none: np.ndarray | None, alpha: float, mean: float,
                sd: float) -> int:
    """k such that [W_(k), W_(M-k+1)] (1-based) of the M sorted pairwise statistics covers with
    probability >= 1 - alpha; 0 when no such interval exists (too few units)."""
    if cdf_or_none is not None:
        ok = np.nonzero(cdf_or_none <= alpha / 2)[0]
        return int(ok[-1]) + 1 if len(ok) else 0
    from scipy.stats import norm

    k = int(math.floor(mean - norm.ppf(1 - alpha / 2) * sd))
    return max(0, min(k, m_total // 2))


def paired_log_ratio_ci(d: Sequence[float], conf: float = DEFAULT_CONF
                        ) -> tuple[float, float, float, float]:
    """One-sample Hodges-Lehmann estimate of per-round log ratios with the Wilcoxon signed-rank
    interval: (estimate, lo, hi, p). Distribution-free; needs only symmetry of d under H0."""
    from scipy.stats import wilcoxon

    d = np.asarray(d, dtype=float)
    n = len(d)
    i, j = np.triu_indices(n)
    walsh = np.sort((d[i] + d[j]) / 2)
    m = len(walsh)
    cdf = _signed_rank_cdf(n) if n <= 300 else None
    k = _rank_index(m, cdf, 1 - conf, n * (n + 1) / 4, math.sqrt(n * (n + 1) * (2 * n + 1) / 24))
    lo, hi = (walsh[k - 1], walsh[m - k]) if k > 0 else (-math.inf, math.inf)
    p = float(wilcoxon(d).pvalue) if n > 0 and np.any(d != 0) else 1.0
    return float(np.median(walsh)), float(lo), float(hi), p


def shift_log_ratio_ci(x: Sequence[float], y: Sequence[float], conf: float = DEFAULT_CONF
                       ) -> tuple[float, float, float, float]:
    """Two-sample Hodges-Lehmann shift y - x with the Mann-Whitney (Moses) interval:
    (estimate, lo, hi, p)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    diffs = np.sort((y[None, :] - x[:, None]).ravel())
    m, n = len(x), len(y)
    k = _rank_index(m * n, None, 1 - conf, m * n / 2, math.sqrt(m * n * (m + n + 1) / 12))
    lo, hi = (diffs[k - 1], diffs[m * n - k]) if k > 0 else (-math.inf, math.inf)
    return float(np.median(diffs)), float(lo), float(hi), stats.mann_whitney_p(x, y)


def _finish(mode: str, est: float, lo: float, hi: float, p_units: float, n: int, conf: float,
            old: LatencyReport, new: LatencyReport, note: str) -> Estimate:
    return Estimate(ratio=math.exp(est), lo=math.exp(lo), hi=math.exp(hi), conf=conf, mode=mode,
                    n_units=n, p_units=p_units,
                    p_raw=stats.mann_whitney_p(old.samples_ms, new.samples_ms),
                    old_median_ms=old.median_ms, new_median_ms=new.median_ms, note=note)


def interleaved_estimate(old: LatencyReport, new: LatencyReport,
                         conf: float = DEFAULT_CONF) -> Estimate:
    """Old and new timed in alternating rounds (`measure.compare`): block k of each is round k."""
    xo, xn = np.asarray(old.samples_ms), np.asarray(new.samples_ms)
    pairs = list(zip(old.blocks, new.blocks))
    clean = [(a, b) for a, b in pairs if not (a.contaminated or b.contaminated)]
    note = ""
    if len(clean) >= MIN_UNITS:
        if len(clean) < len(pairs):
            note = f"{len(pairs) - len(clean)} of {len(pairs)} rounds dropped (foreign CPU load)"
        pairs = clean
    elif len(clean) < len(pairs):
        note = f"{len(pairs) - len(clean)} of {len(pairs)} rounds had foreign CPU load (kept)"
    d = [math.log(np.median(xn[b.start:b.start + b.n]) / np.median(xo[a.start:a.start + a.n]))
         for a, b in pairs if a.n and b.n]
    if len(d) < MIN_UNITS:
        raise InputError(f"only {len(d)} interleaved rounds were measured (need >= {MIN_UNITS}): "
                         "raise --max-time")
    est, lo, hi, p = paired_log_ratio_ci(d, conf)
    return _finish("interleaved", est, lo, hi, p, len(d), conf, old, new, note)


def stored_estimate(old: LatencyReport, new: LatencyReport,
                    conf: float = DEFAULT_CONF) -> Estimate:
    """New run against stored samples: compare the two runs' block medians."""
    bo, bn = block_medians(old), block_medians(new)
    if min(len(bo), len(bn)) < MIN_UNITS:
        raise InputError(f"too few timed blocks to compare ({len(bo)} baseline, {len(bn)} new; "
                         f"need >= {MIN_UNITS}): raise --max-time or re-record the baseline")
    est, lo, hi, p = shift_log_ratio_ci(np.log(bo), np.log(bn), conf)
    return _finish("stored", est, lo, hi, p, min(len(bo), len(bn)), conf, old, new,
                   "no interleaved old model: compared with stored samples (drift between the two "
                   "runs is not cancelled)")


# ---- the decision ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    status: str  # "regression" | "improvement" | "within-threshold" | "no-change"
    estimate: Estimate
    threshold: float

    @property
    def failed(self) -> bool:
        return self.status == "regression"

    @property
    def summary(self) -> str:
        e = self.estimate
        change = f"{e.ratio - 1:+.1%} [{e.lo - 1:+.1%}, {e.hi - 1:+.1%}] ({e.conf:.0%} CI)"
        words = {"regression": f"REGRESSION: slower by {change}, threshold {self.threshold:.1%}",
                 "improvement": f"improvement: {change}",
                 "within-threshold": f"significant change within the {self.threshold:.1%} "
                                     f"threshold: {change}",
                 "no-change": f"no significant change: {change}"}
        return words[self.status]


def check_estimate(e: Estimate) -> None:
    """The gate fails closed: a verdict is never computed from an unusable number."""
    bad = [f"{k}={v!r}" for k, v in (("ratio", e.ratio), ("old median", e.old_median_ms),
                                     ("new median", e.new_median_ms)) if not _positive(v)]
    bad += [f"CI low={e.lo!r}"] if not _positive(e.lo) else []
    bad += [f"CI high={e.hi!r}"] if not (isinstance(e.hi, (int, float)) and e.hi > 0) else []
    bad += [f"{k}={v!r}" for k, v in (("p (rounds)", e.p_units), ("p (raw samples)", e.p_raw))
            if not (isinstance(v, (int, float)) and 0 <= v <= 1)]
    if e.n_units < MIN_UNITS:
        bad.append(f"{e.n_units} rounds (need >= {MIN_UNITS})")
    if not bad and not e.lo <= e.ratio <= e.hi:
        bad.append(f"ratio {e.ratio} outside its interval [{e.lo}, {e.hi}]")
    if bad:
        raise InputError(f"the gate cannot decide: unusable numbers ({', '.join(bad)}); no "
                         "verdict is given: re-run the check (and re-record the baseline if its "
                         "samples are the cause)")


def decide(e: Estimate, threshold: float) -> Verdict:
    """Size AND significance, in both directions (see the module docstring)."""
    if not (math.isfinite(threshold) and threshold > 0):
        raise InputError(f"the slowdown threshold must be positive, got {threshold}")
    check_estimate(e)
    big = math.log1p(threshold)
    est, lo, hi = math.log(e.ratio), math.log(e.lo), math.log(e.hi)
    raw_sig = e.p_raw < 1 - e.conf
    if lo > 0 and raw_sig:
        status = "regression" if hi >= big and est >= big / 2 else "within-threshold"
    elif hi < 0 and raw_sig:
        status = "improvement" if lo <= -big and est <= -big / 2 else "within-threshold"
    else:
        status = "no-change"
    return Verdict(status, e, threshold)


def parse_threshold(text: str) -> float:
    """'5%' or '0.05' -> 0.05."""
    s = str(text).strip()
    try:
        v = float(s[:-1]) / 100 if s.endswith("%") else float(s)
    except ValueError:
        raise InputError(f"bad threshold {text!r}: expected e.g. 5% or 0.05") from None
    if not 0 < v < 10:
        raise InputError(f"threshold must be a positive fraction or percentage, got {text!r}")
    return v


# ---- environment and per-op diff ---------------------------------------------------------------

def env_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two fingerprints in the parts that change latency (CPU model,
    threads, cores, machine, backend versions, target settings); empty when comparable."""
    from .envinfo import comparable_part

    a, b = comparable_part(old), comparable_part(new)
    out = []
    for key in a:
        if key in ("backend_versions", "target_config"):
            for sub in sorted(set(a[key]) | set(b[key])):
                if a[key].get(sub) != b[key].get(sub):
                    out.append(f"{sub} {a[key].get(sub)} -> {b[key].get(sub)}")
        elif a[key] != b[key]:
            out.append(f"{key} {a[key]!r} -> {b[key]!r}")
    return out


@dataclass(frozen=True)
class OpDiff:
    name: str
    op_type: str
    old_ms: float | None  # None: the node is new
    new_ms: float | None  # None: the node is gone

    @property
    def delta_ms(self) -> float:
        return (self.new_ms or 0.0) - (self.old_ms or 0.0)


def per_op_diff(old: Sequence[OpTime], new: Sequence[OpTime], top: int = 10) -> list[OpDiff]:
    """Nodes ranked by how much time they gained (by node name; added and removed nodes count
    with their whole time)."""
    o = {x.name: x for x in old}
    n = {x.name: x for x in new}
    rows = [OpDiff(k, (n.get(k) or o[k]).op_type, o[k].total_ms if k in o else None,
                   n[k].total_ms if k in n else None) for k in {**o, **n}]
    rows.sort(key=lambda r: -r.delta_ms)
    return rows[:top]


# ---- the baseline file -------------------------------------------------------------------------

BASELINE_KIND = "deploykit-baseline"
BASELINE_SCHEMA = 1


@dataclass(frozen=True)
class Baseline:
    """What `deploykit baseline` writes (meant to be committed) and `deploykit check` reads."""

    report: LatencyReport
    model_path: str  # as recorded; relative to the baseline file's folder when it was inside it
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    feeds: Mapping[str, Any]  # seed, shapes, npz: how the inputs were made
    created: float
    source: Path | None = None  # the file it was read from

    def model_file(self) -> Path | None:
        """The baseline's model on disk if it is still there with the same content."""
        from .fsutil import sha256_file

        p = Path(self.model_path)
        if not p.is_absolute() and self.source is not None:
            p = self.source.parent / p
        try:
            return p if p.is_file() and sha256_file(p) == self.report.model_sha256 else None
        except OSError:
            return None

    def signature_mismatch(self, inputs: Sequence[TensorSpec],
                           outputs: Sequence[TensorSpec]) -> str | None:
        """Why a model is not the one this baseline is for (its inputs/outputs), or None."""
        def fmt(specs):
            return ", ".join(f"{s.name}{list(s.shape)}:{s.dtype}" for s in specs)

        if tuple(inputs) != self.inputs:
            return f"inputs {fmt(inputs)} vs baseline's {fmt(self.inputs)}"
        if tuple(outputs) != self.outputs:
            return f"outputs {fmt(outputs)} vs baseline's {fmt(self.outputs)}"
        return None

    def to_dict(self) -> dict[str, Any]:
        r = self.report
        return {"kind": BASELINE_KIND, "schema": BASELINE_SCHEMA, "deploykit": __version__,
                "created": self.created,
                "model": {"path": self.model_path, "sha256": r.model_sha256,
                          "id": r.model_sha256[:16],
                          "inputs": [_spec_dict(s) for s in self.inputs],
                          "outputs": [_spec_dict(s) for s in self.outputs]},
                "artifact_id": r.artifact_id, "target": r.target,
                "target_config": dict(r.target_config), "env": dict(r.env),
                "feeds": dict(self.feeds), "report": r.to_dict()}

    def save(self, path: str | Path) -> None:
        from .fsutil import write_json

        self.check()
        write_json(path, self.to_dict())

    def check(self) -> None:
        """ValueError unless every number a verdict rests on is usable (see check_report)."""
        check_report(self.report)
        for s in (*self.inputs, *self.outputs):
            if not (isinstance(s.name, str) and all(
                    isinstance(d, str) or (isinstance(d, int) and not isinstance(d, bool))
                    for d in s.shape)):
                raise ValueError(f"tensor spec {s.name!r} has a malformed shape {list(s.shape)}")
        shapes = self.feeds.get("shapes") or {}
        seed = self.feeds.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or not isinstance(shapes, dict) \
                or not all(isinstance(v, list) and v and all(isinstance(d, int) and d > 0
                                                             for d in v)
                           for v in shapes.values()) \
                or not isinstance(self.feeds.get("npz"), (str, type(None))):
            raise ValueError("feeds (seed, shapes, npz) are malformed")


def _spec_dict(s: TensorSpec) -> dict[str, Any]:
    return {"name": s.name, "shape": list(s.shape), "dtype": s.dtype}


def _spec(d: Mapping[str, Any]) -> TensorSpec:
    return TensorSpec(d["name"], tuple(d["shape"]), d["dtype"])


def make_baseline(report: LatencyReport, inputs: Sequence[TensorSpec],
                  outputs: Sequence[TensorSpec], feeds: Mapping[str, Any],
                  out_path: str | Path) -> Baseline:
    """A Baseline whose model path is relative to the baseline file when the model lies below it,
    so the pair can be committed together."""
    model = Path(report.model_path).resolve()
    folder = Path(out_path).resolve().parent
    try:
        rel = str(model.relative_to(folder))
    except ValueError:
        rel = str(model)
    return Baseline(report, rel, tuple(inputs), tuple(outputs), dict(feeds), time.time())


def _positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def check_report(r: LatencyReport) -> None:
    """ValueError unless the samples and rounds a verdict rests on are usable: finite, positive
    samples, at least MIN_UNITS of them, blocks that tile the samples, a 64-hex model sha256."""
    if len(r.samples_ms) < MIN_UNITS:
        raise ValueError(f"{len(r.samples_ms)} samples (need >= {MIN_UNITS})")
    bad = next((x for x in r.samples_ms if not _positive(x)), None)
    if bad is not None:
        raise ValueError(f"a latency sample is {bad!r} (samples must be finite and positive)")
    end = 0
    for b in r.blocks:
        if not (isinstance(b.start, int) and isinstance(b.n, int) and b.start == end
                and b.n >= 1 and isinstance(b.contaminated, bool)
                and isinstance(b.foreign_cpu, (int, float)) and math.isfinite(b.foreign_cpu)):
            raise ValueError(f"malformed timed round {b} (rounds must tile the samples in order)")
        end = b.start + b.n
    if r.blocks and end != len(r.samples_ms):
        raise ValueError(f"the rounds cover {end} samples, the report has {len(r.samples_ms)}")
    if r.blocks and len(r.blocks) < MIN_UNITS:
        raise ValueError(f"{len(r.blocks)} timed rounds (need >= {MIN_UNITS})")
    sha = r.model_sha256
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise ValueError("the model sha256 is not 64 hex digits")
    for o in r.per_op:
        if not (isinstance(o.total_ms, (int, float)) and math.isfinite(o.total_ms)
                and o.total_ms >= 0):
            raise ValueError(f"per-op time of {o.name!r} is {o.total_ms!r}")
    if not isinstance(r.env, Mapping) or not isinstance(r.target, str):
        raise ValueError("env or target is malformed")


def load_baseline(path: str | Path) -> Baseline:
    """Read a baseline file, or a one-line BaselineError that says what to do."""
    p = Path(path)
    redo = f"re-record it with `deploykit baseline MODEL --target T -o {p}`"
    if not p.is_file():
        raise BaselineError(f"baseline file not found: {p}; record one with "
                            f"`deploykit baseline MODEL --target T -o {p}`")
    try:
        d = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BaselineError(f"baseline file {p} is corrupt ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}); {redo}") from None
    if not isinstance(d, dict) or d.get("kind") != BASELINE_KIND:
        raise BaselineError(f"{p} is not a deploykit baseline file; {redo}")
    schema = d.get("schema")
    if not isinstance(schema, int) or schema < 1:
        raise BaselineError(f"baseline file {p} has no valid schema version; {redo}")
    if schema > BASELINE_SCHEMA:
        raise BaselineError(f"baseline file {p} has schema {schema}, newer than this deploykit "
                            f"understands ({BASELINE_SCHEMA}, deploykit {__version__}): upgrade "
                            f"deploykit, or {redo}")
    try:
        m = d["model"]
        report = LatencyReport.from_dict(d["report"])
        if report.model_sha256 != m["sha256"]:
            raise ValueError("model sha256 does not match its report")
        base = Baseline(report, str(m["path"]), tuple(_spec(s) for s in m["inputs"]),
                        tuple(_spec(s) for s in m["outputs"]), dict(d.get("feeds") or {}),
                        float(d.get("created", report.created)), p)
        base.check()
        return base
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BaselineError(f"baseline file {p} is incomplete or corrupt ({type(e).__name__}: "
                            f"{e}); {redo}") from None


# ---- change points in a series -----------------------------------------------------------------

@dataclass(frozen=True)
class ChangePoint:
    index: int  # first index of the new regime
    before: float  # median of the segment before (up to the previous change point)
    after: float  # median of the segment after (up to the next change point)
    p: float  # permutation p-value of the split

    @property
    def ratio(self) -> float:
        return self.after / self.before


def _energy_best_split(dist: np.ndarray, min_size: int) -> tuple[int, float]:
    """E-divisive (Matteson & James 2014, exponent 1): the split maximising the scaled energy
    distance between left and right; distances summed with a 2-D prefix sum."""
    n = len(dist)
    pre = np.zeros((n + 1, n + 1))
    pre[1:, 1:] = dist.cumsum(0).cumsum(1)
    t = np.arange(min_size, n - min_size + 1)
    m, k = t.astype(float), (n - t).astype(float)
    ll = pre[t, t]
    lr = pre[t, n] - ll
    rr = pre[n, n] - 2 * pre[t, n] + ll
    q = (m * k / n) * (2 * lr / (m * k) - ll / (m * (m - 1)) - rr / (k * (k - 1)))
    i = int(np.argmax(q))
    return int(t[i]), float(q[i])


def change_points(values: Sequence[float], *, alpha: float = 0.01, min_size: int = 3,
                  n_perm: int = 499, seed: int = 0) -> list[ChangePoint]:
    """Change points in a latency series (e.g. the medians of successive runs), as in MongoDB's
    CI: e-divisive binary segmentation on log values, each split kept only if a permutation test
    says so at level `alpha`."""
    x = np.log(np.asarray(values, dtype=float))
    rng = np.random.default_rng(seed)
    found: list[tuple[int, float]] = []
    todo = [(0, len(x))]
    while todo:
        a, b = todo.pop()
        if b - a < 2 * min_size:
            continue
        seg = x[a:b]
        dist = np.abs(seg[:, None] - seg[None, :])
        tau, q = _energy_best_split(dist, min_size)
        exceed = 0
        for _ in range(n_perm):
            perm = rng.permutation(len(seg))
            exceed += _energy_best_split(dist[np.ix_(perm, perm)], min_size)[1] >= q
        p = (exceed + 1) / (n_perm + 1)
        if p <= alpha:
            found.append((a + tau, p))
            todo += [(a, a + tau), (a + tau, b)]
    found.sort()
    edges = [0] + [i for i, _ in found] + [len(x)]
    v = np.asarray(values, dtype=float)
    return [ChangePoint(i, float(np.median(v[edges[k]:i])), float(np.median(v[i:edges[k + 2]])), p)
            for k, (i, p) in enumerate(found)]
