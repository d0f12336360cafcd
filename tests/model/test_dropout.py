"""dhmd.dropout.Dropout: nn.Dropout's behaviour with the hashed keep masks of dhmd/keep_hash.py."""
from __future__ import annotations

import math

import pytest
import torch

from dhmd import keep_hash
from dhmd import dropout_attention as da
from dhmd import keep_apply
from dhmd.dropout import Dropout


@pytest.mark.parametrize("numba", [True, False])
def test_drops_at_the_rate_scales_the_rest_and_backward_uses_the_same_mask(monkeypatch, numba):
    if not numba:                                               # then it is nn.Dropout
        monkeypatch.setattr(keep_apply, "numba_ok", lambda t: False)
    elif keep_apply.kernels() is None:
        pytest.skip("numba is not installed")
    p = 0.25
    x = (torch.rand(64, 37, 50) + 0.5).requires_grad_()        # no zeros of its own
    torch.manual_seed(11)
    y = Dropout(p).train()(x)
    kept = y != 0
    rate = float(kept.float().mean())
    n = kept.numel()
    keep_p = da.keep_probability(p) if numba else 1 - p
    assert abs(rate - keep_p) < 5 * math.sqrt(p * (1 - p) / n)
    torch.testing.assert_close(y[kept], x[kept] / keep_p)
    g = torch.randn_like(y)
    (grad,) = torch.autograd.grad(y, x, g)
    assert torch.equal(grad != 0, kept)                          # the very mask of forward
    torch.testing.assert_close(grad[kept], g[kept] / keep_p)
    torch.manual_seed(11)
    assert torch.equal(Dropout(p).train()(x), y)                # reproducible from manual_seed
    torch.manual_seed(12)
    assert not torch.equal(Dropout(p).train()(x), y)


def test_the_mask_is_the_hash_reference_mask():
    """On the CPU with numba the kept elements are exactly keep_hash.keep_mask's for the call's seed
    (the same mask as attention dropout; without numba the module is nn.Dropout)."""
    if keep_apply.kernels() is None:
        pytest.skip("numba is not installed")
    from dhmd.dropout import _apply
    x = torch.rand(300, 129) + 0.5
    y = _apply(x, 0.4, seed=77)
    ref = keep_hash.keep_mask(keep_hash.key(77), 0, x.shape, keep_hash.threshold(0.4))
    assert torch.equal(y != 0, ref)


def test_eval_is_identity_and_it_replaces_nn_dropout():
    x = torch.randn(4, 5)
    layer = Dropout(0.3).eval()
    assert layer(x) is x
    assert layer.state_dict() == torch.nn.Dropout(0.3).state_dict() == {}
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    with pytest.raises(ValueError, match="between 0 and 1"):
        Dropout(1.5)
