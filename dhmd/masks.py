"""Mask helpers shared by every component: a padded frame must never change a real frame's result.

Masks are boolean (B, T) with True = real frame.  Every reduction over time in the model goes through
these functions so that a sample gives the same output alone and inside a padded batch.
"""
from __future__ import annotations

import torch
from torch import Tensor


def prepare_mask(mask: Tensor | None, batch: int, length: int,
                 device: torch.device) -> tuple[Tensor, Tensor]:
    """Return (mask, observed), both (B, T) bool; None means every frame is real.

    ``observed`` is the caller's mask as given: the frames that hold data.  ``mask`` is what every
    masked reduction uses.  A sample with no real frame at all (e.g. no face found in the whole clip)
    would make those reductions undefined (0/0 means, max over nothing, attention over no keys), so in
    ``mask`` such a row gets its first frame marked real.  The caller must zero its inputs with
    ``observed``, *before* that promotion counts: frame 0 is then an all-zero "nothing observed" frame
    whatever the padding held, and the sample gets the finite prediction of a one-frame all-zero input.
    """
    if mask is None:
        full = torch.ones(batch, length, dtype=torch.bool, device=device)
        return full, full
    if mask.shape != (batch, length):
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {(batch, length)}")
    observed = mask.to(device=device, dtype=torch.bool)
    empty = ~observed.any(dim=1)
    if length == 0 or not bool(empty.any()):
        return observed, observed
    promoted = observed.clone()
    promoted[empty, 0] = True
    return promoted, observed


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
