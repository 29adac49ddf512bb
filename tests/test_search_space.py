"""Candidate generation: recipes made of the recipe runner's step names and Config fields."""

import importlib.util

import onnx

from deploykit.backends import registry as targets
from deploykit.rewrite.recipe import parse_recipe
from deploykit.search.candidates import (Candidate, model_candidates, model_traits, option_variants,
                                         target_for)

from _search_models import residual_cnn


def test_cnn_with_linear_head_gets_every_available_family(tmp_path):
    model = onnx.load(str(residual_cnn(tmp_path / "m.onnx")))
    assert model_traits(model) == {"conv": True, "kxk": True, "linear": True, "quantized": False}
    cands = model_candidates(model, min_fidelity=0.99)
    assert cands[0] == Candidate("baseline") and cands[0].recipe == ""
    assert len({c.id for c in cands}) == len(cands)
    # the core families need nothing optional: listed here, not asked of available_steps (which
    # drops a step whose module fails to import, so a broken module would shrink the expectation)
    have = {"quantize-static", "quantize-dynamic", "prune-channels", "lowrank", "tucker", "compact"}
    from deploykit.rewrite.prune_ffn import prunable_layers

    if prunable_layers(model):  # a Linear block with an activation between: prune-ffn too
        have.add("prune-ffn")
    if all(importlib.util.find_spec(m) for m in ("nncf", "openvino")):  # CI: the openvino extra
        have |= {"nncf-int8", "nncf-weights"}
    used = {name for c in cands for name, _ in c.steps}
    assert used == have  # every installed family is tried, nothing else
    for c in cands[1:]:
        steps = parse_recipe(c.recipe)  # valid names and Config fields of the real steps
        assert [s.name for s in steps] == [n for n, _ in c.steps]
    fams = {c.family for c in cands}
    assert {"baseline", "int8"} <= fams
    assert {"prune", "prune+int8"} <= fams
    assert any(c.recipe == "prune-channels:ratio=0.5; quantize-static" for c in cands)
    assert any(c.recipe == "quantize-static:target_cosine=0.99" for c in cands)  # fp32 fallback
    assert any(c.recipe == "quantize-static:per_channel=false" for c in cands)


def test_linear_only_and_already_quantized_models(tmp_path):
    from onnx_models import make_mlp
    from onnxruntime.quantization import quantize_dynamic

    mlp = make_mlp(tmp_path / "mlp.onnx", sizes=(64, 64, 8))
    m = onnx.load(str(mlp))
    fams = {c.family for c in model_candidates(m)}
    assert "tucker" not in fams and "compact" not in fams
    recipes = [c.recipe for c in model_candidates(m)]
    # MatMul -> Relu -> MatMul is a feed-forward block: pruned by neurons, never by channels
    assert "prune-ffn:ratio=0.5; quantize-dynamic" in recipes
    assert not any("prune-channels" in r for r in recipes)
    assert "quantize-dynamic" in recipes
    assert not any("target_cosine" in r for r in recipes)  # no fidelity target given
    floor = [c.recipe for c in model_candidates(m, min_fidelity=0.99213)]
    # the fp32 fallback for the dynamic int8 of a Linear model, never below the floor
    assert "quantize-dynamic:target_cosine=0.99213" in floor
    assert not any("target_cosine" in r for r in
                   (c.recipe for c in model_candidates(m, min_fidelity=1.2)))  # an --eval floor
    assert "lowrank:ratio=0.125; quantize-dynamic" in recipes
    quantize_dynamic(str(mlp), str(tmp_path / "q.onnx"))
    assert model_candidates(onnx.load(str(tmp_path / "q.onnx"))) == [Candidate("baseline")]


def test_target_option_variants():
    t = targets.get("ort-cpu", threads=2)
    variants = option_variants(t)
    assert variants[:3] == [(), (("threads", 1),), (("graph_optimization_level", "extended"),)]
    alone = [v for v in variants[3:] if len(v) == 1]
    for extra in alone:  # other CPU runtimes, when installed: same threads, fp32
        assert extra[0][0] == "target"
        other = target_for("ort-cpu", t.config, extra)
        assert other.name == extra[0][1] and other.threads == 2
        assert other.unavailable_reason() is None
    # then each option combined with fewer threads
    assert variants[3 + len(alone):] == [tuple(sorted(v + (("threads", 1),)))
                                         for v in variants[2:3 + len(alone)]]
    for combo in variants[3 + len(alone):]:
        assert target_for("ort-cpu", t.config, combo).threads == 1
    v = target_for("ort-cpu", t.config, (("graph_optimization_level", "extended"),
                                         ("threads", 1)))
    assert v.threads == 1 and v.config["options"]["graph_optimization_level"] == "extended"
    assert v.config["options"]["providers"] == t.config["options"]["providers"]
    assert option_variants(targets.get("ort-cpu", threads=1))[:2] == \
        [(), (("graph_optimization_level", "extended"),)]
    c = Candidate("int8", (("quantize-static", ()),), (("threads", 1),))
    assert c.name == "quantize-static @ threads=1" and c.model_id == c.with_options(()).model_id
    assert c.id != c.with_options(()).id
