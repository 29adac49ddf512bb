"""The NetAdapt loop on a synthetic cost model (no timing), and inside a real search on a small CNN."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from deploykit.search.netadapt import Layer, NetAdaptConfig, layers_of, netadapt, state_steps


@dataclass
class _Row:
    status: str
    table_ms: float | None
    fidelity: float | None


# three layers: each removed share saves cost[layer] * share ms and loses loss[layer] * share
COST = {"a": 10.0, "b": 6.0, "c": 1.0}
LOSS = {"a": 0.08, "b": 0.02, "c": 0.001}
MOVES = (0.25, 0.5, 0.75)


def _layers():
    return [Layer("prune", n, MOVES, frozenset({n})) for n in COST]


def _propose(log):
    def propose(state):
        log.append(dict(state))
        ms = sum(COST.values()) - sum(COST[n] * v for (_, n), v in state.items())
        fid = 1 - sum(LOSS[n] * v for (_, n), v in state.items())
        return _Row("ok" if fid >= 0.95 else "rejected", ms, fid)
    return propose


def test_each_iteration_keeps_the_most_faithful_proposal_that_meets_the_goal():
    proposed = []
    rows, log = netadapt(sum(COST.values()), _layers(), NetAdaptConfig(step=0.1, top_layers=3),
                         _propose(proposed), lambda row: dict(COST), lambda row: False,
                         lambda: True)
    # iteration 1, goal 15.3 ms: 'a' needs 0.25 (fid 0.98), 'b' needs 0.5 (fid 0.99) -> b
    assert log[0].chosen == "prune b -> 0.5" and log[0].goal_ms == pytest.approx(15.3)
    assert proposed[:3] == [{("prune", "a"): 0.25}, {("prune", "b"): 0.25},
                            {("prune", "b"): 0.5}]
    for it, row in zip(log, rows):
        assert row.table_ms <= it.goal_ms and row.fidelity >= 0.95
    assert [r.table_ms for r in rows] == sorted((r.table_ms for r in rows), reverse=True)
    # it stops when no layer meets the goal within the fidelity floor, and says so
    assert log[-1].chosen is None and len(rows) == len(log) - 1
    assert log[-1].stop == "no layer meets the goal above the fidelity floor"
    # 'c' (1 ms of units) cannot save the 1.7 ms asked first: never among its proposals
    assert log[0].tried == 3
    assert 1 - rows[-1].fidelity <= 0.05


def test_stops_at_the_budget_and_on_time():
    rows, log = netadapt(17.0, _layers(), NetAdaptConfig(step=0.1), _propose([]),
                         lambda row: dict(COST), lambda row: row.table_ms < 14, lambda: True)
    assert rows[-1].table_ms < 14 and all(r.table_ms >= 14 for r in rows[:-1])
    assert log[-1].stop == "budget met"
    rows, log = netadapt(17.0, _layers(), NetAdaptConfig(), _propose([]), lambda row: dict(COST),
                         lambda row: False, lambda: False)
    assert rows == [] and log == []


def test_state_steps_are_recipes():
    from deploykit.rewrite.recipe import make_step

    steps = state_steps({("lowrank", "onnx::MatMul_9"): 0.25, ("prune", "w1"): 0.5,
                         ("prune", "w0"): 0.125})
    assert [name for name, _ in steps] == ["prune-channels", "lowrank"]
    built = [make_step(name, dict(fields)).config for name, fields in steps]
    assert built[0].layers == ("w0:0.125", "w1:0.5") and built[0].ratio == 0.0
    assert built[1].layers == ("onnx::MatMul_9:0.25",)


def test_layers_of_a_cnn_with_a_linear_head(tmp_path):
    import onnx

    from _search_models import residual_cnn

    model = onnx.load(residual_cnn(tmp_path / "cnn.onnx"))
    layers = {(la.kind, la.name): la for la in layers_of(model, {"prune", "lowrank"})}
    # conv2 and the skip share the residual Add's group (named by its first producer); fc1
    # (16 -> 64) is worth factorizing down to rank 1, fc2 (64 -> 10) is below min_size
    assert set(layers) == {("prune", "w0"), ("prune", "w1"), ("prune", "w2"),
                           ("lowrank", "fc1")}
    assert layers[("prune", "w1")].weights >= {"w1", "w2"}  # conv2 reads conv1's channels
    assert layers[("lowrank", "fc1")].moves == (0.5, 0.375, 0.25, 0.125, 0.0625)


def test_tied_weights_unsafe_names_and_moves_that_change_nothing(tmp_path):
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = {name: numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), name)
         for name in ("tied", "a,b")}
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "tied"], ["h"]),
         helper.make_node("MatMul", ["h", "tied"], ["h2"]),
         helper.make_node("MatMul", ["h2", "a,b"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], list(w.values()))
    layers = layers_of(helper.make_model(graph), {"lowrank"})
    # one layer for the weight used twice; 'a,b' would not survive the recipe syntax
    assert [la.name for la in layers] == ["tied"]
    # ranks 24, 16, 8, 4 (rank 32 of a 64x64 weight saves no FLOPs)
    assert layers[0].moves == (0.375, 0.25, 0.125, 0.0625)
    from deploykit.search.netadapt import PRUNE_MOVES, _distinct

    # a 2-channel group: every cut leaves 1 channel, so one move; a 1-channel group has none
    assert _distinct(PRUNE_MOVES, lambda m: max(1, 2 - round(m * 2)), unchanged=2) == (0.375,)
    assert _distinct(PRUNE_MOVES, lambda m: max(1, 1 - round(m * 1)), unchanged=1) == ()


def test_many_small_layers_get_a_goal_one_layer_can_meet():
    """20 layers of 1 ms each: 8% of 20 ms is more than any one layer holds, so the goal is half
    of the costliest layer's time instead, and the loop makes progress."""
    cost = {f"l{i}": 1.0 for i in range(20)}

    def propose(state):
        return _Row("ok", 20.0 - sum(v for v in state.values()), 0.999)

    rows, log = netadapt(20.0, [Layer("lowrank", n, MOVES, frozenset({n})) for n in cost],
                         NetAdaptConfig(max_iters=3), propose, lambda row: cost,
                         lambda row: False, lambda: True)
    assert log[0].goal_ms == pytest.approx(19.5) and len(rows) == 3
    assert rows[0].table_ms == pytest.approx(19.5)  # the smallest move that meets it


