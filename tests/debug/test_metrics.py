"""Streaming error statistics against numpy computed in float64 (known answers)."""

import json
import math

import numpy as np

from deploykit.debug.metrics import Stats


def test_matches_float64_over_batches():
    rng = np.random.default_rng(0)
    refs = [rng.standard_normal(200_000).astype(np.float32) for _ in range(3)]
    gots = [r + rng.standard_normal(r.size).astype(np.float32) * 1e-2 for r in refs]
    s = Stats()
    for r, g in zip(refs, gots):
        s.add(r.reshape(40, -1), g.reshape(40, -1))
    r64 = np.concatenate(refs).astype(np.float64)
    g64 = np.concatenate(gots).astype(np.float64)
    m = s.metric()
    cos = r64 @ g64 / np.linalg.norm(r64) / np.linalg.norm(g64)
    assert abs((1 - m.cosine) - (1 - cos)) < 1e-3 * (1 - cos)
    assert abs(m.sqnr_db - 10 * np.log10((r64 @ r64) / ((g64 - r64) @ (g64 - r64)))) < 1e-4
    assert m.max_abs == np.max(np.abs(g64 - r64)).astype(np.float32)
    assert abs(m.max_rel - m.max_abs / np.max(np.abs(r64))) < 1e-12


def test_exact_huge_and_non_finite():
    r = np.full(1000, -3.4e38, np.float32)  # an additive attention mask: finite, squares overflow
    r[:10] = 1.0
    s = Stats()
    s.add(r, r.copy())
    m = s.metric()
    assert m.finite and m.sqnr_db == math.inf and m.cosine == 1.0
    assert json.loads(json.dumps(m.to_dict(), allow_nan=False))["exact"] is True
    g = r.copy()
    g[:10] = 1.5
    s = Stats()
    s.add(r, g)
    assert s.metric().finite and s.metric().max_abs == 0.5
    g[0] = np.nan
    s = Stats()
    s.add(r, g)
    m = s.metric()
    assert not m.finite and m.badness == math.inf
    d = json.loads(json.dumps(m.to_dict(), allow_nan=False))
    assert d["sqnr_db"] is None and d["finite"] is False and d["exact"] is False
