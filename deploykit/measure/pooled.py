"""One interleaved comparison spread over several boards of one key: each board compares the same
models interleaved (both on that board, in one session: a ratio of two boards would measure the
boards) for its share of the time, and the boards' rounds are pooled into one estimate.

Why pooling rounds is sound: the comparison's evidence is the per-round paired log ratio
(measure/comparison.py), and a round's ratio comes from one board; boards of one key are taken
to be alike, so their rounds are exchangeable units of one paired test (boards as blocks: every
round's pair shares its board). Concatenating each board's reports, rounds in board order, keeps
round k of one model paired with round k of the other, so `Comparison.ratio` and the gate's
`interleaved_estimate` pool them unchanged. Whether the boards really are alike is checked, not
assumed: `per_board` gives each board's own ratio and flags a board whose rounds differ from the
others' by more than `DISAGREE_REL`, with a confidence interval that excludes no difference,
against most of the other boards (of two boards that disagree, both are flagged: which one is
off cannot be told).
"""

from __future__ import annotations

import math
from dataclasses import replace
from statistics import median
from typing import Any, Sequence

import numpy as np

from ..core import Block, LatencyReport, TimingPlan
from ..stats import MIN_UNITS

DISAGREE_REL = 0.10  # a board whose paired ratio differs from the others' by more is flagged


def share_plan(plan: TimingPlan, boards: int) -> TimingPlan:
    """One board's share of an interleaved comparison's time cap: 1/boards of it, but enough
    rounds that the boards together give at least MIN_UNITS (a round lasts ~block_s)."""
    if boards <= 1:
        return plan
    least = math.ceil(MIN_UNITS / boards) * plan.block_s
    return replace(plan, max_time_s=max(plan.max_time_s / boards, least))


def paired_rounds(reports: Sequence[LatencyReport]) -> int:
    """Rounds in which every report has samples (what a paired ratio can use)."""
    return sum(all(b.n for b in bs) for bs in zip(*(r.blocks for r in reports)))


def pool_reports(parts: Sequence[Sequence[LatencyReport]]) -> tuple[LatencyReport, ...]:
    """`parts[b][m]`: board b's report of model m from one interleaved comparison; returns one
    report per model with every board's samples and rounds (in board order), its env naming
    the boards (`env.remote.boards`: server and rounds of each, what `per_board` splits by)."""
    if not parts:
        raise ValueError("no board's comparison to pool")
    n_models = len(parts[0])
    if any(len(p) != n_models for p in parts):
        raise ValueError("every board must compare the same models")
    out = []
    for m in range(n_models):
        reps = [p[m] for p in parts]
        if any(len(r.blocks) != len(p[0].blocks) for r, p in zip(reps, parts)):
            raise ValueError("an interleaved comparison has one block per model per round")
        samples: list[float] = []
        blocks: list[Block] = []
        for r in reps:
            blocks += [replace(b, start=b.start + len(samples)) for b in r.blocks]
            samples += r.samples_ms
        remote = dict(reps[0].env.get("remote") or {})
        boards = [{"server": (r.env.get("remote") or {}).get("server"), "rounds": len(r.blocks)}
                  for r in reps]
        remote.update(boards=boards, pooled=True,
                      where=f"{len(reps)} boards, interleaved on each: " + ", ".join(
                          str((r.env.get("remote") or {}).get("where")) for r in reps))
        reasons = {r.stop_reason for r in reps}
        labels = list(dict.fromkeys(lbl for r in reps for lbl in r.labels))
        out.append(replace(
            reps[0], samples_ms=tuple(samples), blocks=tuple(blocks),
            env={**reps[0].env, "remote": remote},
            stop_reason=reasons.pop() if len(reasons) == 1 else "time-cap",
            per_op=next((r.per_op for r in reps if r.per_op), ()), labels=tuple(labels),
            session_create_ms=median(r.session_create_ms for r in reps),
            first_inference_ms=median(r.first_inference_ms for r in reps),
            warmup_samples=sum(r.warmup_samples for r in reps),
            warmup_ms=sum(r.warmup_ms for r in reps), created=min(r.created for r in reps),
            discarded_blocks=sum(r.discarded_blocks for r in reps),
            quiet_wait_s=max(r.quiet_wait_s for r in reps), memory={}, stability={},
            cold_start_samples_ms=tuple(c for r in reps for c in r.cold_start_samples_ms)))
    return tuple(out)


