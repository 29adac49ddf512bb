"""Torch-side filter pruning follows residual blocks (torch.fx finds the coupling): every block's
inner convs shrink, and with residual=True the stage's residual stream too, the same channels
kept for each Add's operands, the downsample conv/BN and the next readers; the result equals
the ONNX-side prune-channels of the same ratio on the exported graph."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from deploykit.compress.channel_groups import channel_groups, has_residual_streams
from deploykit.compress.prune import prune_filters


class _Block(nn.Module):  # a class name nothing in deploykit knows
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.c2, self.n2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.proj = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        idt = x if self.proj is None else self.proj(x)
        y = torch.relu(self.n1(self.c1(x)))
        return torch.relu(self.n2(self.c2(y)) + idt)


class _Net(nn.Module):
    """Two stages of two blocks: stage 1 on the stem's channels (identity shortcuts), stage 2
    with a downsample projection, then pool -> flatten -> Linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU())
        self.s1 = nn.Sequential(_Block(8, 8, 1), _Block(8, 8, 1))
        self.s2 = nn.Sequential(_Block(8, 16, 2), _Block(16, 16, 1))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.s2(self.s1(self.stem(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _net():
    torch.manual_seed(0)
    m = _Net()
    with torch.no_grad():  # real BatchNorm statistics: the importance folds them in
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.3, 2.0)
                mod.weight.uniform_(0.3, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    return m.eval()


X = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(3))
STAGE1 = ["stem.0", "s1.0.c2", "s1.1.c2"]
STAGE2 = ["s2.0.proj.0", "s2.0.c2", "s2.1.c2"]
INNER = ["s1.0.c1", "s1.1.c1", "s2.0.c1", "s2.1.c1"]


def test_groups_found_from_the_traced_graph():
    groups, of_conv = channel_groups(_net())
    assert sorted(of_conv["s1.0.c2"].producers) == sorted(STAGE1)
    assert of_conv["s2.1.c2"] is of_conv["s2.0.proj.0"]
    assert sorted(of_conv["s2.1.c2"].producers) == sorted(STAGE2)
    s1 = of_conv["stem.0"]
    assert s1.joined and not s1.blocked
    # the stage's readers: each block's first conv and the next stage's projection
    assert sorted(s1.convs_reading) == ["s1.0.c1", "s1.1.c1", "s2.0.c1", "s2.0.proj.0"]
    assert of_conv["s2.0.c2"].linears_reading == ["fc"]
    for name in INNER:
        assert of_conv[name].producers == [name] and not of_conv[name].joined
    assert has_residual_streams(_net())


def test_inner_convs_pruned_the_stream_left_whole_by_default():
    m = _net()
    ref = m(X)
    records = {r["layer"]: r for r in prune_filters(m, 0.5)}
    for name in INNER:
        assert records[name]["kept"] == records[name]["channels"] // 2
    for name in STAGE1 + STAGE2:
        assert "residual stream" in records[name]["skipped"]
    assert m.s1[0].c1.out_channels == 4 and m.s1[0].n1.num_features == 4
    assert m.s1[0].c2.in_channels == 4 and m.s1[0].c2.out_channels == 8
    assert m.s2[0].c1.out_channels == 8 and m.s2[0].c2.in_channels == 8
    assert m.stem[0].out_channels == 8 and m.fc.in_features == 16
    assert m(X).shape == ref.shape


def _folded_l1(m, conv, bn):
    w = m.get_submodule(conv).weight.detach()
    b = m.get_submodule(bn)
    return w.abs().reshape(w.shape[0], -1).sum(1) * b.weight.abs() / torch.sqrt(
        b.running_var + b.eps)


def test_the_stream_pruned_coupled_keeps_the_same_channels_everywhere():
    parent = _net()
    m = copy.deepcopy(parent)
    records = {r["layer"]: r for r in prune_filters(m, 0.5, residual=True)}
    assert all("kept" in r for r in records.values()), records
    # stage 1: the stem, both blocks' last convs and every reader agree on 4 of 8 channels
    assert m.stem[0].out_channels == m.stem[1].num_features == 4
    assert m.s1[0].c2.out_channels == m.s1[1].c2.out_channels == m.s1[1].n2.num_features == 4
    assert m.s1[0].c1.in_channels == m.s1[1].c1.in_channels == 4
    assert m.s2[0].c1.in_channels == m.s2[0].proj[0].in_channels == 4
    # stage 2: projection + last convs 8 of 16, and the Linear reads those 8
    assert m.s2[0].proj[0].out_channels == m.s2[0].proj[1].num_features == 8
    assert m.s2[1].c2.out_channels == 8 and m.fc.in_features == 8
    # kept: the largest BN-folded L1 norms summed over the stage's convs
    score = sum(_folded_l1(parent, c, b) for c, b in
                (("stem.0", "stem.1"), ("s1.0.c2", "s1.0.n2"), ("s1.1.c2", "s1.1.n2")))
    keep = torch.sort(torch.argsort(score, descending=True)[:4]).values
    torch.testing.assert_close(m.stem[0].weight, parent.stem[0].weight[keep])
    score2 = sum(_folded_l1(parent, c, b) for c, b in
                 (("s2.0.proj.0", "s2.0.proj.1"), ("s2.0.c2", "s2.0.n2"), ("s2.1.c2", "s2.1.n2")))
    keep2 = torch.sort(torch.argsort(score2, descending=True)[:8]).values
    torch.testing.assert_close(m.s2[0].proj[0].weight,
                               parent.s2[0].proj[0].weight[keep2][:, keep])
    torch.testing.assert_close(m.fc.weight, parent.fc.weight[:, keep2])
    torch.testing.assert_close(m.s1[1].n2.running_var, parent.s1[1].n2.running_var[keep])
    assert m(X).shape == (2, 5)


@pytest.mark.parametrize("residual", [False, True])
def test_equals_the_onnx_side_prune_channels(tmp_path, residual):
    """The same ratio on the exported graph (BN folded there) removes the same channels: the two
    pruned models compute the same outputs on ORT."""
    import onnx

    from deploykit.core import ModelRef
    from deploykit.export.exporter import export_module
    from deploykit.fidelity import run_ort
    from deploykit.rewrite import StepContext
    from deploykit.rewrite.recipe import make_step, run_recipe

    parent = _net()
    src = tmp_path / "net.onnx"
    export_module(parent, (X,), src)
    name = onnx.load(str(src)).graph.input[0].name
    feeds = {name: X.numpy()}
    res = run_recipe(ModelRef.from_path(src), [make_step("prune-channels", {
        "ratio": 0.5, "residual": residual})],
        StepContext(feeds=feeds, calibration_is_synthetic=True, workdir=tmp_path / "w"))
    pruned = copy.deepcopy(parent)
    prune_filters(pruned, 0.5, residual=residual)
    out = tmp_path / "torch_pruned.onnx"
    export_module(pruned, (X,), out)
    onnx_side, torch_side = run_ort(res.final.path, feeds), run_ort(out, feeds)
    whole = run_ort(src, feeds)
    assert not np.allclose(whole[0], torch_side[0], atol=1e-3)  # pruning changed something
    np.testing.assert_allclose(torch_side[0], onnx_side[0], rtol=1e-4, atol=1e-5)
    assert onnx.load(str(out)).graph.initializer  # sanity: a real model


def test_channels_that_reach_a_concat_or_the_output_stay_whole():
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
            self.c = nn.Conv2d(16, 4, 1)

        def forward(self, x):
            return self.c(torch.cat([self.a(x), self.b(x)], 1))

    m = Cat()
    records = {r["layer"]: r for r in prune_filters(m, 0.5, residual=True)}
    assert "stay whole" in records["a"]["skipped"] and "stay whole" in records["c"]["skipped"]
    assert m.a.out_channels == 8 and m.c.out_channels == 4
