import copy

import numpy as np
import pytest
import torch
from torch import nn

from deploykit.compress import compact, lowrank, prune
from deploykit.errors import InputError


def _chain():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU(),
                      nn.Conv2d(16, 24, 3, 2, 1), nn.BatchNorm2d(24), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Flatten(), nn.Linear(24 * 16, 10))
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.1, 0.1)
    return m.eval()


X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def test_prune_filters_matches_parent_with_dropped_inputs_zeroed():
    parent = _chain()
    pruned = copy.deepcopy(parent)
    records = prune.prune_filters(pruned, 0.5)
    assert [r["kept"] for r in records] == [8, 12]
    assert pruned[0].out_channels == 8 and pruned[1].num_features == 8
    assert pruned[3].in_channels == 8 and pruned[8].in_features == 12 * 16
    # zero, in the parent, what reads the dropped channels: outputs must then agree exactly
    for conv, bn, reader, spatial in ((parent[0], parent[1], parent[3], 1),
                                      (parent[3], parent[4], parent[8], 16)):
        # importance: the filter's L1 norm with its BatchNorm folded in (as exported)
        l1 = conv.weight.abs().reshape(conv.out_channels, -1).sum(1) * bn.weight.abs() / \
            torch.sqrt(bn.running_var + bn.eps)
        dropped = torch.argsort(l1, descending=True, stable=True)[conv.out_channels // 2:]
        cols = (dropped[:, None] * spatial + torch.arange(spatial)).reshape(-1)
        with torch.no_grad():
            reader.weight[:, cols] = 0
    with torch.no_grad():
        torch.testing.assert_close(pruned(X), parent(X), rtol=1e-5, atol=1e-5)


def test_prune_filters_leaves_residual_branches_alone():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            y = self.a(x)
            return y + self.b(y)

    model = Res()
    records = prune.prune_filters(model, 0.5)
    assert [r["layer"] for r in records] == ["a", "b"]  # both convs seen ...
    assert all("prune-channels" in r["skipped"] for r in records)  # ... and both left alone
    assert model.a.out_channels == model.b.out_channels == 8


def test_magnitude_prune_masks_and_finalize():
    m = _chain()
    sparsity = prune.magnitude_prune(m, 0.7, scope="global")
    assert sparsity == pytest.approx(0.7, abs=0.01)
    prune.finalize(m)
    assert not any("weight_orig" in n for n, _ in m.named_parameters())
    with pytest.raises(InputError):
        prune.magnitude_prune(_chain(), 1.5)


def _low_rank_linear():
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(48, 6) @ torch.randn(6, 64))
    return nn.Sequential(lin, nn.ReLU())


def test_svd_linear_exact_on_low_rank_weight():
    m = _low_rank_linear()
    x = torch.randn(4, 64)
    ref = m(x)
    layers = lowrank.svd_linear(m, energy=0.999999)
    assert layers[0]["rank"] == 6 and isinstance(m[0], nn.Sequential)
    torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-4)
    assert lowrank.svd_linear(_low_rank_linear(), ratio=0.9)[0]["skipped"]


def test_tucker_conv_exact_on_tucker_rank_weight():
    torch.manual_seed(0)
    conv = nn.Conv2d(24, 32, 3, 2, 1)
    core = torch.randn(8, 6, 3, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("rskl,or,is->oikl", core, torch.randn(32, 8),
                                       torch.randn(24, 6)))
    m = nn.Sequential(conv)
    x = torch.randn(1, 24, 16, 16)
    ref = m(x)
    layers = lowrank.tucker_conv(m, energy=0.9999999)
    assert layers[0]["ranks"] == [8, 6] and len(m[0]) == 3
    torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-3)


def test_separable_conv_exact_with_enough_multiplier_and_lossy_without():
    rng = np.random.default_rng(0)
    w = np.einsum("oim,imk->oik", rng.standard_normal((32, 16, 2)),
                  rng.standard_normal((16, 2, 9))).reshape(32, 16, 3, 3)
    conv = nn.Conv2d(16, 32, 3, 1, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(w))
    x = torch.randn(1, 16, 12, 12)
    m = nn.Sequential(copy.deepcopy(conv))
    ref = m(x)
    layers = compact.separable_conv(m, multiplier=2)
    assert m[0][0].groups == 16 and layers[0]["rel_frobenius_error"] < 1e-6
    torch.testing.assert_close(m(x), ref, rtol=1e-4, atol=1e-4)
    assert compact.separable_conv(nn.Sequential(conv), 1)[0]["rel_frobenius_error"] > 0.1
