"""numba kernels that apply a dropout keep mask while computing it (run by dhmd/keep_apply.py).

The mask of an element is dhmd/keep_hash.py's SplitMix64 hash of its index; these kernels compute it
where it is applied, one pass over a block of rows, in threads (numba releases the GIL), so no mask
tensor is ever stored and no generator runs serially (bench/keep_masks.py times them against torch's
generator).

(A kernel fusing the scores, softmax, mask and output row by row, flash-attention style, was written
and measured on 2026-12-03: numba's auto-vectorisation of the head-size-5 and -10 reductions made it
slower than these kernels beside torch's bmm and softmax; see BENCHMARKS.md, section 1.)

Imported only when dropout runs on the CPU in training (numba's import costs about half a second);
compiled on first use for each dtype and cached next to this file when the folder is writable.
"""
from __future__ import annotations

import numba
import numpy as np

from .keep_hash import GAMMA, MIX1, MIX2

_U = np.uint64
_GAMMA, _MIX1, _MIX2 = _U(GAMMA), _U(MIX1), _U(MIX2)
_S27, _S30, _S31, _S48 = _U(27), _U(30), _U(31), _U(48)


@numba.njit(nogil=True, cache=True, inline="always")
def _mix(z):
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@numba.njit(nogil=True, cache=True)
def drop_(x, start, key, threshold):
    """x (rows, cols): zero the dropped entries in place; x[r, c] is entry start + r * cols + c."""
    rows, cols = x.shape
    thr = _U(threshold)
    for r in range(rows):
        base = key + _U(start + r * cols) * _GAMMA
        for c in range(cols):
            if (_mix(base + _U(c) * _GAMMA) >> _S48) < thr:
                x[r, c] = 0.0


@numba.njit(nogil=True, cache=True)
def drop_backward_(attn, dp, kept, delta, start, key, threshold):
    """kept = attn * keep; dp <- attn * (dp * keep - delta[row]), the softmax backward, in one pass."""
    rows, cols = attn.shape
    thr = _U(threshold)
    for r in range(rows):
        base = key + _U(start + r * cols) * _GAMMA
        d = delta[r]
        for c in range(cols):
            a = attn[r, c]
            if (_mix(base + _U(c) * _GAMMA) >> _S48) < thr:
                kept[r, c] = 0.0
                dp[r, c] = -a * d
            else:
                kept[r, c] = a
                dp[r, c] = a * (dp[r, c] - d)