def test_feed_forward_blocks_are_per_layer_moves(tmp_path):
    import onnx

    from deploykit.rewrite.recipe import make_step
    from onnx_models import tiny_encoder

    model = onnx.load(str(tiny_encoder(tmp_path / "enc.onnx", ffn=64)))
    layers = layers_of(model, {"ffn"})
    assert [(la.kind, la.name) for la in layers] == [("ffn", "l0.fc1.w"), ("ffn", "l1.fc1.w")]
    # 64 neurons kept in multiples of 8: 0.125 -> 56, 0.25 -> 48, ... each move a new width
    assert layers[0].moves == (0.125, 0.25, 0.375, 0.5, 0.625, 0.75)
    assert layers[0].weights == {"l0.fc1.w", "l0.fc2.w"}
    steps = state_steps({("ffn", "l1.fc1.w"): 0.5, ("prune", "w1"): 0.25})
    assert [name for name, _ in steps] == ["prune-channels", "prune-ffn"]
    cfg = make_step("prune-ffn", dict(steps[1][1])).config
    assert cfg.layers == ("l1.fc1.w:0.5",) and cfg.ratio == 0.0


def test_attention_blocks_are_per_layer_moves(tmp_path):
    import onnx

    from deploykit.search.candidates import model_candidates
    from onnx_models import tiny_attention

    model = onnx.load(str(tiny_attention(tmp_path / "att.onnx", heads=4)))
    layers = layers_of(model, {"heads"})
    assert [(la.kind, la.name) for la in layers] == [("heads", "l0.q.w"), ("heads", "l1.q.w")]
    # 4 heads: the first move of each distinct head count kept (3, 2, 1); 0.125 removes none
    assert layers[0].moves == (0.25, 0.375, 0.75)
    assert layers[0].weights == {"l0.q.w", "l0.k.w", "l0.v.w", "l0.o.w"}
    assert [name for name, _ in state_steps({("heads", "l0.q.w"): 0.5})] == ["prune-heads"]
    assert "prune-heads:ratio=0.25; quantize-dynamic" in [c.recipe for c in
                                                          model_candidates(model)]
