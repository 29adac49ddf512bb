"""prune-channels through grouped convs and channel shuffles (ShuffleNet v1): every group keeps
the same positions, mapped through the shuffle permutation. Exactness is checked against the
parent with every weight that reads a dropped channel zeroed (grouped convs included)."""

import numpy as np
import onnx
from _compress_models import CTX, full_check, image, rel_err, run, zeroed_parent
from onnx import TensorProto, helper, numpy_helper

from deploykit.rewrite import apply_step, prune_channels as pc
from deploykit.rewrite._channel_graph import load_ir


def _shuffle_net(seed=0, g=2):
    """x[1,4,8,8] -> Conv 4->8 -> Relu -> [GConv(g) 8->16 -> BN -> Relu -> shuffle(g) ->
    depthwise 3x3 -> BN -> GConv(g) 16->8 -> BN] + residual -> Relu -> Conv 8->3."""
    rng = np.random.default_rng(seed)

    def f(*s, scale=1.0):
        return (rng.standard_normal(s) * scale).astype(np.float32)

    inits = {"w0": f(8, 4, 3, 3), "w1": f(16, 8 // g, 1, 1), "w_dw": f(16, 1, 3, 3),
             "w2": f(8, 16 // g, 1, 1, scale=0.5), "w3": f(3, 8, 1, 1),
             "s1": np.array([1, g, 16 // g, 8, 8], np.int64),
             "s2": np.array([1, 16, 8, 8], np.int64)}
    for k, c in (("bn1", 16), ("bn2", 16), ("bn3", 8)):
        inits |= {f"{k}_g": rng.uniform(0.5, 1.5, c).astype(np.float32), f"{k}_b": f(c),
                  f"{k}_m": f(c, scale=0.1), f"{k}_v": rng.uniform(0.5, 1.5, c).astype(np.float32)}

    def bn(x, y, k):
        return helper.make_node("BatchNormalization", [x, f"{k}_g", f"{k}_b", f"{k}_m", f"{k}_v"],
                                [y], name=k)

    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1"], ["c1"], group=g, name="gconv1"),
        bn("c1", "n1", "bn1"), helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Reshape", ["r1", "s1"], ["sh1"], name="shuffle_in"),
        helper.make_node("Transpose", ["sh1"], ["sh2"], perm=[0, 2, 1, 3, 4], name="shuffle"),
        helper.make_node("Reshape", ["sh2", "s2"], ["sh3"], name="shuffle_out"),
        helper.make_node("Conv", ["sh3", "w_dw"], ["dw"], group=16, pads=[1, 1, 1, 1],
                         name="dw"),
        bn("dw", "n2", "bn2"),
        helper.make_node("Conv", ["n2", "w2"], ["c2"], group=g, name="gconv2"),
        bn("c2", "n3", "bn3"),
        helper.make_node("Sum", ["n3", "r0"], ["s"], name="residual"),
        helper.make_node("Relu", ["s"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3"], ["y"], name="head")]
    graph = helper.make_graph(
        nodes, "shuffle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    full_check(model)
    return model


def _zeroed(model, keep, cg):
    """`zeroed_parent` (ordinary readers) plus the grouped convs' in-group weight columns."""
    z = zeroed_parent(model, keep, cg)
    inits = {t.name: t for t in z.graph.initializer}
    for w, segs, groups in cg.grouped:
        arr = numpy_helper.to_array(inits[w.name]).copy()
        total = sum(s.size for s in segs)
        per, rows = total // groups, arr.shape[0] // groups
        for c in np.setdiff1d(np.arange(total), cg.indices(segs, keep)):
            h, j = divmod(int(c), per)
            arr[h * rows:(h + 1) * rows, j] = 0
        inits[w.name].CopyFrom(numpy_helper.from_array(arr, w.name))
    return z


def test_prunes_through_grouped_convs_and_the_shuffle_exactly():
    model = _shuffle_net()
    cfg = pc.Config(ratio=0.5)
    cg = pc.ChannelGraph(load_ir(model))
    assert len(cg.prunable()) == 2  # the bottleneck (16) and the residual stream (8)
    assert sorted(cg.tiling(r) for r in cg.prunable()) == [2, 4]  # stream: g; bottleneck: g*g
    keep = pc.choose_keep(cg, cfg)
    res = apply_step(pc.PruneChannelsPass(cfg, CTX), model)
    assert res.skipped is None, res.skipped
    out = res.model
    full_check(out)
    w = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    assert w["w1"].shape == (8, 2, 1, 1) and w["w2"].shape == (4, 4, 1, 1)
    assert w["w_dw"].shape == (8, 1, 3, 3) and w["w0"].shape == (4, 4, 3, 3)
    shapes = [w[n.input[1]].tolist() for n in out.graph.node if n.op_type == "Reshape"]
    assert shapes == [[1, 2, 4, 8, 8], [1, 8, 8, 8]]
    assert [a.i for n in out.graph.node if n.name == "dw" for a in n.attribute
            if a.name == "group"] == [8]
    # the kept bottleneck channels repeat the same positions in each of the 4 tiles
    bottleneck = next(r for r in keep if cg.size[r] == 16)
    assert keep[bottleneck].reshape(4, 2).tolist() == [
        (t * 4 + keep[bottleneck][:2]).tolist() for t in range(4)]
    x = image(shape=(1, 4, 8, 8))
    assert rel_err(run(_zeroed(model, keep, cg), x), run(out, x)) < 1e-5
    assert rel_err(run(model, x), run(out, x)) > 1e-3  # lossy against the real parent


def test_a_grouped_conv_reading_a_concat_pins_its_inputs():
    model = _shuffle_net()
    inits = {t.name: t for t in model.graph.initializer}
    # r0 becomes Concat(r0a, r0b): conv0 split in two producers of 4 channels each
    w0 = numpy_helper.to_array(inits["w0"])
    for i, part in enumerate((w0[:4], w0[4:])):
        model.graph.initializer.append(numpy_helper.from_array(part, f"w0{i}"))
    nodes = list(model.graph.node)
    nodes[0:2] = [helper.make_node("Conv", ["x", "w00"], ["c0a"], pads=[1, 1, 1, 1], name="c0a"),
                  helper.make_node("Conv", ["x", "w01"], ["c0b"], pads=[1, 1, 1, 1], name="c0b"),
                  helper.make_node("Concat", ["c0a", "c0b"], ["c0"], axis=1, name="cat"),
                  helper.make_node("Relu", ["c0"], ["r0"], name="relu0")]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.remove(inits["w0"])
    full_check(model)
    cg = pc.ChannelGraph(load_ir(model))
    assert [cg.size[r] for r in cg.prunable()] == [16]  # the bottleneck only
    assert any("several groups" in why for why in cg.blocked.values())


def test_light_shufflenet_prunes_after_intake(tmp_path):
    from deploykit.intake import intake
    from deploykit.rewrite.prune_channels import PruneChannelsPass

    src = f"{onnx.__path__[0]}/backend/test/data/light/light_shufflenet.onnx"
    model = onnx.load(intake(src, tmp_path / "intake").path)
    res = apply_step(PruneChannelsPass(pc.Config(ratio=0.5), CTX), model)
    assert res.skipped is None, res.skipped
    pruned = [g for g in res.details["groups"] if g["kept"] < g["channels"]]
    assert len(pruned) >= 12  # the bottlenecks; streams are pinned by the concat blocks
    assert res.details["params_after"] < 0.8 * res.details["params_before"]
    full_check(res.model)
    x = image(shape=(1, 3, 224, 224))
    assert run(res.model, x).shape == run(model, x).shape


def test_torch_exported_shuffle_unit_prunes_exactly(tmp_path):
    """ShuffleNet's unit as torch writes it (view -> transpose -> view), exported by deploykit."""
    import torch
    from torch import nn

    from deploykit.export.exporter import export_module

    class Unit(nn.Module):
        def __init__(self, c=16, m=32, g=4):
            super().__init__()
            self.g = g
            self.stem = nn.Conv2d(3, c, 3, padding=1)
            self.g1, self.b1 = nn.Conv2d(c, m, 1, groups=g), nn.BatchNorm2d(m)
            self.dw, self.b2 = nn.Conv2d(m, m, 3, padding=1, groups=m), nn.BatchNorm2d(m)
            self.g2, self.b3 = nn.Conv2d(m, c, 1, groups=g), nn.BatchNorm2d(c)
            self.head = nn.Conv2d(c, 5, 1)

        def forward(self, x):
            x = torch.relu(self.stem(x))
            y = torch.relu(self.b1(self.g1(x)))
            n, c, h, w = y.shape
            y = y.view(n, self.g, c // self.g, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)
            return self.head(torch.relu(x + self.b3(self.g2(self.b2(self.dw(y))))))

    torch.manual_seed(0)
    unit = Unit().eval()
    for mod in unit.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.1)
            mod.running_var.uniform_(0.5, 1.5)
    export_module(unit, (torch.randn(1, 3, 16, 16),), tmp_path / "unit.onnx")
    model = onnx.load(str(tmp_path / "unit.onnx"))
    cfg = pc.Config(ratio=0.5)
    cg = pc.ChannelGraph(load_ir(model))
    assert sorted(cg.size[r] for r in cg.prunable()) == [16, 32]
    keep = pc.choose_keep(cg, cfg)
    res = apply_step(pc.PruneChannelsPass(cfg, CTX), model)
    assert res.skipped is None, res.skipped
    full_check(res.model)
    assert [g["kept"] for g in res.details["groups"]] == [8, 16]
    x = image(shape=(1, 3, 16, 16))
    assert rel_err(run(_zeroed(model, keep, cg), x), run(res.model, x)) < 1e-5
