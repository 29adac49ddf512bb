"""Pareto fronts on synthetic points whose front is known by construction."""

import numpy as np
import pytest

from deploykit.search.pareto import dominates, pareto_front


def test_known_front_latency_vs_fidelity():
    # (latency ms: min, fidelity: max); front = 0, 2, 4 by construction
    pts = [(1.0, 0.90), (2.0, 0.80), (2.0, 0.95), (3.0, 0.94), (4.0, 0.999), (5.0, 0.99)]
    assert pareto_front(pts, ("min", "max")) == [0, 2, 4]


def test_three_objectives_and_duplicates():
    # (latency, fidelity, size): point 3 only wins on size, so it stays; duplicates both stay
    pts = [(1.0, 0.9, 10.0), (1.0, 0.9, 10.0), (2.0, 0.8, 20.0), (3.0, 0.5, 1.0)]
    assert pareto_front(pts, ("min", "max", "min")) == [0, 1, 3]


def test_random_front_matches_brute_force():
    rng = np.random.default_rng(0)
    pts = [tuple(p) for p in rng.random((200, 2))]
    front = set(pareto_front(pts, ("min", "max")))
    for i, p in enumerate(pts):
        dominated = any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in pts)
        assert (i in front) == (not dominated)


def test_dominates_and_bad_sense():
    assert dominates((1, 2), (2, 2), ("min", "max"))
    assert not dominates((1, 2), (1, 2), ("min", "max"))
    with pytest.raises(ValueError):
        pareto_front([(1, 2)], ("min", "up"))
