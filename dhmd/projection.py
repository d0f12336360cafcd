"""Per-modality temporal Conv1d projection to the common dimension C, and sinusoidal positions.

Paper Sec. 3.1: "we apply individual 1D temporal convolutional layers for each modality ... each modality
retains its original temporal dimension ... the feature dimensions across all modalities are standardized
to be equal".  So, unlike the public DMD code (padding 0, the sequence shrinks by k-1), the convolution
uses "same" padding ((k-1)//2 frames on the left, k//2 on the right, so even kernels work too) and keeps
the length T_m.

Mask correctness: padded frames are set to zero *before* the convolution.  A real frame near the end of
a short sample then sees zeros where the batch holds padding - exactly the zeros the convolution's own
padding gives the sample when it is alone - so a padded batch equals the sample alone.  The output at
padded frames is zeroed as well, so nothing downstream can pick up junk from them by accident.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .masks import zero_padded


class TemporalProjection(nn.Module):
    """(B, T, D_in) -> (B, T, C): Conv1d over time with kernel k, no bias (as DMD), mask-correct."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(in_dim, out_dim, kernel_size=kernel, padding=0, bias=False)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = zero_padded(x, mask).transpose(1, 2)                       # (B, D_in, T)
        x = F.pad(x, ((self.kernel - 1) // 2, self.kernel // 2))       # "same" length, zeros
        y = self.conv(x).transpose(1, 2)                               # (B, T, C)
        return zero_padded(y, mask)


def sinusoidal_positions(pos: Tensor, dim: int) -> Tensor:
    """Fixed sinusoidal embedding (Vaswani et al.; the sin half then the cos half, as MulT) for integer
    positions of any value: (B, T) int64 -> (B, T, dim) float32.  Nothing is precomputed, so no maximum
    sequence length exists."""
    half = dim // 2
    scale = math.log(10000.0) / max(half - 1, 1)
    freqs = torch.exp(torch.arange(half, device=pos.device, dtype=torch.float32) * -scale)
    angles = pos.to(torch.float32).unsqueeze(-1) * freqs                 # (B, T, half)
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb
