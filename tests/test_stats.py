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
