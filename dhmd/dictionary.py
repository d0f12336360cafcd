"""Cross-modal dictionary matching (DM; paper Sec. 3.3, Eq. 11-13), used as HoDM and as HeDM.

One learnable dictionary D (K x d) is shared by the three modalities of a feature space.  For a sequence
Z_m (B, T_m, d): A_m = Z_m D^T (B, T_m, K); a max over the *real* frames gives one score per element
(padded frames are set to -inf first, so padding never wins the max); a softmax over K gives alpha_m
(Eq. 11, each row sums to 1); the reconstruction is z_m = sum_k alpha_m^k D_k (Eq. 12).  The contrastive
triplet loss of Eq. 13 on z_m lives in losses.cross_modal_triplet_loss and is applied by the model.

Choice: the scores are divided by sqrt(d) (as in attention) before the max, so the softmax over 512
elements is neither one-hot nor flat at initialisation whatever C is; it is a fixed temperature, the
learnable dictionary can still sharpen it.  D is initialised N(0, 1).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .masks import masked_max


class DictionaryMatching(nn.Module):
    """Shared dictionary of one space: (B, T, d) sequences -> attention (B, K) and reconstruction (B, d)."""

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        self.atoms = nn.Parameter(torch.randn(size, dim))
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, z: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        scores = (z @ self.atoms.T) * self.scale                  # A_m (B, T, K)
        alpha = torch.softmax(masked_max(scores, mask), dim=-1)     # Eq. 11
        return alpha, alpha @ self.atoms                            # Eq. 12
