"""An interleaved comparison over every board of a device pool (pool.py): each board runs the
whole comparison (both models, interleaved, in its own session) for its share of the time, all
at once, and the boards' rounds are pooled into one estimate (measure/pooled.py says why that is
sound and how a board that disagrees with the others is flagged).

A board that drops out mid-comparison: its share goes back to the pool's queue and is measured
again, whole, on another board (pool.map's retry); what it had measured is discarded, since a
share cut short would pair rounds of a half-finished run. The pooled rounds are counted before
the result is used: fewer than a paired test needs (stats.MIN_UNITS) and the boards each measure
one more share."""

from __future__ import annotations

from typing import Callable, Sequence

from ...core import LatencyReport
from ...measure.pooled import paired_rounds, pool_reports

TOP_UPS = 1  # extra shares per board when the pooled rounds are too few


def compare_on_boards(pool, job: Callable[[int], Sequence[LatencyReport]]
                      ) -> tuple[LatencyReport, ...]:
    """`job(i)`: one board's interleaved comparison (a report per model, one block per round),
    run pinned to that board; i == 0 is the share asked to do one-off extras (e.g. the per-op
    breakdown). With one board this is `pool.run(job(0))`, unpooled."""
    from ...stats import MIN_UNITS

    k = len(pool.devices)
    if k <= 1:
        return tuple(pool.run(lambda: job(0)))
    parts = [tuple(r) for r in pool.map(job, list(range(k)))]
    for _ in range(TOP_UPS):
        if paired_rounds(pool_reports(parts)) >= MIN_UNITS:
            break
        parts += [tuple(r) for r in pool.map(job, list(range(k, 2 * k)))]
    return pool_reports(parts)
