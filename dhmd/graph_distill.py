"""Graph distillation unit (GD-Unit; paper Sec. 3.2, Eq. 7-9), used as HoGD and as HeGD.

Each modality is a node.  Its input is [f(X_m), X_m]: the logits of the modality's auxiliary head f
(theta_1, owned by the model, shared by the three modalities of a space) and its pooled features.  Eq. 8
asks for w_{i->j} = g([[f(X_i), X_i], [f(X_j), X_j]]) with g one fully-connected layer.  It is written in
two linear steps, a node embedding of size gd_hidden (Sec. 4: "the hidden dimension was set as 32") and a
linear scorer of the pair of embeddings [node_i, node_j].  Composed, the two are one affine map of the
pair, score_ij = u.[f(X_i), X_i] + v.[f(X_j), X_j] + c: exactly the function class of one FC layer on the
concatenated pair (any such layer can be written this way once gd_hidden >= 2).  The factorisation has
*more* parameters than that FC layer ((L + D + 1) * h + 2h + 1 against 2(L + D) + 1 for logit size L and
feature size D); it is kept because it is where Sec. 4's hidden dimension lives, as in the DMD code.

Normalisation ("to reduce the scale effects, we normalize W through the softmax operation"): ONE softmax
over the six off-diagonal entries of each sample's W, as the public DMD code does; the diagonal is exactly
0 (no self-edges) and the off-diagonal entries of a sample sum to 1.  Because the score is additive,
w_{i->j} = exp(a_i) exp(b_j) / Z: a per-sample teacher strength times a per-sample student receptiveness.
A softmax over each student's column instead would cancel b_j and leave W a function of the teachers
alone; with one softmax over all edges the student's logits and features decide how much of the
distillation budget flows into it.  (The ratio of two edges into the same student, w_{i->j} / w_{k->j},
is exp(a_i - a_k) and depends on the teachers only; that is what one FC layer g gives.)  DMD also scales
the scores by a temperature 1/8 before the softmax; the paper does not, so neither do we.

Other choices the paper leaves open:
- Distillation matrix E (Eq. 7): E_ij = || f_i.detach() - f_j ||_1, the teacher i's logits detached, so
  the gradient of edge i->j moves the student j only.  For classification the log-softmax of the logits
  is used (logits are shift-invariant, log-probabilities are not).
- L_dtl = ||W * E||_1 summed over edges, averaged over the batch (Eq. 9).
- Precision: the unit is tiny (three nodes per sample) and its W is an output the user reads, so it runs
  in float32 with autocast disabled.
- gd_prior (option, off by default): DMD's idea that language teaches audio and video.  LANGUAGE_PRIOR is
  a distribution over the six edges (it sums to 1, like each sample's W) that gives L->A and L->V 0.3
  each and every other edge 0.1; the batch-mean W is pulled towards it with an L1 term added to L_dtl.
Edges are returned as W[b, i, j] = w_{i->j} (row i = teacher, column j = student), order text, audio,
video; W[b] sums to 1 over its off-diagonal entries (neither rows nor columns are normalised on their own).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# a distribution over the six edges (row = teacher, column = student, order text, audio, video):
# language is the main teacher (DMD), L->A and L->V get 0.3 each, the four other edges 0.1 each
LANGUAGE_PRIOR = [[0.0, 0.3, 0.3],
                  [0.1, 0.0, 0.1],
                  [0.1, 0.1, 0.0]]


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

    def edge_weights(self, feats: list[Tensor], logits: list[Tensor]) -> Tensor:
        """W (B, n, n): one softmax over the n(n-1) off-diagonal edge scores of each sample."""
        with torch.autocast(device_type=feats[0].device.type, enabled=False):
            nodes = self.node(torch.stack([torch.cat([f.float(), x.float()], dim=-1)
                                           for f, x in zip(logits, feats)], dim=1))      # (B, n, h)
            batch, n, _ = nodes.shape
            pairs = torch.cat([nodes.unsqueeze(2).expand(-1, n, n, -1),           # teacher i (rows)
                               nodes.unsqueeze(1).expand(-1, n, n, -1)], dim=-1)  # student j (columns)
            scores = self.edge(pairs).squeeze(-1).masked_fill(self.self_edge, float("-inf"))
            return torch.softmax(scores.view(batch, n * n), dim=1).view(batch, n, n)   # exp(-inf) = 0

    def forward(self, feats: list[Tensor], logits: list[Tensor]) -> tuple[Tensor, Tensor]:
        """feats: (B, D) per modality; logits: (B, out) per modality -> W (B, n, n), L_dtl scalar."""
        weights = self.edge_weights(feats, logits)
        out = torch.stack(logits, dim=1).float()                               # (B, n, out)
        if self.classification:
            out = F.log_softmax(out, dim=-1)
        errors = (out.detach().unsqueeze(2) - out.unsqueeze(1)).abs().sum(-1)  # E[b, i, j]
        loss = (weights * errors).sum(dim=(1, 2)).mean()
        if self.prior is not None:
            loss = loss + (weights.mean(dim=0) - self.prior).abs().sum()
        return weights, loss
