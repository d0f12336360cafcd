"""Mask helpers shared by every component: a padded frame must never change a real frame's result.

Masks are boolean (B, T) with True = real frame.  Every reduction over time in the model goes through
these functions so that a sample gives the same output alone and inside a padded batch.
"""
from __future__ import annotations

import torch
from torch import Tensor


def prepare_mask(mask: Tensor | None, batch: int, length: int, device: torch.device) -> Tensor:
    """Return a (B, T) bool mask; None means every frame is real.

    A sample with no real frame at all (e.g. no face found in the whole clip) would make every masked
    reduction undefined (0/0 means, max over nothing, attention over no keys).  Such a row gets its first
    frame marked real; the caller zeroes padded inputs, so that frame is an all-zero "nothing observed"
    frame, and the sample still gets a finite prediction.
    """
    if mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    if mask.shape != (batch, length):
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {(batch, length)}")
    mask = mask.to(device=device, dtype=torch.bool)
    empty = ~mask.any(dim=1)
    if length > 0 and bool(empty.any()):
        mask = mask.clone()
        mask[empty, 0] = True
    return mask


def zero_padded(x: Tensor, mask: Tensor) -> Tensor:
    """Set the features of padded frames to exactly zero; x is (B, T, D)."""
    return x.masked_fill(~mask.unsqueeze(-1), 0.0)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over real frames: (B, T, D) -> (B, D)."""
    weights = mask.unsqueeze(-1).to(x.dtype)
    total = (x * weights).sum(dim=1)
    count = weights.sum(dim=1).clamp_min(1.0)
    return total / count


def masked_max(x: Tensor, mask: Tensor) -> Tensor:
    """Max over real frames: (B, T, D) -> (B, D)."""
    return x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)


def positions(mask: Tensor) -> Tensor:
    """Index of each frame among the real frames of its row (0, 1, ...); padded frames get the index
    of the real frame before them.  Works for right, left or no padding."""
    return (mask.long().cumsum(dim=1) - 1).clamp_min(0)


def key_mask_or_none(mask: Tensor) -> Tensor | None:
    """The mask, or None when no frame in the batch is padded (lets SDPA pick its fastest kernel)."""
    return None if bool(mask.all()) else mask
