"""A BERT encoder in plain torch, loaded from a Hugging Face model folder, for the text features.

Why not transformers: importing ``transformers`` and its BertModel costs about 5.5 s of a fresh
process on this 2-core machine (its integrations import torch.distributed, dynamo and more), which
is a sixth of extracting eight clips and all of a ``predict``'s start-up.  BERT's forward pass is
small, so it is written out here, the way the paper (Devlin et al., 2019) and the checkpoint
describe it; ``tokenizers`` (the fast tokenizer transformers itself uses) splits the words.

:func:`extractors.bert_files.supported` says whether a folder holds a checkpoint this module reads: ``config.json`` with
``model_type`` "bert", absolute position embeddings and a GELU/ReLU activation, a
``tokenizer.json``, and ``model.safetensors`` or ``pytorch_model.bin``.  Anything else (RoBERTa,
DistilBERT, a folder without tokenizer.json) is left to transformers by the caller
(:mod:`extractors.text`).  The hidden states equal transformers' BertModel's to float rounding
(tests/extractors/test_text.py checks it).

A hub name (``bert-base-uncased``) is fetched with ``huggingface_hub`` (the same cache transformers
uses): config, tokenizer and weights only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from extractors.bert_files import read_config, weight_file

ACTIVATIONS = {"gelu": lambda x: F.gelu(x), "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
               "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"), "relu": F.relu}


class BertLayer(nn.Module):
    """Self-attention, then the feed-forward block; each adds its input back and normalises."""

    def __init__(self, dim: int, heads: int, inner: int, eps: float, act: str) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.attn_out = nn.Linear(dim, dim)
        self.attn_norm = nn.LayerNorm(dim, eps=eps)
        self.inner = nn.Linear(dim, inner)
        self.out = nn.Linear(inner, dim)
        self.out_norm = nn.LayerNorm(dim, eps=eps)
        self.act = ACTIVATIONS[act]

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (proj(x).view(b, t, self.heads, d // self.heads).transpose(1, 2)
                   for proj in (self.query, self.key, self.value))
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        x = self.attn_norm(x + self.attn_out(ctx.transpose(1, 2).reshape(b, t, d)))
        return self.out_norm(x + self.out(self.act(self.inner(x))))


class BertEncoder(nn.Module):
    """BERT's embeddings and encoder layers (no pooler); :meth:`forward` returns every hidden state."""

    def __init__(self, vocab: int, dim: int, layers: int, heads: int, inner: int, positions: int,
                 types: int, eps: float = 1e-12, act: str = "gelu") -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not a multiple of {heads} heads")
        self.word_emb = nn.Embedding(vocab, dim)
        self.pos_emb = nn.Embedding(positions, dim)
        self.type_emb = nn.Embedding(types, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.layers = nn.ModuleList(BertLayer(dim, heads, inner, eps, act) for _ in range(layers))
        self.dim = dim

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, segment: torch.Tensor) -> list[torch.Tensor]:
        """``ids, mask, segment`` (B, T) -> ``layers + 1`` hidden states (B, T, D), embeddings first."""
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.norm(self.word_emb(ids) + self.pos_emb(pos)[None] + self.type_emb(segment))
        keep = mask.bool()[:, None, None, :]       # padding keys take no attention
        states = [x]
        for layer in self.layers:
            x = layer(x, keep)
            states.append(x)
        return states

    @classmethod
    def from_folder(cls, folder: Path) -> "BertEncoder":
        """Build from ``config.json`` and load the folder's weights (strict: every tensor must fit)."""
        cfg = read_config(folder)
        model = cls(vocab=cfg["vocab_size"], dim=cfg["hidden_size"], layers=cfg["num_hidden_layers"],
                    heads=cfg["num_attention_heads"], inner=cfg["intermediate_size"],
                    positions=cfg["max_position_embeddings"], types=cfg.get("type_vocab_size", 2),
                    eps=cfg.get("layer_norm_eps", 1e-12), act=cfg.get("hidden_act", "gelu"))
        model.load_state_dict(_our_names(_read_weights(weight_file(folder))), strict=True)
        return model.eval()


def _read_weights(path: Path | None) -> dict[str, torch.Tensor]:
    if path is None:
        raise FileNotFoundError("no model.safetensors or pytorch_model.bin")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


_RENAMES = (("embeddings.word_embeddings.", "word_emb."), ("embeddings.position_embeddings.", "pos_emb."),
            ("embeddings.token_type_embeddings.", "type_emb."), ("embeddings.LayerNorm.", "norm."),
            ("encoder.layer.", "layers."), (".attention.self.query.", ".query."),
            (".attention.self.key.", ".key."), (".attention.self.value.", ".value."),
            (".attention.output.dense.", ".attn_out."), (".attention.output.LayerNorm.", ".attn_norm."),
            (".intermediate.dense.", ".inner."), (".output.dense.", ".out."), (".output.LayerNorm.", ".out_norm."))


def _our_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face BERT state dict under this module's names; the pooler, the pre-training heads
    and position-id buffers are dropped; old checkpoints' LayerNorm ``gamma``/``beta`` are read too."""
    out = {}
    for name, tensor in state.items():
        if name.startswith("bert."):
            name = name[len("bert."):]
        if not name.startswith(("embeddings.", "encoder.")) or name.endswith("position_ids"):
            continue
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        for old, new in _RENAMES:
            name = name.replace(old, new)
        out[name] = tensor.float()
    return out


class BertTokens:
    """The folder's fast tokenizer, used on word lists (pre-tokenised input, as transformers'
    ``is_split_into_words=True``), truncated to ``max_tokens`` with specials."""

    def __init__(self, folder: Path, max_tokens: int) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(max_length=max_tokens)

    def pieces(self, ids: list[int]) -> list[str]:
        """The word pieces of token ids (``##`` marks a continuation)."""
        return [self.tok.id_to_token(int(i)) for i in ids]

    def __call__(self, batch: list[list[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[int | None]]]:
        """``(ids, mask, segment)`` (B, T) int64 padded with 0, and each row's word ids (None for specials)."""
        encs = self.tok.encode_batch([list(words) for words in batch], is_pretokenized=True)
        width = max(len(e.ids) for e in encs)
        ids, mask, seg = (np.zeros((len(encs), width), np.int64) for _ in range(3))
        for r, e in enumerate(encs):
            n = len(e.ids)
            ids[r, :n], mask[r, :n], seg[r, :n] = e.ids, e.attention_mask, e.type_ids
        return ids, mask, seg, [list(e.word_ids) + [None] * (width - len(e.ids)) for e in encs]

