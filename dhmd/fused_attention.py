"""Attention with attention dropout on the CPU in one fused C kernel (dhmd/csrc/dropout_attention.c):
forward and backward row by row, flash-attention style, no (T_q x T_k) matrix in memory.

The mathematics and the masks are dhmd/dropout_attention.py's (the same hash of each entry's index, the
same scaling), so this is a faster implementation of that function, not another model:
:func:`dhmd.dropout_attention.dropout_attention` sends float32 CPU tensors here when the kernel could
be built (dhmd/native.py) and keeps its chunked torch / numba path otherwise.  Forward saves q (scaled),
k, v (scaled), the output and one log-sum-exp per query; backward scores each row again.

The (batch x heads) rows are split over the threads of dhmd/keep_apply.py's pool
(``in_row_blocks``, torch.get_num_threads() threads); ctypes releases the GIL for each block.
"""
from __future__ import annotations

import ctypes
import functools

import torch
from torch import Tensor

from . import keep_hash, native
from .keep_apply import in_row_blocks

_i64, _u64, _u32, _f32, _ptr = ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_float, ctypes.c_void_p


@functools.cache
def _kernels() -> tuple | None:
    lib = native.library("dropout_attention")
    if lib is None:
        return None
    fwd, bwd = lib.dhmd_attention_forward, lib.dhmd_attention_backward
    fwd.argtypes = [_i64] * 5 + [_ptr] * 4 + [_u64, _u32] + [_ptr] * 2
    bwd.argtypes = [_i64] * 5 + [_ptr] * 4 + [_u64, _u32] + [_ptr] * 3 + [_f32] + [_ptr] * 3
    fwd.restype = bwd.restype = ctypes.c_int
    return fwd, bwd


def available() -> bool:
    """Whether the C kernel is built and loaded (False: no compiler, a failed build, DHMD_NATIVE=0)."""
    return _kernels() is not None


def usable(q: Tensor) -> bool:
    """Whether :func:`fused_dropout_attention` takes these tensors (CPU float32, kernel available)."""
    return q.device.type == "cpu" and q.dtype == torch.float32 and available()


def _ptr_of(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _run(fn, rows: int, *args) -> None:
    """fn(r0, r1, *args) over blocks of rows, one block a thread; raises if a block failed."""
    if any(in_row_blocks(rows, lambda r0, r1: fn(r0, r1, *args))):
        raise MemoryError("dhmd fused attention: no memory for a row's scratch buffers")


class FusedDropoutAttention(torch.autograd.Function):
    """q (R, Tq, d), k/v (R, Tk, d) float32 contiguous, bias (R, Tk) additive (0 / -inf) or None."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, p: float, scale: float,
                seed: int) -> Tensor:
        fwd, _ = _kernels()
        rows, tq, d = q.shape
        tk = k.shape[1]
        threshold = keep_hash.threshold(p)
        key = keep_hash.key(seed)
        q_scaled = q * scale
        k_t = k.transpose(1, 2).contiguous()
        v_t = (v * (1.0 / keep_hash.keep_probability(p))).transpose(1, 2).contiguous()
        out = torch.empty_like(q_scaled)
        lse = torch.empty(rows, tq, dtype=q.dtype)
        _run(fwd, rows, tq, tk, d, q_scaled.data_ptr(), k_t.data_ptr(), v_t.data_ptr(), _ptr_of(bias),
             key, threshold, out.data_ptr(), lse.data_ptr())
        ctx.save_for_backward(q_scaled, k_t, v_t, bias, out, lse)
        ctx.p, ctx.scale, ctx.key = p, scale, key
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        _, bwd = _kernels()
        q_scaled, k_t, v_t, bias, out, lse = ctx.saved_tensors
        rows, tq, d = q_scaled.shape
        tk = k_t.shape[2]
        grad_out = grad_out.contiguous()
        dq, dk_t, dv_t = torch.empty_like(q_scaled), torch.empty_like(k_t), torch.empty_like(v_t)
        _run(bwd, rows, tq, tk, d, q_scaled.data_ptr(), k_t.data_ptr(), v_t.data_ptr(), _ptr_of(bias),
             ctx.key, keep_hash.threshold(ctx.p), out.data_ptr(), lse.data_ptr(), grad_out.data_ptr(),
             1.0 / keep_hash.keep_probability(ctx.p), dq.data_ptr(), dk_t.data_ptr(), dv_t.data_ptr())
        return dq.mul_(ctx.scale), dk_t.transpose(1, 2), dv_t.transpose(1, 2), None, None, None, None


def fused_dropout_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, p: float, scale: float,
                            seed: int) -> Tensor:
    """softmax(q k^T * scale + bias) * keep / keep_prob @ v with the keep mask of ``seed`` (as
    dhmd/dropout_attention.py): q (R, Tq, d), k/v (R, Tk, d) float32 contiguous, bias (R, 1, Tk) or
    None."""
    if bias is not None:
        bias = bias.reshape(bias.shape[0], bias.shape[-1]).contiguous()
    return FusedDropoutAttention.apply(q, k, v, bias, float(p), float(scale), int(seed))
