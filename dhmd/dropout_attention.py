"""Attention with attention dropout on the CPU, cheap: the same mathematics as
``F.scaled_dot_product_attention(q, k, v, mask, dropout_p)`` at a fraction of its cost.

Why: PyTorch's CPU SDPA has no fused kernel with dropout.  Its math path draws the dropout mask with
``bernoulli_`` over every (B, heads, T_q, T_k) attention matrix (about 18 ns an element here, on one
core) and keeps several such matrices for backward.  At CMU-MOSI shapes that was half of a step.

What this does instead (a custom autograd function, flash-attention style on the CPU):

* the keep mask is a counter-based hash of each entry's index (dhmd/keep_hash.py: SplitMix64 keyed by
  a seed), so any entry's bit can be computed where it is used, on any thread, and again in backward;
  no mask is drawn serially or stored.  An entry is kept with probability
  ``1 - round(p * 2**16) / 2**16`` (``keep_probability``: within 7.7e-6 of 1 - p; torch's own float
  draw is quantised to 2**-24) and kept entries are scaled by the inverse of exactly that probability
  (folded into v), so the dropped attention is unbiased as in ``F.dropout``;
* the seed is drawn from the global torch RNG (one draw per call), so runs stay reproducible from
  ``torch.manual_seed``;
* the (B*heads) rows are processed in chunks of at most ``CHUNK_ELEMENTS`` attention entries, so only
  one chunk's matrices exist at a time (memory stays linear in the batch, as with checkpointing);
  forward keeps only q (scaled), k, v (scaled) and the output, backward recomputes the softmax (one
  fused kernel) chunk by chunk;
* the mask is applied by dhmd/keep_apply.py (numba kernels over torch.get_num_threads() threads
  for float32 / float64, else the hash's torch reference), fused in backward with the softmax
  gradient;
* backward uses the identity rowsum(dP * P) = rowsum(dO * O) (flash attention's), so the softmax
  gradient needs no reduction over the dropped matrix.

float32 tensors go to dhmd/fused_attention.py instead when its C kernel could be built (dhmd/native.py):
the same masks and mathematics, fused row by row (several times faster); this chunked path is the
fallback (no C compiler, ``DHMD_NATIVE=0``, float64) and the definition the fused kernel is tested
against.

Forward and gradients equal the reference ``softmax(q k^T * scale + mask) * keep / keep_prob @ v``
with the mask that :func:`dropout_keep_mask` returns for the same seed (tests/model check both paths),
and equal SDPA exactly up to float rounding when ``dropout_p`` is 0.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import fused_attention, keep_hash
from .keep_apply import drop_, drop_softmax_backward
from .keep_hash import keep_probability

CHUNK_ELEMENTS = 1 << 22          # attention entries per chunk (16 MiB of float32)


def dropout_keep_mask(seed: int, rows: int, tq: int, tk: int, p: float) -> Tensor:
    """The (rows, tq, tk) keep mask as floats (1 kept, 0 dropped) that :class:`DropoutAttention`
    applies for ``seed`` (for tests; computed by the pure-torch reference of the hash)."""
    return keep_hash.keep_mask(keep_hash.key(seed), 0, (rows, tq, tk), keep_hash.threshold(p)).float()


def _chunks(rows: int, per_row: int) -> list[tuple[int, int]]:
    step = max(1, CHUNK_ELEMENTS // max(per_row, 1))
    return [(i, min(i + step, rows)) for i in range(0, rows, step)]


def _softmax_scores(q_scaled: Tensor, k: Tensor, bias: Tensor | None) -> Tensor:
    """softmax(q k^T * scale + bias) over keys, q already scaled; bias broadcasts over queries."""
    s = torch.bmm(q_scaled, k.transpose(1, 2)) if bias is None else \
        torch.baddbmm(bias, q_scaled, k.transpose(1, 2))
    return torch.softmax(s, dim=-1)


class DropoutAttention(torch.autograd.Function):
    """q (R, Tq, d), k/v (R, Tk, d), bias (R, 1, Tk) additive (0 / -inf) or None; R = batch * heads."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, p: float, scale: float,
                seed: int) -> Tensor:
        rows, tq, tk = q.shape[0], q.shape[1], k.shape[1]
        threshold = keep_hash.threshold(p)
        q_scaled = q * scale
        v_scaled = v * (1.0 / keep_probability(p)) if threshold else v    # kept entries / keep prob
        key = keep_hash.key(seed)
        out = torch.empty_like(q)
        for a, b in _chunks(rows, tq * tk):
            attn = _softmax_scores(q_scaled[a:b], k[a:b], None if bias is None else bias[a:b])
            if threshold:
                drop_(attn, key, a * tq * tk, threshold)
            torch.bmm(attn, v_scaled[a:b], out=out[a:b])
        ctx.save_for_backward(q_scaled, k, v_scaled, bias, out)
        ctx.p, ctx.scale, ctx.seed = p, scale, seed
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q_scaled, k, v_scaled, bias, out = ctx.saved_tensors
        p, scale = ctx.p, ctx.scale
        rows, tq, tk = q_scaled.shape[0], q_scaled.shape[1], k.shape[1]
        threshold = keep_hash.threshold(p)
        key = keep_hash.key(ctx.seed)
        grad_out = grad_out.contiguous()
        dq, dk, dv = torch.empty_like(q_scaled), torch.empty_like(k), torch.empty_like(v_scaled)
        delta = (grad_out * out).sum(-1, keepdim=True)          # rowsum(dP' * P') per query
        for a, b in _chunks(rows, tq * tk):
            attn = _softmax_scores(q_scaled[a:b], k[a:b], None if bias is None else bias[a:b])
            # out = (attn * keep) @ (v / kp):  d(attn) = keep * (dO @ (v / kp)^T),  dv = (attn * keep)^T dO / kp
            dp = torch.bmm(grad_out[a:b], v_scaled[a:b].transpose(1, 2))
            if threshold:       # ds = attn * (keep * dp - delta), dv from the kept entries, one pass
                kept = drop_softmax_backward(attn, dp, delta[a:b], key, a * tq * tk, threshold)
                torch.bmm(kept.transpose(1, 2), grad_out[a:b], out=dv[a:b])
                ds = dp
            else:
                torch.bmm(attn.transpose(1, 2), grad_out[a:b], out=dv[a:b])
                ds = dp.sub_(delta[a:b]).mul_(attn)             # softmax backward (without the q.k scale)
            torch.bmm(ds, k[a:b], out=dq[a:b])
            torch.bmm(ds.transpose(1, 2), q_scaled[a:b], out=dk[a:b])   # d(q k^T scale)/dk = scale q
        if threshold:
            dv.mul_(1.0 / keep_probability(p))
        return dq.mul_(scale), dk, dv, None, None, None, None


def dropout_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None, dropout_p: float,
                      scale: float, seed: int | None = None) -> Tensor:
    """Attention core with dropout: q (B, h, Tq, d), k/v (B, h, Tk, d), key_mask (B, Tk) True = real.

    ``seed``: the dropout masks' seed; None draws it from the global torch RNG (reproducible runs)."""
    bsz, heads, tq, d = q.shape
    tk = k.shape[2]
    if seed is None:
        seed = int(torch.randint(0, 2 ** 62, (1,)).item())
    bias = None
    if key_mask is not None:
        bias = torch.zeros(key_mask.shape, dtype=q.dtype).masked_fill_(~key_mask, float("-inf"))
        bias = bias[:, None, None, :].expand(bsz, heads, 1, tk).reshape(bsz * heads, 1, tk)
    q, k, v = (t.reshape(bsz * heads, t.shape[2], d).contiguous() for t in (q, k, v))
    if fused_attention.usable(q):           # float32: the fused C kernel, same masks and mathematics
        out = fused_attention.fused_dropout_attention(q, k, v, bias, float(dropout_p), float(scale), seed)
    else:
        out = DropoutAttention.apply(q, k, v, bias, float(dropout_p), float(scale), seed)
    return out.view(bsz, heads, tq, d)
