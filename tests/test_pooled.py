"""An interleaved comparison pooled over several boards (measure/pooled.py): each board's rounds
stay paired, the pooled ratio is the one-board estimator over all rounds, a board whose ratio
differs from the others' is flagged, and a share is sized so the boards give a paired test."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from deploykit.core import Block, LatencyReport, TimingPlan
from deploykit.measure.comparison import Comparison
from deploykit.measure.pooled import (DISAGREE_REL, disagreement_note, paired_rounds, per_board,
                                      pool_reports, share_plan)
from deploykit.stats import MIN_UNITS


def _board(server: str, base_ms: float, ratio: float, rounds: int, seed: int, per=5):
    """One board's interleaved comparison: (baseline, candidate) reports, one block per round
    each, the candidate `ratio` times the baseline, both drifting alike from round to round."""
    rng = np.random.default_rng(seed)
    reps = []
    drift = 1 + 0.2 * rng.random(rounds)  # load common to both sides of a round
    for scale in (1.0, ratio):
        samples, blocks = [], []
        for r in range(rounds):
            x = base_ms * scale * drift[r] * (1 + 0.01 * rng.standard_normal(per))
            blocks.append(Block(len(samples), per, 0.0, False))
            samples += [float(v) for v in x]
        reps.append(LatencyReport(
            samples_ms=tuple(samples), target="tvm-aarch64", target_config={}, artifact_id="a",
            model_sha256="s", model_path="m.onnx", blocks=tuple(blocks), stop_reason="time-cap",
            env={"remote": {"server": server, "where": f"server {server}"}},
            labels=("emulated",), cold_start_samples_ms=(1.0,)))
    return tuple(reps)


def test_pooled_rounds_stay_paired_and_give_the_one_board_estimator():
    parts = [_board(f"10.0.0.{i}:9090", 2.0, 0.8, 6, seed=i) for i in range(3)]
    base, cand = pool_reports(parts)
    assert len(base.blocks) == len(cand.blocks) == 18 == paired_rounds((base, cand))
    assert len(base.samples_ms) == sum(len(p[0].samples_ms) for p in parts)
    # block k of each side is round k of one board: the starts point at that board's samples
    assert base.samples_ms[base.blocks[6].start] == parts[1][0].samples_ms[0]
    assert base.env["remote"]["boards"] == [{"server": f"10.0.0.{i}:9090", "rounds": 6}
                                            for i in range(3)]
    assert base.labels == ("emulated",) and len(base.cold_start_samples_ms) == 3
    r, lo, hi = Comparison((base, cand), ("baseline", "c")).ratio(1, 0)
    assert lo < 0.8 < hi and abs(r - 0.8) < 0.01  # drift cancels within each board's rounds
    rows = per_board((base, cand), 1, 0)
    assert [b["server"] for b in rows] == [f"10.0.0.{i}:9090" for i in range(3)]
    assert all(b["rounds"] == 6 and abs(b["ratio"] - 0.8) < 0.02 and not b["disagrees"]
               for b in rows)
    assert disagreement_note(rows, "x") is None
    assert per_board(parts[0]) == []  # one board: nothing to split


def test_a_board_whose_ratio_differs_is_flagged():
    parts = [_board("a:1", 2.0, 0.8, 8, 1), _board("b:1", 2.0, 0.8, 8, 2),
             _board("c:1", 2.0, 0.8 * (1 + 3 * DISAGREE_REL), 8, 3)]
    rows = per_board(pool_reports(parts), 1, 0)
    assert [b["disagrees"] for b in rows] == [False, False, True]
    assert rows[2]["vs_others"] > 1 + DISAGREE_REL
    note = disagreement_note(rows, "the new/old ratio")
    assert note.startswith("the new/old ratio: board(s) c:1 (ratio 1.04") and "a:1" not in note
    # a small, real difference between boards (below DISAGREE_REL) is not flagged
    parts[2] = _board("c:1", 2.0, 0.8 * (1 + DISAGREE_REL / 3), 8, 3)
    assert not any(b["disagrees"] for b in per_board(pool_reports(parts), 1, 0))


def test_share_plan_leaves_enough_rounds_for_a_paired_test():
    plan = TimingPlan(max_time_s=8.0, block_s=0.5)
    assert share_plan(plan, 1) is plan
    assert share_plan(plan, 3).max_time_s == pytest.approx(8.0 / 3)
    short = TimingPlan(max_time_s=1.0, block_s=0.5)  # 2 rounds: too few to split
    for k in (2, 3, 5):
        assert k * share_plan(short, k).max_time_s / short.block_s >= MIN_UNITS


def test_pooling_refuses_boards_that_compared_different_things():
    a = _board("a:1", 1.0, 1.0, 4, 0)
    with pytest.raises(ValueError):
        pool_reports([a, a[:1]])
    with pytest.raises(ValueError):
        pool_reports([])
    assert math.isfinite(Comparison(pool_reports([a, a]), ("x", "y")).ratio(1, 0)[0])


def test_a_board_that_measured_two_shares_is_one_board():
    """A top-up, or the share of a board that dropped out redone on another: a board's shares
    are its rounds together (one row), not two boards compared with each other."""
    a1, a2 = _board("a:1", 2.0, 0.8, 6, 1), _board("a:1", 2.0, 0.8 * 1.3, 6, 2)
    b = _board("b:1", 2.0, 0.8, 6, 3)
    rows = per_board(pool_reports([a1, b, a2]), 1, 0)
    assert [(r["server"], r["rounds"]) for r in rows] == [("a:1", 12), ("b:1", 6)]
    # every share measured on one board (the others dropped out): nothing to split by board
    assert per_board(pool_reports([a1, a2]), 1, 0) == []


def test_per_board_only_splits_reports_pooled_together():
    """A pooled report beside one it was not pooled with (a baseline made from a pooled check,
    checked in stored mode against a new run): their rounds are not paired, so no board rows;
    nor for a share list that does not add up to the report's rounds."""
    parts = [_board("a:1", 2.0, 0.8, 6, 1), _board("b:1", 2.0, 0.8, 6, 2)]
    pooled = pool_reports(parts)
    other = pool_reports([_board("a:1", 2.0, 0.8, 6, 3), _board("b:1", 2.0, 0.8, 5, 4)])
    assert len(per_board(pooled, 1, 0)) == 2
    assert per_board((pooled[0], other[1]), 1, 0) == []
    assert per_board((pooled[0], parts[0][1]), 1, 0) == []  # against one board's run
    remote = {**pooled[0].env["remote"], "boards": [{"server": "a:1", "rounds": 6},
                                                    {"server": "b:1", "rounds": 9}]}
    bad = [replace(r, env={**r.env, "remote": remote}) for r in pooled]
    assert per_board(bad, 1, 0) == []
