"""Dropout whose keep mask is a hash of the element's index (dhmd/keep_hash.py), for CPU training.

nn.Dropout on the CPU draws its mask with bernoulli_, one Mersenne-Twister step after another on one
core: about a tenth of a DHMD step at the paper's settings.  This module computes the same kind of mask
(each element kept with probability 1 - round(p * 2**16) / 2**16, kept elements scaled by its inverse)
with dhmd/keep_apply.py (the attention dropout's hash and kernels), in threads, and computes it again in backward instead of keeping it.
The seed of each call is drawn from the global torch RNG, so runs stay reproducible from
torch.manual_seed.  On CUDA, for other dtypes, without numba, or in eval mode it is nn.Dropout.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import keep_hash
from .keep_apply import drop_, numba_ok


class _HashDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: float, seed: int) -> Tensor:
        ctx.p, ctx.seed = p, seed
        return _apply(x, p, seed)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _apply(grad, ctx.p, ctx.seed), None, None


def _apply(x: Tensor, p: float, seed: int) -> Tensor:
    """x * keep / keep_probability(p) for the mask of ``seed`` (a new tensor)."""
    y = drop_(x.clone(memory_format=torch.contiguous_format), keep_hash.key(seed), 0,
              keep_hash.threshold(p))
    return y.mul_(1.0 / keep_hash.keep_probability(p))


class Dropout(nn.Module):
    """Drop-in for nn.Dropout(p) (no parameters, same state dict)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0 or not numba_ok(x) or x.numel() == 0:
            return F.dropout(x, self.p, True)
        seed = int(torch.randint(0, 2 ** 62, (1,)).item())
        return _HashDropout.apply(x, self.p, seed)

    def extra_repr(self) -> str:
        return f"p={self.p}"
