"""The loss functions of DHMD (Eq. 2-5, 13 and the task loss), mask-aware and computed in float32.

Choices where the paper leaves room (each is the plainest reading of the equation):
- L_rec / L_cyc (Eq. 2, 3): the squared Frobenius norm is taken as a mean over real frames and channels
  (MSE, as the DMD code does), so the loss does not grow with sequence length or C; summed over modalities.
- L_ort (Eq. 5): |cos| between X_m^com and X_m^prt at each real frame, averaged over frames and summed
  over modalities.  The absolute value makes 0 (orthogonal) the minimum; a raw cosine would be
  minimised by making the two features anti-parallel, which is not orthogonality.
- L_mar (Eq. 4) and L_ctr (Eq. 13) share one function: all triplets (anchor i, positive j, negative k)
  in the batch with m[i] != m[j], m[i] = m[k], c[i] = c[j], c[i] != c[k], hinge on cosine similarity
  with margin alpha, averaged over the set.  Vectorised per anchor modality: (B, 2B, B) at most.
- Triplet classes for regression labels: "sign" -> y >= 0 vs y < 0 (the Has0 convention of the metrics),
  "round" -> round(clip(y, -3, 3)), the 7 emotion classes Eq. 4/13 speak of, or "equal" -> the same
  class only when the scores are equal (the DMD code's rule).  Classification labels are used as they are.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over real frames and channels; pred/target (B, T, D), mask (B, T)."""
    diff = (pred.float() - target.float()).pow(2) * mask.unsqueeze(-1)
    return diff.sum() / (mask.sum().clamp_min(1) * pred.shape[-1])


def orthogonality_loss(com: Tensor, prt: Tensor, mask: Tensor) -> Tensor:
    """Mean |cos(com_t, prt_t)| over real frames t; (B, T, D) each."""
    cos = F.cosine_similarity(com.float(), prt.float(), dim=-1, eps=1e-6).abs()
    return (cos * mask).sum() / mask.sum().clamp_min(1)


def triplet_classes(labels: Tensor, task: str, scheme: str) -> Tensor:
    """Class id per sample used to build triplets (see the module docstring)."""
    if task != "regression":
        return labels.long()
    if scheme == "sign":
        return (labels >= 0).long()
    if scheme == "round":
        return torch.round(labels.float().clamp(-3.0, 3.0)).long()
    if scheme == "equal":
        return torch.unique(labels.float(), return_inverse=True)[1]
    raise ValueError(f"unknown triplet_classes {scheme!r}")


def cross_modal_triplet_loss(features: list[Tensor], classes: Tensor, alpha: float) -> Tensor:
    """Eq. 4 / Eq. 13 over per-modality sample vectors.

    features: one (B, D) tensor per modality; classes: (B,).  Positives are other modalities of the
    same class, negatives the same modality of another class.  Returns the mean hinge over all such
    triplets, or a zero that keeps the graph when the batch holds none (e.g. all one class).
    """
    z = F.normalize(torch.stack([f.float() for f in features]), dim=-1, eps=1e-6)   # (M, B, D)
    n_mod, batch, _ = z.shape
    same_class = classes.unsqueeze(1) == classes.unsqueeze(0)                        # (B, B)
    total = z.new_zeros(())
    count = z.new_zeros(())
    for m in range(n_mod):
        anchors = z[m]                                                               # (B, D)
        others = torch.cat([z[o] for o in range(n_mod) if o != m])                   # ((M-1)B, D)
        sim_pos = anchors @ others.T                                                 # (B, (M-1)B)
        sim_neg = anchors @ anchors.T                                                # (B, B)
        valid_pos = same_class.repeat(1, n_mod - 1)
        valid_neg = ~same_class
        valid = valid_pos.unsqueeze(2) & valid_neg.unsqueeze(1)                      # (B, (M-1)B, B)
        hinge = torch.relu(alpha - sim_pos.unsqueeze(2) + sim_neg.unsqueeze(1))
        total = total + (hinge * valid).sum()
        count = count + valid.sum()
    return total / count.clamp_min(1.0)       # no host sync; an empty set gives 0 with a graph


def task_loss(prediction: Tensor, labels: Tensor, task: str) -> Tensor:
    """L1 (MAE) for regression, cross-entropy for binary / classification."""
    if task == "regression":
        return F.l1_loss(prediction.float(), labels.float())
    return F.cross_entropy(prediction.float(), labels.long())
