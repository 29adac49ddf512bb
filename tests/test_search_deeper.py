"""search/deeper.py: when the deepest torch-side prune still meets the floor after its short
recovery, the search cuts deeper (75% -> 87.5% -> 93.75%) with the int8 compositions the passing
cut had, one cut at a time, until one misses the floor; not when it missed, not past DEEPEST,
not when the time kept for measuring would be spent."""

from __future__ import annotations

import pytest

from deploykit.search import recover
from deploykit.search.candidates import Candidate
from deploykit.search.deeper import DEEPEST, deeper_candidates
from deploykit.search.engine import Row, Search, SearchConfig
from deploykit.store import Store
from test_search import FAST
from test_search_recover import _batches, exported_net


def _step(ratio, **extra):
    return (recover.STEP, tuple(sorted({"budget_s": 1.0, "ratio": ratio, **extra}.items())))


def _row(steps, status, family="prune+kd", options=()):
    r = Row(Candidate(family, steps).with_options(options) if options else
            Candidate(family, steps))
    r.status = status
    return r


def test_a_passing_deepest_cut_proposes_the_next_deeper_one_with_its_int8():
    q = ("quantize-static", ())
    rows = [_row((_step(0.5),), "ok"), _row((_step(0.75),), "ok"),
            _row((_step(0.75), q), "ok", "prune+kd+int8"),
            _row((_step(0.75),), "ok", options=(("threads", 1),)),  # a target variant: ignored
            _row((_step(0.5, residual=True),), "ok"), _row((_step(0.75, residual=True),),
                                                           "rejected")]
    cands, note = deeper_candidates(rows, time_left=100.0, reserve=10.0)
    assert note is None
    # the inner-conv cut went on; the stream cut's deepest (75%) missed the floor: not deeper
    assert [c.recipe for c in cands] == ["torch-prune:budget_s=1.0,ratio=0.875",
                                         "torch-prune:budget_s=1.0,ratio=0.875; quantize-static"]
    assert [c.family for c in cands] == ["prune+kd", "prune+kd+int8"]
    # the next round: 87.5% passed -> 93.75%; it missed -> nothing (the final fine-tune's turn)
    built = [_row(c.steps, "ok", c.family) for c in cands]
    assert [c.recipe for c in deeper_candidates(rows + built, 100.0, 10.0)[0]][0] == \
        "torch-prune:budget_s=1.0,ratio=0.9375"
    built[0].status = "rejected"
    assert deeper_candidates(rows + built, 100.0, 10.0) == ([], None)
    # never past DEEPEST
    deepest = [_row((_step(DEEPEST),), "ok")]
    assert deeper_candidates(deepest, 100.0, 10.0) == ([], None)
    # no time beyond what is kept for measuring: a note, nothing built
    none, why = deeper_candidates(rows, time_left=10.5, reserve=10.0)
    assert none == [] and "ratio 0.875" in why and "kept for measuring" in why
    # the final fine-tunes are not a cut to go deeper from
    final = _row((_step(0.75, final=True, continue_s=0.5),), "ok")
    assert deeper_candidates([_row((_step(0.5),), "rejected"), final], 100.0, 10.0) == ([], None)


@pytest.fixture()
def source(tmp_path):
    return exported_net(tmp_path)


def test_the_search_cuts_deeper_until_a_cut_misses_or_deepest(source, tmp_path):
    """A floor every cut meets (no training needed): the search builds the fixed ratios, then
    87.5% and 93.75%, each really pruned (a filter or two of 16 kept), then stops at DEEPEST."""
    src, path = source
    with Store(tmp_path / "s.sqlite") as store:
        res = Search(path, "ort-cpu", SearchConfig(
            min_fidelity=0.0, recover_budget_s=1.0, recover_final_s=0.0, families=("prune",),
            netadapt=False, target_options=False, time_limit_s=600, **FAST),
            tmp_path / "out", store, feeds=_batches(1, seed=5)[0],
            calibration=_batches(8, seed=1), calibration_is_synthetic=False,
            torch_source=src).run()
    pruned = {dict(r.cand.steps[0][1])["ratio"]: r for r in res.rows
              if not r.cand.options and len(r.cand.steps) == 1
              and r.cand.steps[0][0] == recover.STEP}
    assert sorted(pruned) == [*recover.RATIOS, 0.875, 0.9375]
    assert all(r.status == "ok" for r in pruned.values())
    kept = {x["layer"]: x["kept"] for x in pruned[0.9375].recovery["layers"]}
    assert kept and max(kept.values()) == 1  # 16 filters cut to 1
    assert {x["kept"] for x in pruned[0.875].recovery["layers"]} == {2}
    # built right after the recovered prunes, before the graph-side rest of the space
    order = [r.cand.recipe for r in res.rows if not r.cand.options]
    graph = [i for i, x in enumerate(order) if x.startswith("prune-channels")]
    assert graph and order.index("torch-prune:budget_s=1.0,ratio=0.9375") < graph[0]
