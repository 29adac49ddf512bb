"""Change points in a latency series (`history --trend`): e-divisive segmentation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


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
