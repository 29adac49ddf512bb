"""The shared keep-in-float search (quantize-static/-dynamic target_cosine, debug --fix) on
synthetic scores with known answers."""

from deploykit.rewrite._keep_float import smallest_prefix

RANKED = [f"n{i}" for i in range(20)]


def _search(need: int, goal=0.5, limit=16):
    built = []

    def build(names):
        built.append(len(names))
        return f"model-{len(names)}"

    return smallest_prefix(RANKED, build, lambda m: float(int(m.split("-")[1]) >= need), goal,
                           limit), built


def test_finds_the_smallest_count_by_doubling_then_bisecting():
    for need in (1, 2, 3, 5, 6, 9, 13, 16):
        (model, k, score, trials), built = _search(need)
        assert (model, k, score) == (f"model-{need}", need, 1.0)
        assert [t[0] for t in trials] == built and len(built) <= 2 * 5  # log-many builds


def test_goal_out_of_reach_returns_the_largest_tried_and_respects_the_limit():
    (model, k, score, trials), built = _search(need=19, limit=6)
    assert (model, k, score) == ("model-6", 6, 0.0) and max(built) == 6
    assert built == [1, 2, 4, 6]


def test_nothing_to_rank():
    model, k, _, trials = smallest_prefix([], lambda n: n, lambda m: 1.0, 0.5, 8)
    assert model is None and k == 0 and trials == []
