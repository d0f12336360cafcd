"""Each DHMD component on its own: shapes, mask correctness, the equations of the paper."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from dhmd.crossmodal import AttentionEncoder, CrossmodalAttention, attend
from dhmd.decoupling import FeatureDecoupler
from dhmd.dictionary import DictionaryMatching
from dhmd.fusion import FusionHead
from dhmd.graph_distill import GraphDistillationUnit
from dhmd.losses import cross_modal_triplet_loss, orthogonality_loss, triplet_classes
from dhmd.masks import masked_max, masked_mean, positions, prepare_mask
from dhmd.projection import TemporalProjection, sinusoidal_positions


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def lengths_to_mask(lengths: list[int], total: int) -> torch.Tensor:
    return torch.arange(total).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


# ----------------------------------------------------------------------------------------- masks
def test_mask_helpers():
    mask = lengths_to_mask([3, 1], 4)
    x = torch.arange(16.0).view(2, 4, 2)
    assert torch.allclose(masked_mean(x, mask)[0], x[0, :3].mean(0))
    assert torch.equal(masked_max(x, mask)[1], x[1, 0])
    assert positions(mask).tolist() == [[0, 1, 2, 2], [0, 0, 0, 0]]
    assert positions(torch.tensor([[False, True, True]])).tolist() == [[0, 0, 1]]   # left padding
    given = torch.tensor([[False, False], [True, False]])
    fixed, observed = prepare_mask(given, 2, 2, torch.device("cpu"))
    assert fixed.tolist() == [[True, False], [True, False]]                  # an empty row keeps frame 0
    assert torch.equal(observed, given)                                      # ... but it holds no data
    full, full_observed = prepare_mask(None, 2, 3, torch.device("cpu"))
    assert full.all() and full_observed.all()
    with pytest.raises(ValueError, match="shape"):
        prepare_mask(mask, 2, 5, torch.device("cpu"))


# ------------------------------------------------------------------------------------ projection
@pytest.mark.parametrize("kernel", [1, 3, 4, 5])
def test_projection_keeps_length_and_ignores_padding(kernel):
    torch.manual_seed(0)
    proj = TemporalProjection(6, 8, kernel)
    sample = torch.randn(1, 5, 6)
    alone = proj(sample, torch.ones(1, 5, dtype=torch.bool))
    assert alone.shape == (1, 5, 8)                                            # "same" length
    junk = torch.randn(1, 4, 6) * 1e3
    batch = torch.cat([sample, junk], dim=1)
    padded = proj(batch, lengths_to_mask([5], 9))
    assert torch.allclose(padded[:, :5], alone, atol=1e-5)                     # tail frames see zeros
    assert torch.all(padded[:, 5:] == 0)
    # the conv does look at neighbours: changing frame 2 changes frame 1 when kernel > 1
    changed = sample.clone()
    changed[0, 2] += 1
    moved = (proj(changed, torch.ones(1, 5, dtype=torch.bool)) - alone).abs().sum(-1)[0]
    assert bool(moved[1] > 0) == (kernel > 1) and moved[2] > 0


def test_sinusoidal_positions_any_length():
    pos = torch.arange(5000).unsqueeze(0)
    emb = sinusoidal_positions(pos, 50)
    assert emb.shape == (1, 5000, 50) and torch.isfinite(emb).all()
    assert torch.allclose(emb[0, 0, :25], torch.zeros(25)) and torch.allclose(emb[0, 0, 25:], torch.ones(25))
    assert not torch.allclose(emb[0, 4000], emb[0, 4001])
    assert sinusoidal_positions(pos[:, :3], 7).shape == (1, 3, 7)               # odd dims


# ------------------------------------------------------------------------------------- attention
def test_attend_masks_keys_and_head_padding_is_exact():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 2, 4, 5), torch.randn(2, 2, 6, 5), torch.randn(2, 2, 6, 5)
    mask = lengths_to_mask([6, 3], 6)
    out = attend(q, k, v, mask, 0.0)
    short = attend(q[1:], k[1:, :, :3], v[1:, :, :3], None, 0.0)
    assert torch.allclose(out[1:], short, atol=1e-6)                           # padded keys ignored
    manual = torch.softmax(q @ k.transpose(-1, -2) / 5 ** 0.5, -1) @ v
    assert torch.allclose(out[0], manual[0], atol=1e-5)
    assert torch.allclose(attend(q, k, v, mask, 0.0, pad_head_to=8), out, atol=1e-6)   # the CUDA trick


def test_crossmodal_units_shapes_and_padding():
    torch.manual_seed(0)
    unit = CrossmodalAttention(8, 2, 2, 0.0, 0.0, 0.0, 0.0).eval()
    lens = (4, 7, 5)
    feats = [torch.randn(1, t, 8) for t in lens]
    masks = [torch.ones(1, t, dtype=torch.bool) for t in lens]
    alone = unit(feats, masks, [None] * 3)
    assert [o.shape for o in alone] == [(1, t, 16) for t in lens]              # 2C, length kept
    padded = [torch.cat([f, torch.randn(1, 3, 8) * 50], 1) for f in feats]
    pmasks = [lengths_to_mask([t], t + 3) for t in lens]
    batch = unit(padded, pmasks, pmasks)
    for a, b, t in zip(alone, batch, lens):
        assert torch.allclose(a, b[:, :t], atol=1e-5)
    assert len(unit.cross) == 6 and len(unit.memory) == 3
    enc = AttentionEncoder(8, 2, 1, 0.0, 0.0, 0.0, 0.0)                      # self-attention by default
    pos = sinusoidal_positions(positions(masks[0]), 8)
    assert enc(feats[0], pos).shape == (1, 4, 8)
    assert enc.layers[0].norm_kv is None and all(lay.norm_kv is None for m in unit.memory for lay in m.layers)
    assert all(lay.norm_kv is not None for c in unit.cross.values() for lay in c.layers)
    with pytest.raises(ValueError, match="self-attention"):
        enc(feats[0], pos, feats[0], pos)                                       # no source for a self layer
    with pytest.raises(ValueError, match="source"):
        unit.cross["0_to_1"](feats[0], pos, None)


# ------------------------------------------------------------------------------------ decoupling
def test_decoupler_losses_are_the_equations():
    torch.manual_seed(0)
    dec = FeatureDecoupler(6)
    feats = [torch.randn(2, t, 6) for t in (3, 5, 4)]
    masks = [torch.ones(2, t, dtype=torch.bool) for t in (3, 5, 4)]
    out = dec(feats, masks)
    rec = cyc = 0.0
    for m, x in enumerate(feats):
        com, prt = dec.shared_encoder(x), dec.private_encoders[m](x)
        assert torch.allclose(out.com[m], com) and torch.allclose(out.prt[m], prt)
        rebuilt = dec.decoders[m](torch.cat([com, prt], -1))
        rec += F.mse_loss(rebuilt, x)
        cyc += F.mse_loss(dec.private_encoders[m](rebuilt), prt)
    assert torch.allclose(out.rec, rec) and torch.allclose(out.cyc, cyc)
    # padded frames do not count
    padded = [torch.cat([x, torch.randn(2, 2, 6) * 100], 1) for x in feats]
    pmasks = [torch.cat([m, torch.zeros(2, 2, dtype=torch.bool)], 1) for m in masks]
    again = dec(padded, pmasks)
    for name in ("rec", "cyc", "ort"):
        assert torch.allclose(getattr(again, name), getattr(out, name), atol=1e-5), name


def test_orthogonality_is_zero_for_orthogonal_and_positive_otherwise():
    a = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    assert orthogonality_loss(a, a.flip(-1), mask) == 0
    assert torch.isclose(orthogonality_loss(a, -a, mask), torch.tensor(1.0))    # anti-parallel is penalised


# --------------------------------------------------------------------------------- triplet losses
def brute_force_triplets(features, classes, alpha):
    flat = [(m, b) for m in range(len(features)) for b in range(len(classes))]
    vec = {(m, b): F.normalize(features[m][b], dim=0) for m, b in flat}
    terms = []
    for i, j, k in itertools.product(flat, repeat=3):
        same_class = classes[i[1]] == classes[j[1]] and classes[i[1]] != classes[k[1]]
        if i[0] != j[0] and i[0] == k[0] and same_class:
            terms.append(torch.relu(alpha - vec[i] @ vec[j] + vec[i] @ vec[k]))
    return torch.stack(terms).mean()


def test_triplet_loss_matches_brute_force_and_handles_one_class():
    torch.manual_seed(0)
    feats = [torch.randn(5, 4) for _ in range(3)]
    classes = torch.tensor([0, 1, 1, 2, 0])
    got = cross_modal_triplet_loss(feats, classes, 0.3)
    assert torch.allclose(got, brute_force_triplets(feats, classes, 0.3), atol=1e-6)
    feats = [f.requires_grad_() for f in feats]
    single = cross_modal_triplet_loss(feats, torch.zeros(5, dtype=torch.long), 0.3)
    assert single == 0
    single.backward()                                                          # still has a graph


def test_triplet_classes():
    y = torch.tensor([-2.6, -0.2, 0.0, 0.4, 2.9, 3.7])
    assert triplet_classes(y, "regression", "sign").tolist() == [0, 0, 1, 1, 1, 1]
    assert triplet_classes(y, "regression", "round").tolist() == [-3, 0, 0, 0, 3, 3]
    assert triplet_classes(torch.tensor([2, 0]), "classification", "sign").tolist() == [2, 0]


# ------------------------------------------------------------------------------------- GD-Unit
def test_gd_unit_graph_and_distillation_loss():
    torch.manual_seed(0)
    unit = GraphDistillationUnit(feat_dim=6, logit_dim=1, hidden=4, classification=False)
    feats = [torch.randn(3, 6) for _ in range(3)]
    logits = [torch.randn(3, 1, requires_grad=True) for _ in range(3)]
    weights, loss = unit(feats, logits)
    assert weights.shape == (3, 3, 3)
    assert torch.all(weights >= 0) and torch.all(torch.diagonal(weights, dim1=1, dim2=2) == 0)
    assert torch.allclose(weights.sum(dim=(1, 2)), torch.ones(3))              # one softmax per sample
    stacked = torch.stack(logits, 1)[..., 0]
    errors = (stacked.unsqueeze(2) - stacked.unsqueeze(1)).abs()               # E[b, teacher, student]
    assert torch.allclose(loss, (weights * errors).sum((1, 2)).mean())         # Eq. 9
    # the teacher is detached: with W independent of the logits, d loss / d f_j only has the terms of
    # the edges i -> j that j receives as a student
    with torch.no_grad():
        unit.node.weight[:, :1] = 0.0                                           # W ignores the logits
    weights, loss = unit(feats, logits)
    grads = torch.autograd.grad(loss, logits)
    w = weights.detach()
    for j in range(3):
        expected = sum(w[:, i, j] * torch.sign(stacked[:, j] - stacked[:, i])
                       for i in range(3) if i != j) / w.shape[0]
        assert torch.allclose(grads[j][:, 0], expected.detach(), atol=1e-6)
    # the edge network learns from the loss
    _, loss = unit(feats, logits)
    loss.backward()
    assert unit.edge.weight.grad.abs().sum() > 0 and unit.node.weight.grad.abs().sum() > 0


def test_gd_unit_edges_into_a_student_depend_on_that_student():
    """Eq. 8 feeds g with both ends of the edge.  Changing only modality j's input (its features or its
    logits) must change the edges into j and their share of the sample's distillation budget; a softmax
    over each student's column would have cancelled j's part of the score and left column j unchanged."""
    torch.manual_seed(0)
    unit = GraphDistillationUnit(feat_dim=6, logit_dim=2, hidden=4, classification=False)
    feats = [torch.randn(5, 6) for _ in range(3)]
    logits = [torch.randn(5, 2) for _ in range(3)]
    with torch.no_grad():
        base, _ = unit(feats, logits)
    off = ~torch.eye(3, dtype=torch.bool)
    assert torch.allclose(base[:, off].sum(-1), torch.ones(5))                 # W sums to 1 per sample
    assert torch.all(base[:, ~off] == 0)
    for j in range(3):
        for part in ("feats", "logits"):
            f2, l2 = list(feats), list(logits)
            if part == "feats":
                f2[j] = feats[j] + 2.0 * torch.randn(5, 6)
            else:
                l2[j] = logits[j] + 2.0 * torch.randn(5, 2)
            with torch.no_grad():
                new, _ = unit(f2, l2)
            assert torch.allclose(new[:, off].sum(-1), torch.ones(5))
            col_base, col_new = base[:, :, j], new[:, :, j]
            assert torch.all((col_new - col_base).abs().amax(-1) > 1e-4), (j, part)   # overall
            share_base, share_new = col_base.sum(-1), col_new.sum(-1)                # j's budget
            assert torch.all((share_new - share_base).abs() > 1e-5), (j, part)
            # relative to the edges of the same teacher into the other student k
            i, k = [m for m in range(3) if m != j]
            ratio_base, ratio_new = base[:, i, j] / base[:, i, k], new[:, i, j] / new[:, i, k]
            assert torch.all((ratio_new / ratio_base - 1).abs() > 1e-4), (j, part)
            # one FC layer g scores a(i) + b(j): two edges into j keep their ratio (teachers unchanged)
            assert torch.allclose(new[:, i, j] / new[:, k, j], base[:, i, j] / base[:, k, j], rtol=1e-4)
    # with the teacher half of g switched off, W is decided by the students alone: a column softmax
    # would give 0.5 everywhere, the softmax over the six edges gives columns that differ
    with torch.no_grad():
        unit.edge.weight[:, :4] = 0.0
        student_only, _ = unit(feats, logits)
    assert torch.allclose(student_only[:, 1, 0], student_only[:, 2, 0])         # same student, same weight
    assert torch.all((student_only[:, 0, 1] - student_only[:, 0, 2]).abs() > 1e-4)


def test_gd_unit_classification_and_prior():
    torch.manual_seed(0)
    unit = GraphDistillationUnit(4, 3, 4, classification=True, use_prior=True)
    feats = [torch.randn(2, 4) for _ in range(3)]
    same = torch.randn(2, 3)
    weights, loss_same = unit(feats, [same, same + 5.0, same - 1.0])            # shifted logits agree
    plain = GraphDistillationUnit(4, 3, 4, classification=True)
    plain.load_state_dict(unit.state_dict())
    _, plain_loss = plain(feats, [same, same + 5.0, same - 1.0])
    assert plain_loss.abs() < 1e-5                                              # log-softmax: shift-free
    prior = unit.prior
    assert prior is not None and torch.allclose(prior.sum(), torch.tensor(1.0))  # a distribution over edges
    assert torch.all(torch.diagonal(prior) == 0) and torch.all(prior[~torch.eye(3, dtype=torch.bool)] > 0)
    assert prior[0, 1] == prior[0, 2] == prior.max()                            # L->A and L->V favoured
    expected_prior_term = (weights.mean(0) - prior).abs().sum()
    assert torch.allclose(loss_same, expected_prior_term, atol=1e-5)            # only the prior term is left
    assert loss_same > 0.1
    # the prior term pulls the batch-mean graph towards the prior (which a W of the form
    # exp(a_i + b_j) / Z can reach: teacher strengths 3:1:1, equal students)
    opt = torch.optim.Adam(unit.parameters(), lr=0.05)
    for _ in range(40):
        _, loss = unit(feats, [same, same + 5.0, same - 1.0])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * loss_same.item()


# ---------------------------------------------------------------------------------- dictionary
def test_dictionary_matching_equations_and_masked_max():
    torch.manual_seed(0)
    dm = DictionaryMatching(dim=4, size=6)
    z = torch.randn(2, 5, 4)
    mask = lengths_to_mask([5, 2], 5)
    alpha, recon = dm(z, mask)
    scores = z @ dm.atoms.T                                                     # Eq. 11 as written
    expected0 = torch.softmax(scores[0].max(0).values, -1)
    expected1 = torch.softmax(scores[1, :2].max(0).values, -1)                 # padded frames ignored
    assert torch.allclose(alpha[0], expected0, atol=1e-6) and torch.allclose(alpha[1], expected1, atol=1e-6)
    assert torch.allclose(alpha.sum(-1), torch.ones(2))
    assert torch.allclose(recon, alpha @ dm.atoms)                              # Eq. 12
    z2 = z.clone()
    z2[1, 2:] = 1e4
    assert torch.allclose(dm(z2, mask)[0], alpha)


def test_dictionary_temperature_settings():
    """temperature t and dict_scale_sqrt_d divide the scores; a learnable temperature gets a gradient."""
    torch.manual_seed(0)
    z = torch.randn(2, 5, 4)
    mask = lengths_to_mask([5, 2], 5)
    plain = DictionaryMatching(dim=4, size=6)
    for kwargs, divisor in (({"scale_sqrt_d": True}, 2.0), ({"temperature": 3.0}, 3.0),
                            ({"temperature": 0.5, "scale_sqrt_d": True}, 1.0)):
        dm = DictionaryMatching(dim=4, size=6, **kwargs)
        dm.atoms.data.copy_(plain.atoms.data)
        expected = torch.softmax((z[0] @ plain.atoms.T / divisor).max(0).values, -1)
        assert torch.allclose(dm(z, mask)[0][0], expected, atol=1e-6), kwargs
    fixed = DictionaryMatching(dim=4, size=6, temperature=2.0)
    assert "log_temperature" not in dict(fixed.named_parameters()) and abs(fixed.temperature - 2.0) < 1e-6
    learn = DictionaryMatching(dim=4, size=6, temperature=2.0, learn_temperature=True)
    alpha, recon = learn(z, mask)
    (alpha[:, 0].sum() + recon.sum()).backward()
    assert learn.log_temperature.grad is not None and learn.log_temperature.grad.abs() > 0


# -------------------------------------------------------------------------------------- fusion
def test_fusion_head_gates_each_block():
    torch.manual_seed(0)
    head = FusionHead([3, 5], out_dim=2, dropout=0.0)
    blocks = [torch.randn(4, 3), torch.randn(4, 5)]
    out = head(blocks)
    assert out.shape == (4, 2)
    for gate in head.gates:                                                     # gate 0 -> block off
        torch.nn.init.constant_(gate.weight, 0.0)
        torch.nn.init.constant_(gate.bias, -1e4)
    assert torch.allclose(head(blocks), head.out(head.mlp(torch.zeros(4, 8))), atol=1e-5)
