"""Deep Compression's storage format (compress/sparse_archive.py) and iterative magnitude pruning
(compress/prune.py): pack -> bytes on disk -> unpack gives exactly the int8 grid of the weights,
every pruned weight stays zero through fine-tuning and the archive, a model read back computes
what the quantized one computes, and a damaged file is refused."""

from __future__ import annotations

import lzma

import numpy as np
import pytest
import torch
from torch import nn

from deploykit.compress import prune, sparse_archive
from deploykit.errors import InputError


def _sparse(rng, shape, keep):
    w = rng.standard_normal(shape).astype(np.float32)
    return w * (rng.random(shape) < keep)


def test_round_trip_is_exactly_the_int8_grid_with_long_gaps_and_empty_channels(tmp_path):
    rng = np.random.default_rng(0)
    fc = _sparse(rng, (40, 800), 0.05)
    fc[3] = 0  # an all-zero output channel
    fc[5] = 0
    fc[5, 799] = 0.7  # one nonzero after a gap of > 3 x 255: filler entries
    conv = _sparse(rng, (8, 4, 5, 5), 0.3)
    tensors = {"fc.weight": fc, "fc.bias": rng.standard_normal(40).astype(np.float32),
               "conv.weight": conv, "empty.weight": np.zeros((3, 7), np.float32)}
    info = sparse_archive.write(tmp_path / "m.dkpack", tensors)
    got = sparse_archive.read(tmp_path / "m.dkpack")
    want = sparse_archive.quantized(tensors)
    assert list(got) == list(tensors)
    for k in tensors:
        assert got[k].dtype == np.float32 and got[k].shape == tensors[k].shape
        assert np.array_equal(got[k], want[k]), k  # bit-exact
        assert np.all(got[k][tensors[k] == 0] == 0), k  # the mask survives
    assert np.array_equal(got["fc.bias"], tensors["fc.bias"])  # biases stay float32
    # int8 per output channel: within half a step of the original
    step = np.abs(fc).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(got["fc.weight"] - fc) <= step / 2 + 1e-7)
    assert got["fc.weight"][5, 799] == pytest.approx(0.7, rel=1e-6)
    t = info["tensors"]["fc.weight"]
    nonzeros = int(np.count_nonzero(sparse_archive.quantize_int8(fc)[0]))
    assert t["nonzeros"] == nonzeros and t["entries"] > nonzeros  # fillers for the long gaps
    assert info["bytes"] == (tmp_path / "m.dkpack").stat().st_size
    # stored sparse and entropy coded: far below the fp32 bytes of these weights
    dense = sum(a.size * 4 for a in tensors.values())
    assert info["bytes"] < dense / 8


def test_pruned_finetuned_model_keeps_its_mask_and_reads_back_to_the_same_outputs(tmp_path):
    torch.manual_seed(0)

    def net():
        return nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Flatten(),
                             nn.Linear(6 * 6 * 6, 10))

    model = net()
    x = torch.randn(64, 1, 8, 8)
    y = torch.randint(0, 10, (64,))
    names = {"0": 0.5, "3": 0.9}
    masks = None
    for k in (1, 2):  # iterative: deeper each round, fine-tuned in between
        got = prune.magnitude_prune_layers(model, {n: s * k / 2 for n, s in names.items()})
        assert got == pytest.approx({n: s * k / 2 for n, s in names.items()}, abs=0.01)
        if masks is not None:  # a later round only adds zeros
            assert all(torch.all(model.get_submodule(n).weight_mask <= masks[n]) for n in names)
        masks = {n: model.get_submodule(n).weight_mask.clone() for n in names}
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(5):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    prune.finalize(model)
    for n in names:  # fine-tuning moved the kept weights, never the pruned ones
        w = model.get_submodule(n).weight.detach()
        assert torch.all(w[masks[n] == 0] == 0) and torch.count_nonzero(w) == masks[n].sum()
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    sparse_archive.write(tmp_path / "net.dkpack", state)
    back = net()
    back.load_state_dict({k: torch.from_numpy(v)
                          for k, v in sparse_archive.read(tmp_path / "net.dkpack").items()})
    quant = net()
    quant.load_state_dict({k: torch.from_numpy(v)
                           for k, v in sparse_archive.quantized(state).items()})
    with torch.no_grad():
        assert torch.equal(back(x), quant(x))  # same weights, same outputs
        ref, out = model(x), back(x)
    cos = nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0)
    assert cos > 0.999  # int8 of the pruned weights: close to the fp32 pruned model
    with pytest.raises(InputError, match="no Conv2d/Linear named nope"):
        prune.magnitude_prune_layers(model, {"nope": 0.5})


def test_damaged_archives_are_refused(tmp_path):
    rng = np.random.default_rng(1)
    data, _ = sparse_archive.pack({"w": _sparse(rng, (16, 32), 0.2), "b": np.ones(16, np.float32)})
    assert set(sparse_archive.unpack(data)) == {"w", "b"}
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    bad = {"magic": b"PK\x03\x04" + data[4:], "truncated": data[:-9], "flipped": bytes(flipped),
           "trailing": data + b"junk"}
    for what, blob in bad.items():
        with pytest.raises(InputError):
            sparse_archive.unpack(blob, what)
    # a well-formed container whose header promises more than its payload holds
    raw = lzma.decompress(data[len(sparse_archive.MAGIC):])
    short = sparse_archive.MAGIC + lzma.compress(raw[:-5], format=lzma.FORMAT_XZ)
    with pytest.raises(InputError, match="shorter than its header"):
        sparse_archive.unpack(short)
    with pytest.raises(InputError, match="cannot read"):
        sparse_archive.read(tmp_path / "missing.dkpack")
