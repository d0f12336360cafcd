"""Dropout keep masks from a counter-based hash: entry i of a call is kept unless the top 16 bits of
SplitMix64(key + i * golden_gamma) fall below round(p * 2**16).

Why: a mask drawn from torch's CPU generator runs one Mersenne-Twister step after another on one core
(about 6 ns an attention entry here, bernoulli_ 19 ns; bench/keep_masks.py), the largest cost of a
training step at the paper's settings.  A hash of the entry's index needs no state, so any entry's bit
is computed where it is used, in any order, on every core, and backward computes the same mask again
instead of keeping it: fused into the pass that applies it, 0.6-0.9 ns an entry on two threads
(bench/keep_masks.py).  SplitMix64 (Steele, Lea and Flood 2014) is the output function of Java's
SplittableRandom; its outputs over consecutive counters pass BigCrush.

Two implementations of the same function: numba kernels (dhmd/keep_kernels.py, run by
dhmd/keep_apply.py) that apply the mask while they compute it, and the pure-torch reference here that
returns it (tests, and the fallback when numba is missing or the dtype is not float32 / float64).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

GAMMA = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
_MASK64 = (1 << 64) - 1
_SCALE = 1 << 16                  # the mask's resolution: the top 16 bits of an element's hash


def threshold(p: float) -> int:
    """Dropout ``p`` as the integer an element's top 16 hash bits must reach to be kept."""
    return round(p * _SCALE)


def keep_probability(p: float) -> float:
    """The probability with which an element is kept for dropout ``p`` (16-bit resolution: within
    7.7e-6 of 1 - p); kept elements are scaled by its inverse."""
    return 1.0 - threshold(p) / _SCALE


def _mix(z: int) -> int:
    """SplitMix64's output function on a Python int (mod 2**64)."""
    z = ((z ^ (z >> 30)) * MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * MIX2) & _MASK64
    return z ^ (z >> 31)


def key(seed: int) -> int:
    """The 64-bit key of one call's masks, from its seed (hashed, so nearby seeds give unrelated keys)."""
    return _mix((seed + GAMMA) & _MASK64)


def as_uint64(value: int) -> np.uint64:
    """A key as the numba kernels take it."""
    return np.uint64(value & _MASK64)


def _signed(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def _shr(z: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 tensors holding uint64 bit patterns."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def keep_mask(key_: int, start: int, shape: tuple[int, ...] | torch.Size, threshold: int) -> Tensor:
    """The bool keep mask of entries start, start + 1, ... laid out in ``shape`` (the reference)."""
    n = math.prod(shape)
    z = torch.arange(start, start + n, dtype=torch.int64) * _signed(GAMMA) + _signed(key_)
    z = (z ^ _shr(z, 30)) * _signed(MIX1)
    z = (z ^ _shr(z, 27)) * _signed(MIX2)
    z = z ^ _shr(z, 31)
    return _shr(z, 48).ge(threshold).view(tuple(shape))
