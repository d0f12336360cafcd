"""Adaptive fusion of coarse- and fine-grained features and the final prediction (paper Sec. 3.3 end).

The paper concatenates, per modality and per space, the coarse-grained (GD-enhanced, pooled) feature
with the fine-grained (dictionary reconstruction) feature, and fuses the concatenations "adaptively".
Here each such block (up to 6: 3 modalities x {homogeneous, heterogeneous}) is gated element-wise by a
sigmoid of a linear map of itself - the block decides which of its channels matter, which is the DMD
code's sigmoid weighting - the gated blocks are concatenated, passed through a residual two-layer MLP
(the DMD output stage) and a linear layer gives the prediction.

Precision: the whole head runs in float32 with autocast disabled, its inputs cast to float32.  Under
bf16 autocast (CUDA training, or CPU autocast) its linear layers would otherwise return bf16, i.e. a
prediction rounded to 8 significant bits (steps of 1/64 near a score of 2) before the loss and the
metrics see it; casting that result to float afterwards cannot bring the lost bits back.  The head is a
few (B, width) matrix products, so fp32 costs nothing measurable.  Float32Linear does the same for the
auxiliary unimodal heads f, whose logits are predictions too (out.unimodal, the aux task losses, the
GD-Units' distillation matrix).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class FusionHead(nn.Module):
    """Gated concatenation of feature blocks -> residual MLP -> prediction (B, out_dim)."""

    def __init__(self, block_dims: list[int], out_dim: int, dropout: float) -> None:
        super().__init__()
        width = sum(block_dims)
        self.gates = nn.ModuleList(nn.Linear(d, d) for d in block_dims)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(width, width))
        self.out = nn.Linear(width, out_dim)

    def forward(self, blocks: list[Tensor]) -> Tensor:
        with torch.autocast(device_type=blocks[0].device.type, enabled=False):
            blocks = [b.float() for b in blocks]
            x = torch.cat([b * torch.sigmoid(gate(b)) for b, gate in zip(blocks, self.gates)], dim=-1)
            return self.out(x + self.mlp(x))


class Float32Linear(nn.Linear):
    """nn.Linear that always computes in float32 (autocast disabled, input cast to float32)."""

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return super().forward(x.float())
