"""Cross-modal attention units (CA) for the heterogeneous space (paper Sec. 3.2, Eq. 10; MulT).

For each target modality m, two cross-modal transformers let X_m^prt (queries) attend to each of the
other two modalities (keys/values); the two outputs are concatenated (B, T_m, 2C) (Eq. 10, "each modality
will be reinforced by the two others and the resulting features will be concatenated").  As in MulT and
the DMD code, a self-attention "memory" transformer then runs over the concatenation; it has
max(3, num_layers) layers as in MulT and DMD (memory_layers; older models had min(3, num_layers)).
attn_dropout may be one value per target modality (MulT's attn_dropout / _a / _v).  Layers are pre-LayerNorm with a 4x FFN
(a cross-modal layer normalises its source with a LayerNorm of its own, a self-attention layer has none);
inputs are scaled by sqrt(dim) and get fixed sinusoidal positions counted over real frames only.

Attention is torch.nn.functional.scaled_dot_product_attention with a key-padding mask, so padded frames
never act as keys.  On CUDA the head dimension is zero-padded to a multiple of 8 (the paper's C=50 with
10 heads has head size 5, which the fused flash / memory-efficient kernels refuse); zero columns change
neither q.k nor the output, and the softmax scale stays 1/sqrt(true head size).  When no frame in the
batch is padded the mask is dropped so SDPA may use its fastest kernel.  On CPU, attention with dropout
goes to dropout_attention.py instead of SDPA's math path (which draws every dropout mask with bernoulli_
and keeps the attention matrices): the same mathematics, chunked, with cheap masks drawn again in backward.
The layers' own dropouts are dhmd/dropout.py's (nn.Dropout with the same hashed masks on the CPU).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dropout import Dropout
from .dropout_attention import dropout_attention
from .masks import positions
from .projection import sinusoidal_positions


def attend(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None, dropout_p: float,
           pad_head_to: int | None = None) -> Tensor:
    """Multi-head attention core.  q (B, h, Tq, d), k/v (B, h, Tk, d), key_mask (B, Tk) True = real.

    pad_head_to: zero-pad the head size up to a multiple of this (None: 8 on CUDA when needed, else off).
    """
    head = q.shape[-1]
    if dropout_p > 0 and not q.is_cuda:     # CPU SDPA has no fused kernel with dropout
        return dropout_attention(q, k, v, key_mask, dropout_p, 1.0 / math.sqrt(head))
    if pad_head_to is None:
        pad_head_to = 8 if q.is_cuda else 1
    padded = -(-head // pad_head_to) * pad_head_to
    if padded != head:
        q, k, v = (F.pad(t, (0, padded - head)) for t in (q, k, v))
    attn_mask = None if key_mask is None else key_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                         scale=1.0 / math.sqrt(head))
    return out[..., :head] if padded != head else out


class AttentionLayer(nn.Module):
    """Pre-LN transformer layer: cross-modal (cross=True: keys/values from a source sequence, which gets
    its own LayerNorm norm_kv) or self-attention (cross=False: no norm_kv, keys/values from the queries'
    normalised input)."""

    def __init__(self, dim: int, heads: int, attn_dropout: float, relu_dropout: float,
                 res_dropout: float, cross: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.attn_dropout = attn_dropout
        self.cross = cross
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim) if cross else None
        self.to_q = nn.Linear(dim, dim)
        self.to_kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.ReLU(), Dropout(relu_dropout),
                                nn.Linear(4 * dim, dim))
        self.res_drop = Dropout(res_dropout)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before self-attention layers lost norm_kv hold its (never trained) weights
        if not self.cross:
            for name in ("weight", "bias"):
                state_dict.pop(f"{prefix}norm_kv.{name}", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _split(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x: Tensor, source: Tensor | None, key_mask: Tensor | None) -> Tensor:
        if (source is not None) != self.cross:
            raise ValueError("a cross-modal layer needs a source sequence and a self-attention layer "
                             "takes none")
        q_in = self.norm_q(x)
        kv_in = q_in if source is None else self.norm_kv(source)
        k, v = self.to_kv(kv_in).chunk(2, dim=-1)
        dropout_p = self.attn_dropout if self.training else 0.0
        q, k, v = self._split(self.to_q(q_in)), self._split(k), self._split(v)
        out = attend(q, k, v, key_mask, dropout_p)
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        x = x + self.res_drop(self.proj(out))
        return x + self.res_drop(self.ff(self.norm_ff(x)))


class AttentionEncoder(nn.Module):
    """A stack of AttentionLayer with the MulT input embedding (sqrt(dim) scale + positions + dropout)."""

    def __init__(self, dim: int, heads: int, layers: int, attn_dropout: float, relu_dropout: float,
                 res_dropout: float, embed_dropout: float, cross: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.embed_drop = Dropout(embed_dropout)
        self.layers = nn.ModuleList(
            AttentionLayer(dim, heads, attn_dropout, relu_dropout, res_dropout, cross)
            for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def embed(self, x: Tensor, pos_emb: Tensor) -> Tensor:
        return self.embed_drop(math.sqrt(self.dim) * x + pos_emb.to(x.dtype))

    def forward(self, x: Tensor, x_pos: Tensor, source: Tensor | None = None,
                source_pos: Tensor | None = None, key_mask: Tensor | None = None) -> Tensor:
        x = self.embed(x, x_pos)
        if source is not None:
            source = self.embed(source, source_pos)
        for layer in self.layers:
            x = layer(x, source, key_mask)
        return self.norm(x)


class CrossmodalAttention(nn.Module):
    """All six cross-modal transformers plus one memory transformer per target modality."""

    def __init__(self, dim: int, heads: int, layers: int, attn_dropout: float | tuple[float, ...],
                 relu_dropout: float, res_dropout: float, embed_dropout: float, n_modalities: int = 3,
                 memory_layers: int | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.n = n_modalities
        attn = tuple(attn_dropout) if isinstance(attn_dropout, (tuple, list)) else (attn_dropout,) * n_modalities
        depth = max(3, layers) if memory_layers is None else memory_layers
        rest = (relu_dropout, res_dropout, embed_dropout)
        self.cross = nn.ModuleDict({
            f"{s}_to_{t}": AttentionEncoder(dim, heads, layers, attn[t], *rest, cross=True)
            for t in range(n_modalities) for s in range(n_modalities) if s != t})
        mem_dim = (n_modalities - 1) * dim
        self.memory = nn.ModuleList(
            AttentionEncoder(mem_dim, heads, depth, attn[t], *rest) for t in range(n_modalities))

    @property
    def out_dim(self) -> int:
        return (self.n - 1) * self.dim

    def forward(self, feats: list[Tensor], masks: list[Tensor],
                key_masks: list[Tensor | None]) -> list[Tensor]:
        """feats (B, T_m, C) each -> reinforced Z_{->m} (B, T_m, 2C) each."""
        pos = [positions(mask) for mask in masks]
        pos_c = [sinusoidal_positions(p, self.dim) for p in pos]
        pos_mem = [sinusoidal_positions(p, self.out_dim) for p in pos]
        outs = []
        for t in range(self.n):
            parts = [self.cross[f"{s}_to_{t}"](feats[t], pos_c[t], feats[s], pos_c[s], key_masks[s])
                     for s in range(self.n) if s != t]
            outs.append(self.memory[t](torch.cat(parts, dim=-1), pos_mem[t], key_mask=key_masks[t]))
        return outs
