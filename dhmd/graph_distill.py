"""Graph distillation unit (GD-Unit; paper Sec. 3.2, Eq. 7-9), used as HoGD and as HeGD.

Each modality is a node.  Its input is [f(X_m), X_m]: the logits of the modality's auxiliary head f
(theta_1, owned by the model, shared by the three modalities of a space) and its pooled features.  Eq. 8
asks for w_{i->j} = g([[f(X_i), X_i], [f(X_j), X_j]]) with g one fully-connected layer; it is written in
two linear steps, a node embedding of size gd_hidden (Sec. 4: 32) and a linear scorer of the pair of
embeddings [node_i, node_j], which is the same FC layer factorised to low rank (fewer parameters).

Choices the paper leaves open:
- Softmax normalisation: over each target's incoming edges (column j, sources i != j).  Every student
  then receives a unit budget of distillation and the graph cannot collapse onto one pair of modalities,
  which a softmax over all six edges allows when it minimises sum W*E.  No self-edges (diagonal is 0).
- Distillation matrix E (Eq. 7): E_ij = || f_i.detach() - f_j ||_1, the teacher i's logits detached, so
  the gradient of edge i->j moves the student j only.  For classification the log-softmax of the logits
  is used (logits are shift-invariant, log-probabilities are not).
- L_dtl = ||W * E||_1 summed over edges, averaged over the batch (Eq. 9).
- gd_prior (option, off by default): DMD's fixed prior that language teaches audio and video; the
  batch-mean edge matrix is pulled towards it with an L1 term added to L_dtl.
Edges are returned as W[b, i, j] = w_{i->j} (row = teacher, column = student), order text, audio, video.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# column-stochastic prior (row = teacher, column = student): language is the main teacher (DMD)
LANGUAGE_PRIOR = [[0.0, 0.75, 0.75],
                  [0.5, 0.0, 0.25],
                  [0.5, 0.25, 0.0]]


class GraphDistillationUnit(nn.Module):
    """Learns the distillation graph W of one feature space and returns (W, L_dtl)."""

    def __init__(self, feat_dim: int, logit_dim: int, hidden: int, classification: bool,
                 use_prior: bool = False, n_modalities: int = 3) -> None:
        super().__init__()
        self.classification = classification
        self.node = nn.Linear(logit_dim + feat_dim, hidden)
        self.edge = nn.Linear(2 * hidden, 1)
        self.register_buffer("self_edge", torch.eye(n_modalities, dtype=torch.bool), persistent=False)
        prior = torch.tensor(LANGUAGE_PRIOR) if use_prior and n_modalities == 3 else None
        self.register_buffer("prior", prior, persistent=False)

    def forward(self, feats: list[Tensor], logits: list[Tensor]) -> tuple[Tensor, Tensor]:
        """feats: (B, D) per modality; logits: (B, out) per modality -> W (B, n, n), L_dtl scalar."""
        nodes = self.node(torch.stack([torch.cat([f, x], dim=-1) for f, x in zip(logits, feats)], 1))
        n = nodes.shape[1]
        pairs = torch.cat([nodes.unsqueeze(2).expand(-1, n, n, -1),           # teacher i (rows)
                           nodes.unsqueeze(1).expand(-1, n, n, -1)], dim=-1)  # student j (columns)
        scores = self.edge(pairs).squeeze(-1).float().masked_fill(self.self_edge, float("-inf"))
        weights = torch.softmax(scores, dim=1)                                # each column sums to 1

        out = torch.stack(logits, dim=1).float()                               # (B, n, out)
        if self.classification:
            out = F.log_softmax(out, dim=-1)
        errors = (out.detach().unsqueeze(2) - out.unsqueeze(1)).abs().sum(-1)  # E[b, i, j]
        loss = (weights * errors).sum(dim=(1, 2)).mean()
        if self.prior is not None:
            loss = loss + (weights.mean(dim=0) - self.prior).abs().sum()
        return weights, loss
