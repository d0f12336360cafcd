"""Attention with attention dropout on the CPU, cheap: the same mathematics as
``F.scaled_dot_product_attention(q, k, v, mask, dropout_p)`` at a fraction of its cost.

Why: PyTorch's CPU SDPA has no fused kernel with dropout.  Its math path draws the dropout mask with
``bernoulli_`` over every (B, heads, T_q, T_k) attention matrix (about 18 ns an element here) and keeps
several such matrices for backward; the model used to recompute the whole core in backward
(activation checkpointing), drawing every mask twice.  At CMU-MOSI shapes that was half of a step.

What this does instead (a custom autograd function, flash-attention style on the CPU):

* the (B*heads) rows are processed in chunks of at most ``CHUNK_ELEMENTS`` attention entries, so only
  one chunk's matrices exist at a time (memory stays linear in the batch, as with checkpointing);
* the keep mask comes from 64-bit random words split into four 16-bit lanes, of which 15 bits are used:
  one RNG draw gives four Bernoulli draws (4x fewer than ``bernoulli_``).  An entry is kept with
  probability ``1 - round(p * 2**15) / 2**15`` (``keep_probability``: within 1.6e-5 of 1 - p; torch's
  own float draw is quantised to 2**-24) and kept entries are scaled by the inverse of exactly that
  probability, so the dropped attention is unbiased as in ``F.dropout``;
* the masks are drawn from a private generator seeded from the global torch RNG (one draw per call, so
  runs stay reproducible from ``torch.manual_seed``) and drawn again from the same seed in backward;
  forward keeps only q, k, v, the output and each row's log-sum-exp (B, h, T_q);
* backward uses the identity rowsum(dP * P) = rowsum(dO * O), so no (T_q, T_k) reduction of the full
  dropped matrix is needed beyond one pass per chunk.

Forward and gradients equal the reference ``softmax(q k^T * scale + mask) * keep / keep_prob @ v``
with the mask that :func:`dropout_keep_mask` returns for the same seed (tests/model check this), and
equal SDPA exactly up to float rounding when ``dropout_p`` is 0.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

CHUNK_ELEMENTS = 1 << 22          # attention entries per chunk (16 MiB of float32)
_SCALE = 1 << 16                  # the keep mask's resolution: 16 random bits an entry
_HALF = 1 << 15


def keep_probability(p: float) -> float:
    """The probability with which an attention entry is kept for dropout ``p`` (16-bit resolution)."""
    return 1.0 - round(p * _SCALE) / _SCALE


def _chunks(rows: int, per_row: int) -> list[tuple[int, int]]:
    step = max(1, CHUNK_ELEMENTS // max(per_row, 1))
    return [(i, min(i + step, rows)) for i in range(0, rows, step)]


def _keep(gen: torch.Generator, shape: tuple[int, ...], threshold: int) -> Tensor:
    """A float32 keep mask of ``shape`` (1.0 kept, 0.0 dropped): each entry kept with probability
    1 - threshold / 2**16.  Float arithmetic (clamp) instead of a bool mask: bool multiplies and
    masked fills are not vectorised on the CPU and cost several times a float pass."""
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2 ** 63, 2 ** 63 - 1, generator=gen)
    lanes = words.view(torch.int16)[:n].to(torch.float32)      # uniform integers in [-2**15, 2**15)
    # lane >= t  <=>  lane - t + 1 >= 1  ->  1.0;  lane < t  <=>  lane - t + 1 <= 0  ->  0.0
    return lanes.sub_(threshold - _HALF - 1).clamp_(0.0, 1.0).view(shape)


def dropout_keep_mask(seed: int, rows: int, tq: int, tk: int, p: float) -> Tensor:
    """The (rows, tq, tk) float keep mask (1 kept, 0 dropped) that :class:`DropoutAttention` draws from
    ``seed`` (for tests)."""
    gen = torch.Generator().manual_seed(seed)
    threshold = round(p * _SCALE)
    return torch.cat([_keep(gen, (b - a, tq, tk), threshold) for a, b in _chunks(rows, tq * tk)])


def _scores(q: Tensor, k: Tensor, bias: Tensor | None, scale: float) -> Tensor:
    """q k^T * scale (+ bias, broadcast over queries): (r, Tq, Tk)."""
    if bias is None:
        return torch.bmm(q, k.transpose(1, 2)).mul_(scale)
    return torch.baddbmm(bias, q, k.transpose(1, 2), alpha=scale)


class DropoutAttention(torch.autograd.Function):
    """q (R, Tq, d), k/v (R, Tk, d), bias (R, 1, Tk) additive (0 / -inf) or None; R = batch * heads."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, p: float, scale: float,
                seed: int) -> Tensor:
        rows, tq, tk = q.shape[0], q.shape[1], k.shape[1]
        threshold = round(p * _SCALE)
        v_scaled = v * (1.0 / keep_probability(p)) if threshold else v    # kept entries / keep prob
        gen = torch.Generator().manual_seed(seed)
        out = torch.empty_like(q)
        lse = torch.empty(rows, tq, 1, dtype=q.dtype)
        for a, b in _chunks(rows, tq * tk):
            s = _scores(q[a:b], k[a:b], None if bias is None else bias[a:b], scale)
            lse[a:b] = torch.logsumexp(s, dim=-1, keepdim=True)
            attn = s.sub_(lse[a:b]).exp_()
            if threshold:
                attn.mul_(_keep(gen, attn.shape, threshold))
            torch.bmm(attn, v_scaled[a:b], out=out[a:b])
        ctx.save_for_backward(q, k, v, bias, out, lse)
        ctx.p, ctx.scale, ctx.seed = p, scale, seed
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v, bias, out, lse = ctx.saved_tensors
        p, scale = ctx.p, ctx.scale
        rows, tq, tk = q.shape[0], q.shape[1], k.shape[1]
        threshold = round(p * _SCALE)
        inv_keep = 1.0 / keep_probability(p)
        v_scaled = v * inv_keep if threshold else v
        gen = torch.Generator().manual_seed(ctx.seed)
        grad_out = grad_out.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        delta = (grad_out * out).sum(-1, keepdim=True)          # rowsum(dP' * P') per query
        for a, b in _chunks(rows, tq * tk):
            s = _scores(q[a:b], k[a:b], None if bias is None else bias[a:b], scale)
            attn = s.sub_(lse[a:b]).exp_()                      # softmax, recomputed from lse
            # out = (attn * keep) @ (v / kp):  d(attn) = keep * (dO @ (v / kp)^T),  dv = (attn * keep)^T dO / kp
            dp = torch.bmm(grad_out[a:b], v_scaled[a:b].transpose(1, 2))
            if threshold:
                keep = _keep(gen, attn.shape, threshold)
                dp.mul_(keep)
                torch.bmm((attn * keep).transpose(1, 2), grad_out[a:b], out=dv[a:b])
                dv[a:b].mul_(inv_keep)
            else:
                torch.bmm(attn.transpose(1, 2), grad_out[a:b], out=dv[a:b])
            ds = dp.sub_(delta[a:b]).mul_(attn).mul_(scale)     # softmax backward, with the q.k scale
            torch.bmm(ds, k[a:b], out=dq[a:b])
            torch.bmm(ds.transpose(1, 2), q[a:b], out=dk[a:b])
        return dq, dk, dv, None, None, None, None


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
    out = DropoutAttention.apply(q.reshape(bsz * heads, tq, d).contiguous(),
                                 k.reshape(bsz * heads, tk, d).contiguous(),
                                 v.reshape(bsz * heads, tk, d).contiguous(), bias, float(dropout_p),
                                 float(scale), seed)
    return out.view(bsz, heads, tq, d)
