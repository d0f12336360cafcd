"""Multimodal feature decoupling (paper Sec. 3.1, Eq. 1-6).

A shared encoder E_com and one private encoder E_m^prt per modality split each projected sequence
X~_m (B, T_m, C) into a homogeneous part X_m^com and a heterogeneous part X_m^prt (Eq. 1).  A private
decoder D_m rebuilds X~_m from [X_m^com, X_m^prt]; re-encoding that rebuild with E_m^prt must give back
X_m^prt (Eq. 2, 3).  Table 1 gives kernel size 1 for all encoders and decoders, i.e. a per-frame linear
map; it is written as nn.Linear on (B, T, C), which is the same function as Conv1d(k=1) without the
transposes.  Padded frames flow through these per-frame maps harmlessly: every loss counts real frames only.

The margin loss (Eq. 4) needs sample-level vectors: X_m^com is mean-pooled over real frames (the DMD code
flattened the whole (T, C) map instead, which fixed the sequence length).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .losses import masked_mse, orthogonality_loss

MODALITIES = ("text", "audio", "video")


@dataclass
class Decoupled:
    """Per-modality homogeneous / heterogeneous sequences and the losses that need no labels."""

    com: list[Tensor]        # X_m^com, (B, T_m, C) each, order text, audio, video
    prt: list[Tensor]        # X_m^prt, (B, T_m, C) each
    rec: Tensor              # Eq. 2, summed over modalities
    cyc: Tensor              # Eq. 3, summed over modalities
    ort: Tensor              # Eq. 5, summed over modalities


class FeatureDecoupler(nn.Module):
    """E_com (shared), E_m^prt and D_m (one per modality), all kernel-1 (per-frame linear)."""

    def __init__(self, dim: int, n_modalities: int = 3) -> None:
        super().__init__()
        self.shared_encoder = nn.Linear(dim, dim, bias=False)
        self.private_encoders = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(n_modalities))
        self.decoders = nn.ModuleList(nn.Linear(2 * dim, dim, bias=False) for _ in range(n_modalities))

    def forward(self, feats: list[Tensor], masks: list[Tensor]) -> Decoupled:
        com, prt = [], []
        rec = cyc = ort = feats[0].new_zeros((), dtype=torch.float32)
        for m, (x, mask) in enumerate(zip(feats, masks)):
            x_com = self.shared_encoder(x)
            x_prt = self.private_encoders[m](x)
            rebuilt = self.decoders[m](torch.cat([x_com, x_prt], dim=-1))
            rec = rec + masked_mse(rebuilt, x, mask)
            cyc = cyc + masked_mse(self.private_encoders[m](rebuilt), x_prt, mask)
            ort = ort + orthogonality_loss(x_com, x_prt, mask)
            com.append(x_com)
            prt.append(x_prt)
        return Decoupled(com=com, prt=prt, rec=rec, cyc=cyc, ort=ort)