def _slice(rep: LatencyReport, first: int, count: int) -> LatencyReport:
    """Rounds [first, first + count) of a pooled report (one board's part)."""
    blocks = rep.blocks[first:first + count]
    if not blocks:
        return replace(rep, samples_ms=(), blocks=())
    s0 = blocks[0].start
    s1 = blocks[-1].start + blocks[-1].n
    return replace(rep, samples_ms=rep.samples_ms[s0:s1],
                   blocks=tuple(replace(b, start=b.start - s0) for b in blocks))


def per_board(reports: Sequence[LatencyReport], i: int = 1, j: int = 0,
              conf: float = 0.95) -> list[dict[str, Any]]:
    """Each board's own ratio median(i) / median(j) of a pooled comparison (`pool_reports`),
    with its paired CI, and `disagrees`: its rounds' log ratios differ from those of most other
    boards by more than DISAGREE_REL (two-sample Hodges-Lehmann shift against each, its CI
    excluding 0); `vs_others`: the median of those shifts, as a factor. [] for a comparison made
    on one board, or for reports that are not one pooled comparison (`_shares`)."""
    from ..stats import paired_log_ratio_ci, shift_log_ratio_ci
    from .comparison import round_log_ratios

    shares = _shares(reports)
    # a board can have measured several shares (a top-up, or the share of a board that dropped
    # out): its rounds are its own, one row per board (a share is not compared with its twin)
    d_of: dict[Any, list[float]] = {}
    first = 0
    for n, b in enumerate(shares):
        parts = [_slice(r, first, b["rounds"]) for r in reports]
        d_of.setdefault(b["server"] if b["server"] is not None else n, []).extend(
            round_log_ratios(parts[i], parts[j]))
        first += b["rounds"]
    if len(d_of) < 2:
        return []
    boards, d = list(d_of), list(d_of.values())
    rows = []
    for k, server in enumerate(boards):
        row: dict[str, Any] = {"server": None if isinstance(server, int) else server,
                               "rounds": len(d[k]), "ratio": None,
                               "ratio_ci95": [None, None], "disagrees": False}
        if d[k]:
            est, lo, hi, _ = paired_log_ratio_ci(d[k], conf)
            row.update(ratio=math.exp(est), ratio_ci95=[_finite(math.exp(lo)),
                                                         _finite(math.exp(hi))])
        # against each other board on its own (pooling the others would let one odd board
        # drag the rest along): disagreeing with most of them flags this one
        shifts, against = [], 0
        for m, dm in enumerate(d):
            if m == k or len(d[k]) < 3 or len(dm) < 3:
                continue
            shift, lo, hi, _ = shift_log_ratio_ci(dm, d[k], conf)
            shifts.append(shift)
            against += bool((lo > 0 or hi < 0) and abs(shift) > math.log1p(DISAGREE_REL))
        if shifts:
            row["vs_others"] = math.exp(float(np.median(shifts)))
            row["disagrees"] = against > len(shifts) / 2
        rows.append(row)
    return rows


def _shares(reports: Sequence[LatencyReport]) -> list[dict[str, Any]]:
    """The boards' shares (`env.remote.boards`) of reports pooled together by `pool_reports`:
    every report names the same shares, whose rounds add up to its blocks. Anything else ([]):
    reports that were not paired round by round on each board (a stored baseline made from a
    pooled run, checked against a new run, is not), or a share list not made here."""
    shares = (reports[0].env.get("remote") or {}).get("boards") if reports else None
    if not isinstance(shares, list) or not all(
            isinstance(b, dict) and isinstance(b.get("rounds"), int) and b["rounds"] >= 0
            for b in shares):
        return []
    for r in reports:
        if (r.env.get("remote") or {}).get("boards") != shares \
                or sum(b["rounds"] for b in shares) != len(r.blocks):
            return []
    return shares


def disagreement_note(rows: Sequence[dict[str, Any]], what: str) -> str | None:
    """One line naming the boards whose ratio disagrees with the others' (None: all agree)."""
    bad = [r for r in rows if r["disagrees"]]
    if not bad:
        return None
    return (f"{what}: board(s) " + ", ".join(
        f"{r['server']} (ratio {r['ratio']:.3f}, x{r['vs_others']:.3f} the others')"
        for r in bad) + f" disagree with the other boards by more than {DISAGREE_REL:.0%}; "
        "boards of one key should be alike (check their clocks, thermal state and load)")


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) and x > 0 else None


__all__ = ["DISAGREE_REL", "MIN_UNITS", "disagreement_note", "paired_rounds", "per_board",
           "pool_reports", "share_plan"]
