"""quantize-static on transformers built by `transformers` from their configs (tiny, random
weights, exported by deploykit's exporter): the default quantizes only MatMul/Gemm/Conv/Gather
there, so the attention-mask Add (which holds the -3.4e38 sentinel) and the attention Softmax
stay float. GPT-2's attention is made peaked (Q/K weights scaled up), as trained attention is:
quantizing the mask Add then flattens it, which random near-uniform attention hides."""

import functools

import numpy as np
import onnx
import pytest

from deploykit.fidelity import compare, judge, run_ort
from deploykit.rewrite import StepContext, apply_step
from deploykit.rewrite.quantize_static import Config, QuantizeStaticPass, attention_graph

SEQ = 128


class _First:
    """forward(input_ids, attention_mask) -> last_hidden_state (built lazily: torch import)."""

    @staticmethod
    def wrap(model):
        import torch

        class First(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask):
                return self.m(input_ids=input_ids, attention_mask=attention_mask)[0]

        return First(model.eval()).eval()


@functools.lru_cache(maxsize=None)
def _exported(arch: str, tmp: str) -> bytes:
    import torch
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

    from deploykit.export.exporter import export_module

    torch.manual_seed(0)
    if arch == "gpt2":
        cfg = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=100, n_positions=SEQ,
                         use_cache=False, bos_token_id=0, eos_token_id=0)
        m = GPT2Model._from_config(cfg, attn_implementation="eager")
        with torch.no_grad():  # peaked attention: scale the Q and K projections
            for blk in m.h:
                blk.attn.c_attn.weight[:, :2 * cfg.n_embd] *= 6
    else:
        cfg = BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=2,
                         intermediate_size=128, vocab_size=100, max_position_embeddings=SEQ)
        m = BertModel._from_config(cfg, attn_implementation="eager")
    ids = torch.randint(0, 100, (1, SEQ))
    out = f"{tmp}/{arch}.onnx"
    export_module(_First.wrap(m), (ids, torch.ones(1, SEQ, dtype=torch.int64)), out)
    return onnx.load(out).SerializeToString()


def _batch(rng):
    return {"input_ids": rng.integers(0, 100, (1, SEQ)).astype(np.int64),
            "attention_mask": np.ones((1, SEQ), np.int64)}


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_default_static_int8_keeps_attention_float_and_passes(tmp_path_factory, arch):
    model = onnx.load_from_string(_exported(arch, str(tmp_path_factory.mktemp(arch))))
    assert attention_graph(model) is not None
    rng = np.random.default_rng(0)
    ctx = StepContext(feeds=_batch(rng), calibration=tuple(_batch(rng) for _ in range(4)),
                      workdir=tmp_path_factory.mktemp("q"))
    res = apply_step(QuantizeStaticPass(Config(), ctx), model)
    q = res.model
    assert any("transformer graph" in n for n in res.notes)
    prod = {o: n for n in q.graph.node for o in n.output}
    assert res.details["op_types"] == ["MatMul", "Gemm", "Conv", "Gather"]
    quantized = {n.op_type for n in q.graph.node
                 if any(getattr(prod.get(i), "op_type", "") == "DequantizeLinear" for i in n.input)}
    assert {"MatMul", "Gather"} <= quantized
    softmax = [n for n in q.graph.node if n.op_type == "Softmax"]
    assert len(softmax) == 2
    for sm in softmax:  # the scores + mask Add and the Softmax reading it stay float
        add = prod[sm.input[0]]
        assert add.op_type == "Add"
        assert all(prod[i].op_type != "DequantizeLinear" for i in add.input if i in prod)
    fids = [compare(run_ort(model, b), run_ort(q, b)) for b in (ctx.feeds, _batch(rng))]
    for fid in fids:
        assert judge(fid, "int8") is None
        assert fid.cosine > 0.999 and fid.max_rel > 0  # quantized, and close
