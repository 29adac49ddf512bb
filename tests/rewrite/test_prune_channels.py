import numpy as np
import pytest
from _compress_models import (CTX, bn_concat_net, full_check, image, load, op_types, params,
                              rel_err, run, zeroed_parent)
from onnx import helper, numpy_helper

from deploykit.errors import InputError
from deploykit.rewrite import apply_step, prune_channels as pc


def _plan(model, cfg):
    cg = pc.ChannelGraph(pc.load_ir(model))
    return cg, pc.choose_keep(cg, cfg)


@pytest.mark.parametrize("name,scope,groups", [("tinyresnet", "layer", 8),
                                                ("resnet50", "global", 37),
                                                ("mobilenetv2", "layer", 24)])
def test_prunes_coupled_groups_and_matches_zeroed_parent(name, scope, groups):
    model = load(name)
    cfg = pc.Config(ratio=0.5, scope=scope)
    res = apply_step(pc.PruneChannelsPass(cfg, CTX), model)
    assert res.skipped is None
    out = res.model
    full_check(out)
    assert op_types(out) == op_types(model)  # same graph, thinner tensors
    assert len(res.details["groups"]) == groups and res.details["pinned_groups"] == 0
    assert params(out) < 0.4 * params(model)
    cg, keep = _plan(model, cfg)
    x = image()
    ref = run(zeroed_parent(model, keep, cg), x)
    assert rel_err(ref, run(out, x)) < 1e-4
    assert rel_err(run(model, x), run(out, x)) > 1e-3  # it is lossy against the real parent


def test_residual_add_prunes_all_joined_tensors_together():
    model = load("tinyresnet")
    cg, keep = _plan(model, pc.Config(ratio=0.5))
    # the stem and the first block's output are joined by an identity Add: one group, 2 producers
    stem_group = [r for r in cg.prunable() if len(cg.producer_names(r)) == 2]
    assert len(stem_group) == 4  # stem+block0, and each projection shortcut with its conv2
    for r in stem_group:
        assert len(keep[r]) == cg.size[r] // 2


def test_bn_concat_depthwise_flatten_head_exact_on_zeroed_parent():
    model = bn_concat_net()
    cfg = pc.Config(ratio=0.5)
    res = apply_step(pc.PruneChannelsPass(cfg, CTX), model)
    out = res.model
    full_check(out)
    assert op_types(out) == op_types(model)
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    assert inits["w0"].shape == (4, 3, 3, 3) and inits["g"].shape == (4,)
    assert inits["wa"].shape == (3, 4, 3, 3) and inits["wb"].shape == (2, 4, 1, 1)
    assert inits["wd"].shape == (5, 1, 3, 3) and inits["scale"].shape == (1, 5, 1, 1)
    assert inits["fc_w"].shape == (5, 5 * 16)  # 4x4 positions per kept channel
    assert [a.i for n in out.graph.node if n.name == "dw" for a in n.attribute
            if a.name == "group"] == [5]
    cg, keep = _plan(model, cfg)
    x = image(1, (1, 3, 16, 16))
    assert rel_err(run(zeroed_parent(model, keep, cg), x), run(out, x)) < 1e-5


def test_keeps_filters_with_largest_l1_norm():
    model = bn_concat_net()
    res = apply_step(pc.PruneChannelsPass(pc.Config(ratio=0.5), CTX), model)
    w0 = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w0"))
    kept = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}["w0"]
    top = np.sort(np.argsort(-np.abs(w0).sum(axis=(1, 2, 3)))[:4])
    np.testing.assert_array_equal(kept, w0[top])


def test_residual_false_keeps_joined_groups_whole():
    model = load("tinyresnet")
    cg, keep = _plan(model, pc.Config(ratio=0.5, residual=False))
    assert sorted(len(cg.producer_names(r)) for r in keep) == [1, 1, 1, 1]  # the 4 conv1 groups
    res = apply_step(pc.PruneChannelsPass(pc.Config(ratio=0.5, residual=False), CTX), model)
    x = image()
    assert rel_err(run(zeroed_parent(model, keep, cg), x), run(res.model, x)) < 1e-4


def test_round_to_and_min_channels():
    model = load("tinyresnet")
    cg, keep = _plan(model, pc.Config(ratio=0.7, round_to=8))
    assert keep and all(len(k) % 8 == 0 for k in keep.values())
    cg, keep = _plan(model, pc.Config(ratio=0.99, min_channels=4))
    assert keep and all(len(k) == 4 for k in keep.values())


def test_channels_reaching_graph_output_are_pinned():
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("x", 1, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", 1, [1, 4, 8, 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    res = apply_step(pc.PruneChannelsPass(pc.Config(), CTX), model)
    assert res.model is None and "graph output" in res.skipped


@pytest.mark.parametrize("cfg", [pc.Config(ratio=-0.1), pc.Config(ratio=1.0),
                                 pc.Config(scope="net"), pc.Config(round_to=0),
                                 pc.Config(layers=("w0:1.0",)), pc.Config(layers=("w0",)),
                                 pc.Config(layers=("nope:0.5",)),
                                 pc.Config(scope="global", layers=("w0:0.5",))])
def test_bad_config_is_an_input_error(cfg):
    with pytest.raises(InputError):
        apply_step(pc.PruneChannelsPass(cfg, CTX), bn_concat_net())


def test_per_layer_ratios_prune_only_the_named_groups():
    model = load("tinyresnet")
    layers = pc.prunable_layers(model)
    assert len(layers) == 8 and all(ch > 0 and name == ws[0] and readers
                                    for name, ch, ws, readers in layers)
    (a, ch_a, _, _), (b, ch_b, ws_b, _) = layers[0], next(x for x in layers if len(x[2]) == 2)
    # a group may be named by any of its producers' weights
    cfg = pc.Config(ratio=0.0, layers=(f"{a}:0.5", f"{ws_b[-1]}:0.25"))
    cg, keep = _plan(model, cfg)
    sizes = {cg.producer_names(r)[0]: len(k) for r, k in keep.items()}
    assert sizes == {a: ch_a - round(0.5 * ch_a), b: ch_b - round(0.25 * ch_b)}
    res = apply_step(pc.PruneChannelsPass(cfg, CTX), model)
    full_check(res.model)
    kept = [g["kept"] for g in res.details["groups"]]
    assert sum(k < g["channels"] for k, g in zip(kept, res.details["groups"])) == 2
    x = image()
    assert rel_err(run(zeroed_parent(model, keep, cg), x), run(res.model, x)) < 1e-4
    # unnamed groups take `ratio`
    _, keep_all = _plan(model, pc.Config(ratio=0.5, layers=(f"{a}:0.25",)))
    assert len(keep_all) == 8
    assert apply_step(pc.PruneChannelsPass(pc.Config(ratio=0.0), CTX),
                      model).skipped.endswith("remove no channel from any group")


def test_layers_field_parses_names_with_colons_from_a_recipe():
    from deploykit.rewrite.recipe import parse_recipe

    (st,) = parse_recipe("prune-channels:ratio=0,layers=onnx::Conv_12:0.5|conv.weight:0.25")
    assert st.config.layers == ("onnx::Conv_12:0.5", "conv.weight:0.25")
    from deploykit.rewrite import per_layer

    assert per_layer(st.config.layers, "prune-channels", 0, 1) == {"onnx::Conv_12": 0.5,
                                                                   "conv.weight": 0.25}
