"""Apply dhmd/keep_hash.py's dropout masks to CPU tensors in place: with the numba kernels of
dhmd/keep_kernels.py over torch.get_num_threads() threads when they can take the tensor, else with the
hash's torch reference.  Used by attention dropout (dhmd/dropout_attention.py) and by the layers'
dropout (dhmd/dropout.py).

Element (r, c) of a (rows, cols) block is mask index ``start + r * cols + c``: a caller that applies
one mask in several blocks (chunks) passes each block's first index, and backward passes the same.
"""
from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

import torch
from torch import Tensor

from . import keep_hash

_MIN_THREADED = 1 << 16           # elements below which one thread does the work


@functools.cache
def kernels() -> ModuleType | None:
    """The numba kernels (dhmd/keep_kernels.py), or None when numba cannot be imported."""
    try:
        from . import keep_kernels
    except ImportError:
        return None
    return keep_kernels


def numba_ok(t: Tensor) -> bool:
    """Whether the numba kernels can take this tensor (CPU float32 / float64, numba present)."""
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and kernels() is not None


_pool: tuple[int, int, ThreadPoolExecutor] | None = None      # (pid, threads, pool)
_pool_lock = threading.Lock()


def workers() -> tuple[int, ThreadPoolExecutor | None]:
    """(threads, pool): torch.get_num_threads() threads for the kernels (no pool with one); the pool
    is made again after a fork, whose child inherits the pool object but none of its threads."""
    global _pool
    n = torch.get_num_threads()
    if n <= 1:
        return 1, None
    with _pool_lock:
        if _pool is None or _pool[:2] != (os.getpid(), n):
            _pool = (os.getpid(), n, ThreadPoolExecutor(n, thread_name_prefix="dhmd-dropout"))
        return n, _pool[2]


def shutdown() -> None:
    """Join the kernels' threads now (a process leaving a distributed group calls it first, so no
    thread of ours is alive while the group's native threads are torn down); a later call makes a
    new pool."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool[2].shutdown(wait=True)


def in_row_blocks(rows: int, block, threaded: bool = True) -> list:
    """``block(r0, r1)`` over [0, rows) cut into one block of rows a thread (torch.get_num_threads()
    threads of :func:`workers`; one block, in this thread, when ``threaded`` is False or there is one
    thread); returns the blocks' results in order."""
    parts, pool = workers() if threaded and rows > 1 else (1, None)
    if pool is None:
        return [block(0, rows)]
    parts = min(parts, rows)
    bounds = [rows * i // parts for i in range(parts + 1)]
    futures = [pool.submit(block, r0, r1) for r0, r1 in zip(bounds, bounds[1:])]
    return [f.result() for f in futures]


def _run_split(fn, arrays: list, start: int, *rest) -> None:
    """``fn(*[a[r0:r1] for a in arrays], start + r0 * cols, *rest)`` over blocks of rows, a thread a
    block; arrays[0] is (rows, cols)."""
    rows, cols = arrays[0].shape
    in_row_blocks(rows, lambda r0, r1: fn(*[a[r0:r1] for a in arrays], start + r0 * cols, *rest),
                  threaded=rows * cols >= _MIN_THREADED)


def _rows(t: Tensor):
    """A contiguous tensor as a (rows, last dim) numpy view."""
    return t.numpy().reshape(-1, t.shape[-1]) if t.dim() > 1 else t.numpy().reshape(1, -1)


def drop_(x: Tensor, key: int, start: int, threshold: int) -> Tensor:
    """Zero, in place, the dropped elements of contiguous ``x``, whose first element is mask index
    ``start``; returns x."""
    if not numba_ok(x):
        return x.masked_fill_(~keep_hash.keep_mask(key, start, x.shape, threshold), 0)
    _run_split(kernels().drop_, [_rows(x)], start, keep_hash.as_uint64(key), threshold)
    return x


def drop_softmax_backward(attn: Tensor, dp: Tensor, delta: Tensor, key: int, start: int,
                          threshold: int) -> Tensor:
    """One pass over contiguous attention probabilities ``attn``: returns attn * keep and turns dp
    (the gradient w.r.t. the dropped attention) into the softmax gradient attn * (dp * keep - delta),
    in place; delta holds one value per row."""
    if not numba_ok(attn):
        keep = keep_hash.keep_mask(key, start, attn.shape, threshold)
        dp.masked_fill_(~keep, 0).sub_(delta).mul_(attn)
        return attn.masked_fill(~keep, 0)
    kept = torch.empty_like(attn)
    arrays = [_rows(t) for t in (attn, dp, kept)] + [delta.numpy().reshape(-1)]
    _run_split(kernels().drop_backward_, arrays, start, keep_hash.as_uint64(key), threshold)
    return kept
