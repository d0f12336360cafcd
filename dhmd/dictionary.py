"""Cross-modal dictionary matching (DM; paper Sec. 3.3, Eq. 11-13), used as HoDM and as HeDM.

One learnable dictionary D (K x d) is shared by the three modalities of a feature space.  For a sequence
Z_m (B, T_m, d): A_m = Z_m D^T (B, T_m, K); a max over the *real* frames gives one score per element
(padded frames are set to -inf first, so padding never wins the max); a softmax over K gives alpha_m
(Eq. 11, each row sums to 1); the reconstruction is z_m = sum_k alpha_m^k D_k (Eq. 12).  The contrastive
triplet loss of Eq. 13 on z_m lives in losses.cross_modal_triplet_loss and is applied by the model.

Temperature (settings dict_temperature, dict_learn_temperature, dict_scale_sqrt_d): the scores are
divided by a temperature before the max and the softmax.  The default, 1 and fixed, is Eq. 11 as
written.  dict_learn_temperature makes log(temperature) a parameter (started at log(dict_temperature)).
dict_scale_sqrt_d also divides by sqrt(d) as attention does: models before these settings did, and with
D ~ N(0, 1) that made the attention over 512 atoms almost flat at initialisation (entropy 6.22 of 6.24),
so every fine feature started as about the mean atom.  D is initialised N(0, 1).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .masks import masked_max


class DictionaryMatching(nn.Module):
    """Shared dictionary of one space: (B, T, d) sequences -> attention (B, K) and reconstruction (B, d)."""

    def __init__(self, dim: int, size: int, temperature: float = 1.0, learn_temperature: bool = False,
                 scale_sqrt_d: bool = False) -> None:
        super().__init__()
        self.atoms = nn.Parameter(torch.randn(size, dim))
        self.scale = 1.0 / math.sqrt(dim) if scale_sqrt_d else 1.0
        log_t = torch.tensor(math.log(temperature))
        if learn_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t, persistent=False)

    @property
    def temperature(self) -> float:
        return float(self.log_temperature.detach().exp())

    def forward(self, z: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        scale = self.scale * torch.exp(-self.log_temperature)
        scores = (z @ self.atoms.T) * scale.to(z.dtype)            # A_m (B, T, K)
        alpha = torch.softmax(masked_max(scores, mask), dim=-1)     # Eq. 11
        return alpha, alpha @ self.atoms                            # Eq. 12
