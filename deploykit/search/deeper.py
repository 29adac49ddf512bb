"""NetAdapt keeps shrinking while accuracy holds: when the deepest torch-side prune of the search's
fixed ratios (recover.RATIOS, up to 75% of the filters) still meets the floor after its short
recovery, the frontier lies deeper, and the search would stop short of it. On pytorch/examples'
MNIST CNN the 75% cut, distilled 20 s, kept accuracy within 0.4 point and was the pick
(tools/bench_recover.py --model mnist-classic): nothing told the search whether 87.5% would too.

The next cut halves what the deepest passing one kept (75% -> 87.5% -> 93.75%), as a recipe of
its own (`torch-prune:budget_s=B,ratio=0.875`, cached and resumable like the fixed ratios), with
the int8 compositions the passing one had; the engine asks again after building it, so the
search goes on cutting until a cut misses the floor (that one may then get recovery's final,
longer fine-tune, recover.final_candidates) or DEEPEST is reached. The engine cuts deeper (and
runs the final fine-tunes) right after the fixed ratios are built, before the rest of the space:
on a loaded machine the cheap graph-side recipes after them spent the building share of the
time limit first, and the 87.5% cut was left out by 2 s.
"""

from __future__ import annotations

from typing import Any, Sequence

DEEPEST = 0.9375  # never propose cutting more than 15/16 of the filters


def deeper_candidates(rows: Sequence[Any], time_left: float, reserve: float
                      ) -> tuple[list[Any], str | None]:
    """The next deeper torch-side prune for each kind of cut (inner convs; residual streams
    too) whose deepest short recovery met the floor, with its int8 compositions; (candidates, a
    note saying why there is none when the time limit stops it, or None). Nothing when the
    deepest cut of a kind missed the floor, when the next cut would pass DEEPEST, or when
    `time_left` minus `reserve` (the time kept for measuring) cannot hold its recovery."""
    from .candidates import Candidate
    from .recover import STEP

    def short_prune(r) -> bool:
        return (not r.cand.options and len(r.cand.steps) == 1 and r.cand.steps[0][0] == STEP
                and not dict(r.cand.steps[0][1]).get("final"))

    deepest: dict[bool, Any] = {}  # residual? -> the deepest short prune of that kind
    for r in rows:
        if short_prune(r):
            f = dict(r.cand.steps[0][1])
            kind = bool(f.get("residual", False))
            if kind not in deepest or float(f["ratio"]) > \
                    float(dict(deepest[kind].cand.steps[0][1])["ratio"]):
                deepest[kind] = r
    out: list[Any] = []
    for kind, r in sorted(deepest.items()):
        if r.status != "ok":
            continue
        first = r.cand.steps[0]
        fields = dict(first[1])
        ratio = 1.0 - (1.0 - float(fields["ratio"])) / 2
        if ratio > DEEPEST + 1e-9:
            continue
        if time_left - reserve < float(fields["budget_s"]):
            return [], (f"a deeper prune than {r.cand.name} (ratio {ratio:g}) not tried: "
                        f"{max(time_left, 0):.0f} s of the time limit left, {reserve:.0f} s "
                        "of it kept for measuring")
        step = (STEP, tuple(sorted({**fields, "ratio": ratio}.items())))
        out.append(Candidate(r.cand.family, (step,)))
        out += [Candidate(q.cand.family, (step, *q.cand.steps[1:])) for q in rows
                if not q.cand.options and len(q.cand.steps) > 1 and q.cand.steps[0] == first]
    return out, None
