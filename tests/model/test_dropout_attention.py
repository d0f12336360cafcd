"""dhmd.dropout_attention: the CPU attention-with-dropout path gives SDPA's mathematics.

With dropout off it equals F.scaled_dot_product_attention (values and gradients); with dropout on it
equals softmax(q k^T * scale + mask) * keep / keep_prob @ v for the very mask dropout_keep_mask draws
from the same seed, and that mask drops entries at the configured rate, independently of position.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dhmd import DHMD, DHMDConfig
from dhmd import dropout_attention as da
from dhmd import fused_attention, keep_apply


def _qkv(b=3, h=2, tq=7, tk=9, d=5, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, t, d, generator=g, dtype=dtype).requires_grad_() for t in (tq, tk, tk)]


def _key_mask(b=3, tk=9):
    mask = torch.ones(b, tk, dtype=torch.bool)
    mask[1, 6:] = False
    mask[2, 1:] = False          # one real key only
    return mask


@pytest.mark.parametrize("chunk", [1 << 22, 40])     # one chunk, and many chunks of a few rows
def test_no_dropout_equals_sdpa_values_and_gradients(monkeypatch, chunk):
    monkeypatch.setattr(da, "CHUNK_ELEMENTS", chunk)
    q, k, v = _qkv()
    mask = _key_mask()
    out = da.dropout_attention(q, k, v, mask, 0.0, 1 / math.sqrt(5), seed=1)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    grad = torch.randn_like(out)
    mine = torch.autograd.grad(out, (q, k, v), grad)
    theirs = torch.autograd.grad(ref, (q, k, v), grad)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("chunk", [1 << 22, 40])
def test_dropout_equals_reference_with_the_same_mask(monkeypatch, chunk):
    monkeypatch.setattr(da, "CHUNK_ELEMENTS", chunk)
    q, k, v = _qkv()
    mask = _key_mask()
    p, seed = 0.3, 1234
    out = da.dropout_attention(q, k, v, mask, p, 1 / math.sqrt(5), seed=seed)
    keep = da.dropout_keep_mask(seed, 6, 7, 9, p).view(3, 2, 7, 9).to(torch.float64)
    assert set(keep.unique().tolist()) == {0.0, 1.0}
    scores = (q @ k.transpose(-1, -2) / math.sqrt(5)).masked_fill(~mask[:, None, None, :], float("-inf"))
    ref = (scores.softmax(-1) * keep / da.keep_probability(p)) @ v
    grad = torch.randn_like(out)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad, retain_graph=True),
                    torch.autograd.grad(ref, (q, k, v), grad)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # a masked key is never attended to, dropped or not
    assert torch.equal(torch.autograd.grad(out.sum(), v)[0][2, :, 1:], torch.zeros(2, 8, 5, dtype=torch.float64))


def test_keep_mask_rate_and_independence():
    p = 0.3
    keep = da.dropout_keep_mask(7, 64, 100, 125, p)           # 800,000 entries over several chunks
    assert abs(da.keep_probability(p) - (1 - p)) < 2 ** -16
    n = keep.numel()
    sd = math.sqrt(p * (1 - p) / n)
    assert abs(float(keep.mean()) - da.keep_probability(p)) < 5 * sd
    # no position is favoured: rate per query row and per key column within 5 sd of the whole
    rows, cols = keep.mean(dim=(0, 2)), keep.mean(dim=(0, 1))
    assert float((rows - keep.mean()).abs().max()) < 5 * math.sqrt(p * (1 - p) / (64 * 125))
    assert float((cols - keep.mean()).abs().max()) < 5 * math.sqrt(p * (1 - p) / (64 * 100))
    # neighbouring entries (lanes of one random word) are uncorrelated
    flat = keep.flatten()
    corr = torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1]
    assert abs(float(corr)) < 5 / math.sqrt(n)
    # another seed, another mask; the same seed, the same mask
    assert not torch.equal(keep, da.dropout_keep_mask(8, 64, 100, 125, p))
    assert torch.equal(keep, da.dropout_keep_mask(7, 64, 100, 125, p))


def test_dropout_is_unbiased_in_expectation():
    q, k, v = _qkv(b=1, h=1, tq=4, tk=6, dtype=torch.float64)
    ref = F.scaled_dot_product_attention(q, k, v).detach()
    outs = torch.stack([da.dropout_attention(q, k, v, None, 0.5, 1 / math.sqrt(5), seed=s).detach()
                        for s in range(3000)])
    se = outs.std(0) / math.sqrt(len(outs))
    assert bool(((outs.mean(0) - ref).abs() < 5 * se + 1e-9).all())


def _model(attn_dropout: float) -> DHMD:
    torch.manual_seed(0)
    cfg = DHMDConfig(text_dim=8, audio_dim=4, video_dim=6, hidden_dim=10, num_heads=2, num_layers=2,
                     dictionary_size=8, attn_dropout=attn_dropout, relu_dropout=0.0, res_dropout=0.0,
                     embed_dropout=0.0, out_dropout=0.0)
    return DHMD(cfg).train()


def test_model_uses_the_cheap_path_and_trains_reproducibly(torch_one_thread, monkeypatch):
    calls = []
    for fn in (da.DropoutAttention, fused_attention.FusedDropoutAttention):   # chunked or fused C kernel
        monkeypatch.setattr(fn, "apply", lambda *a, real=fn.apply: calls.append(1) or real(*a))
    g = torch.Generator().manual_seed(3)
    batch = [torch.randn(4, t, d, generator=g) for t, d in ((5, 8), (7, 4), (6, 6))]
    mask = torch.ones(4, 7, dtype=torch.bool)
    mask[0, 4:] = False
    labels = torch.randn(4, generator=g)

    def grads(model: DHMD, seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        out = model(*batch, audio_mask=mask, labels=labels)
        out.losses["total"].backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    a, b, c = grads(_model(0.2), 5), grads(_model(0.2), 5), grads(_model(0.2), 6)
    assert calls, "training with attention dropout on the CPU used neither the chunked nor the fused path"
    assert all(torch.equal(x, y) for x, y in zip(a, b))                 # same seed: same masks
    assert not all(torch.equal(x, y) for x, y in zip(a, c))             # other seed: other masks
    assert all(torch.isfinite(x).all() for x in a)
    calls.clear()
    with torch.no_grad():
        _model(0.2).eval()(*batch, audio_mask=mask)
    assert not calls                                                    # eval: SDPA, no dropout


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_numba_kernels_equal_the_torch_reference_in_threads_and_without(monkeypatch, dtype):
    """The fused kernels (split over threads above keep_apply._MIN_THREADED entries) compute exactly the mask of
    the pure-torch reference, and the model falls back to that reference without numba."""
    if keep_apply.kernels() is None:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(da, "CHUNK_ELEMENTS", 1 << 17)            # several chunks, each threaded
    monkeypatch.setattr(fused_attention, "usable", lambda q: False)   # the chunked path, not the C kernel
    q, k, v = _qkv(b=4, h=5, tq=120, tk=130, d=5, dtype=dtype, seed=3)
    mask = torch.ones(4, 130, dtype=torch.bool)
    mask[3, 90:] = False
    grad = torch.randn(4, 5, 120, 5, dtype=dtype, generator=torch.Generator().manual_seed(4))

    def run():
        out = da.dropout_attention(q, k, v, mask, 0.2, 1 / math.sqrt(5), seed=99)
        return [out.detach()] + list(torch.autograd.grad(out, (q, k, v), grad))

    with_numba = run()
    monkeypatch.setattr(keep_apply, "numba_ok", lambda t: False)
    reference = run()
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for a, b in zip(with_numba, reference):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    keep = da.dropout_keep_mask(99, 20, 120, 130, 0.2)
    assert abs(float(keep.mean()) - da.keep_probability(0.2)) < 0.01
