"""Distribution-free statistics for latency samples.

Everything here is tested on synthetic samples with known answers; nothing here times anything.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


DEFAULT_CONF = 0.99  # the gate's confidence level
MIN_UNITS = 8  # fewer rounds than this cannot give a 99% signed-rank interval at all


def median_ci(samples: Sequence[float], conf: float = 0.95) -> tuple[float, float]:
    """Confidence interval of the median from order statistics (binomial, no normality assumed).

    The interval [x_(j), x_(k)] has coverage >= conf for any continuous distribution.
    """
    from scipy.stats import binom

    x = np.sort(np.asarray(samples, dtype=float))
    n = len(x)
    if n == 0:
        return (float("nan"), float("nan"))
    if n < 6:  # too few for a 95% order-statistic interval: report the full range
        return (float(x[0]), float(x[-1]))
    alpha = 1.0 - conf
    j = int(binom.ppf(alpha / 2, n, 0.5))  # number of samples below the lower bound
    j = max(j - 1, 0) if binom.cdf(j, n, 0.5) > alpha / 2 else j
    k = n - 1 - j
    return (float(x[j]), float(x[k]))


def mann_whitney_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Mann-Whitney U p-value (asv's significance test on raw samples)."""
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)


def block_medians(samples: Sequence[float], blocks: Sequence, drop_contaminated: bool = True,
                  min_clean: int = MIN_UNITS, chunk_unblocked: bool = False) -> np.ndarray:
    """Median of each timed block (`core.Block`). Consecutive samples are not independent on a
    shared machine (the median drifts from block to block), so blocks are the unit of evidence.
    Contaminated blocks are dropped when at least `min_clean` clean ones remain. Samples without
    block bookkeeping give no medians, or with `chunk_unblocked` ~sqrt(n) chunks' medians."""
    x = np.asarray(samples, dtype=float)
    use = [b for b in blocks if b.n > 0]
    if not blocks and chunk_unblocked:
        k = max(1, int(math.sqrt(len(x))))
        edges = np.linspace(0, len(x), k + 1).astype(int)
        use = [_Chunk(int(a), int(b - a)) for a, b in zip(edges[:-1], edges[1:]) if b > a]
    clean = [b for b in use if not b.contaminated]
    if drop_contaminated and len(clean) >= min_clean:
        use = clean
    return np.array([np.median(x[b.start:b.start + b.n]) for b in use])


class _Chunk:
    """A slice of unblocked samples, shaped like `core.Block` for `block_medians`."""

    contaminated = False

    def __init__(self, start: int, n: int):
        self.start, self.n = start, n


def blocked_median_ci(samples: Sequence[float], blocks: Sequence,
                      conf: float = 0.95) -> tuple[float, float]:
    """CI of the median latency with blocks as the independent units: order statistics of the
    block medians (>= 6 blocks), their full range (2-5 blocks), or, for results without block
    structure (e.g. remote repeats, each already an average), order statistics of the samples."""
    meds = block_medians(samples, blocks)
    if len(meds) >= 6:
        return median_ci(meds, conf)
    if len(meds) >= 2:
        return (float(meds.min()), float(meds.max()))
    return median_ci(samples, conf)


# ---- paired and two-sample intervals of log ratios (the gate's and comparisons' statistics) ----

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
    return float(np.median(diffs)), float(lo), float(hi), mann_whitney_p(x, y)
