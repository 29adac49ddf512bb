import numpy as np
import pytest

from deploykit import stats


@pytest.mark.parametrize("n", [20, 200, 2000])
def test_median_ci_covers_true_median_at_nominal_rate(n):
    # lognormal(0, 0.3): true median exp(0) = 1; coverage must be >= 95% (minus MC error)
    rng = np.random.default_rng(n)
    hits = sum(lo <= 1.0 <= hi for lo, hi in
               (stats.median_ci(rng.lognormal(0, 0.3, n)) for _ in range(800)))
    assert hits / 800 >= 0.93


def test_median_ci_is_order_statistics_of_the_sample():
    x = np.arange(1, 101, dtype=float)  # n=100: the 95% interval is x(40)..x(61) (1-based)
    lo, hi = stats.median_ci(x)
    assert (lo, hi) == (40.0, 61.0)


def test_median_ci_tiny_samples_fall_back_to_range():
    assert stats.median_ci([3.0, 1.0, 2.0]) == (1.0, 3.0)


def test_mann_whitney_detects_shift_not_noise():
    rng = np.random.default_rng(3)
    base = rng.lognormal(0, 0.1, 300)
    assert stats.mann_whitney_p(base * 1.1, rng.lognormal(0, 0.1, 300)) < 1e-6
    assert stats.mann_whitney_p(rng.lognormal(0, 0.1, 300), base) > 0.001


def test_report_median_lies_inside_its_ci_when_loaded_blocks_are_dropped():
    """9 clean blocks around 1.0 ms and 7 contaminated ones at 1.5 ms, each of 50 samples: the
    median of all samples would be pulled up and out of the CI built on the clean blocks."""
    from deploykit.core import Block, LatencyReport

    rng = np.random.default_rng(0)
    samples, blocks = [], []
    for i in range(16):
        slow = i % 2 == 1 and i < 14
        blocks.append(Block(len(samples), 50, 0.5 if slow else 0.0, slow))
        samples += list((1.5 if slow else 1.0) + 0.002 * rng.standard_normal(50))
    rep = LatencyReport(tuple(samples), "t", {}, "a", "", "", {}, "ci-reached",
                        blocks=tuple(blocks))
    lo, hi = rep.ci95_ms
    assert lo <= rep.median_ms <= hi and rep.median_ms < 1.1
    assert not lo <= float(np.median(samples)) <= hi  # what the pooled median would have shown
    unblocked = LatencyReport((1.0, 2.0, 3.0), "t", {}, "a", "", "", {}, "sample-cap")
    assert unblocked.median_ms == 2.0
