"""Distribution-free statistics for latency samples.

Everything here is tested on synthetic samples with known answers; nothing here times anything.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


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
                  min_clean: int = 8) -> np.ndarray:
    """Median of each timed block (`core.Block`). Consecutive samples are not independent on a
    shared machine (the median drifts from block to block), so blocks are the unit of evidence.
    Contaminated blocks are dropped when at least `min_clean` clean ones remain."""
    x = np.asarray(samples, dtype=float)
    use = [b for b in blocks if b.n > 0]
    clean = [b for b in use if not b.contaminated]
    if drop_contaminated and len(clean) >= min_clean:
        use = clean
    return np.array([np.median(x[b.start:b.start + b.n]) for b in use])


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
