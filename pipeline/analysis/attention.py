"""Cross-modal attention weights of a trained DHMD, computed on request (paper Fig. 12).

The model's attention runs through ``scaled_dot_product_attention``, which returns outputs and no
weights; the training path stays that way.  Here forward pre-hooks on the *last* layer of each of the
six cross-modal transformers read that layer's inputs (queries ``x``, source, key mask) and recompute
its weights from the layer's own modules: ``softmax(q k^T / sqrt(head size))`` over the source's real
frames, averaged over heads.  :func:`attention_weights` is that computation for one layer, so a test
can check it against the layer's SDPA output.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

MODALITIES = ("text", "audio", "video")


def attention_weights(layer: "nn.Module", x: "torch.Tensor", source: "torch.Tensor",
                      key_mask: "torch.Tensor | None") -> "torch.Tensor":
    """(B, heads, Tq, Tk) attention weights of a cross-modal ``dhmd.crossmodal.AttentionLayer`` for
    queries ``x`` (B, Tq, C) and ``source`` (B, Tk, C); padded keys (key_mask False) get weight 0."""
    import torch

    heads = layer.heads
    q = layer.to_q(layer.norm_q(x))
    k, _ = layer.to_kv(layer.norm_kv(source)).chunk(2, dim=-1)
    b, tq, c = q.shape
    d = c // heads
    q = q.view(b, tq, heads, d).transpose(1, 2)
    k = k.view(b, k.shape[1], heads, d).transpose(1, 2)
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(d)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :].bool(), float("-inf"))
    return torch.softmax(scores, dim=-1)


def cross_modal_attention_maps(model: Any, args: list, kwargs: dict) -> dict[str, np.ndarray]:
    """Run ``model(*args, **kwargs)`` once (no gradients) and return ``"<source>_to_<target>"`` ->
    (B, T_target, T_source) head-mean weights of the last layer of each cross-modal transformer.
    Empty when the model has no cross-modal attention (use_ca = false)."""
    import torch

    if getattr(model, "crossmodal", None) is None:
        return {}
    maps: dict[str, np.ndarray] = {}
    handles = []
    for key, encoder in model.crossmodal.cross.items():
        s, t = (int(v) for v in key.split("_to_"))
        name = f"{MODALITIES[s]}_to_{MODALITIES[t]}"

        def hook(layer: Any, inputs: tuple, name: str = name) -> None:
            x, source, key_mask = inputs
            maps[name] = attention_weights(layer, x, source, key_mask).mean(dim=1).cpu().numpy()

        handles.append(encoder.layers[-1].register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return maps
