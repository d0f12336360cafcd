"""dhmd.fused_attention: the C kernel (dhmd/csrc/dropout_attention.c) gives the chunked path's
mathematics with the very same masks, in any thread split, and dhmd.native builds, caches and falls
back to the torch path when it cannot build.

The reference is computed in float64 from the same float32 inputs:
softmax(q k^T * scale + mask) * keep / keep_prob @ v, keep from dropout_keep_mask for the same seed.
"""
from __future__ import annotations

import logging
import math
import subprocess
import sys

import pytest
import torch

from dhmd import dropout_attention as da
from dhmd import fused_attention, native

pytestmark = pytest.mark.skipif(not fused_attention.available(),
                                reason="no C compiler: the fused kernel is not built (the chunked path runs)")


def _inputs(b, h, tq, tk, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, t, d, generator=g) * 1.5 for t in (tq, tk, tk))
    mask = torch.ones(b, tk, dtype=torch.bool)
    if b > 1:
        mask[1, tk // 2 + 1:] = False
    if b > 2:
        mask[2, 1:] = False                     # one real key only
    return q, k, v, mask, torch.randn(b, h, tq, d, generator=g)


def _fused(q, k, v, mask, grad, p, seed, monkeypatch):
    calls = []
    real = fused_attention.FusedDropoutAttention.apply
    monkeypatch.setattr(fused_attention.FusedDropoutAttention, "apply", lambda *a: calls.append(1) or real(*a))
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    out = da.dropout_attention(q, k, v, mask, p, 1 / math.sqrt(q.shape[-1]), seed=seed)
    assert calls, "float32 on the CPU did not go to the fused kernel"
    return [out.detach()] + list(torch.autograd.grad(out, (q, k, v), grad))


def _reference(q, k, v, mask, grad, p, seed):
    b, h, tq, d = q.shape
    tk = k.shape[2]
    q, k, v = (t.double().requires_grad_() for t in (q, k, v))
    keep = da.dropout_keep_mask(seed, b * h, tq, tk, p).view(b, h, tq, tk).double()
    scores = (q @ k.transpose(-1, -2) / math.sqrt(d)).masked_fill(~mask[:, None, None, :], float("-inf"))
    out = (scores.softmax(-1) * keep / da.keep_probability(p)) @ v
    return [out.detach()] + list(torch.autograd.grad(out, (q, k, v), grad.double()))


@pytest.mark.parametrize("shape", [(3, 2, 7, 9), (3, 2, 33, 50), (2, 5, 120, 130), (3, 1, 4, 1)])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_equals_the_reference_with_the_same_mask(monkeypatch, shape, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        q, k, v, mask, grad = _inputs(*shape)
        mine = _fused(q, k, v, mask, grad, 0.3, 4321, monkeypatch)
    finally:
        torch.set_num_threads(before)
    ref = _reference(q, k, v, mask, grad, 0.3, 4321)
    for name, a, b in zip(("out", "dq", "dk", "dv"), mine, ref):
        scale = float(b.abs().max()) + 1e-30
        err = float((a.double() - b).abs().max())
        assert err <= 2e-6 * scale, f"{name}: max error {err:.3g} against max |value| {scale:.3g}"
    # masked keys get exactly nothing, dropped or kept
    if shape[0] > 2:
        assert torch.count_nonzero(mine[3][2, :, 1:]) == 0
    if shape[0] > 1:
        assert torch.count_nonzero(mine[3][1, :, shape[3] // 2 + 1:]) == 0


def test_the_thread_split_does_not_change_a_bit(monkeypatch):
    q, k, v, mask, grad = _inputs(4, 5, 60, 70, seed=2)
    before = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            runs.append(_fused(q, k, v, mask, grad, 0.2, 11, monkeypatch))
    finally:
        torch.set_num_threads(before)
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other))


def test_wide_score_range_and_no_dropout(monkeypatch):
    """Scores spread over hundreds (exp underflows for most keys) and p = 0: still the reference."""
    q, k, v, mask, grad = _inputs(2, 2, 16, 40, seed=5)
    q = q * 30
    mine = _fused(q, k, v, mask, grad, 0.0, 1, monkeypatch)
    ref = _reference(q, k, v, mask, grad, 0.0, 1)
    assert all(torch.isfinite(t).all() for t in mine)
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4 * (float(b.abs().max()) + 1e-12))


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """An empty kernel folder and no loaded kernel; afterwards the normal one is loaded again."""
    monkeypatch.setenv("DHMD_KERNEL_DIR", str(tmp_path))
    native.library.cache_clear()
    fused_attention._kernels.cache_clear()
    yield tmp_path
    native.library.cache_clear()
    fused_attention._kernels.cache_clear()


def test_build_is_cached_and_never_left_half_written(fresh_build):
    assert native.library("dropout_attention") is not None
    built = sorted(p.name for p in fresh_build.iterdir())
    assert len(built) == 1 and built[0].startswith("dropout_attention-") and built[0].endswith(".so")
    mtime = (fresh_build / built[0]).stat().st_mtime_ns
    # another process finds the build and does not compile again (only the compiler's version is read)
    code = ("import dhmd.native as n\nreal = n.subprocess.run\n"
            "def run(cmd, **kw):\n    assert '--version' in cmd, cmd\n    return real(cmd, **kw)\n"
            "n.subprocess.run = run\nassert n.library('dropout_attention') is not None\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert sorted(p.name for p in fresh_build.iterdir()) == built
    assert (fresh_build / built[0]).stat().st_mtime_ns == mtime


def test_falls_back_to_the_torch_path_without_a_compiler(fresh_build, monkeypatch, caplog):
    q, k, v, mask, grad = _inputs(3, 2, 20, 30, seed=7)
    fused = _fused(q, k, v, mask, grad, 0.25, 3, monkeypatch)
    native.library.cache_clear()
    fused_attention._kernels.cache_clear()
    monkeypatch.setenv("CC", str(fresh_build / "no-such-compiler"))
    monkeypatch.setenv("DHMD_KERNEL_DIR", str(fresh_build / "other"))
    with caplog.at_level(logging.WARNING, logger="dhmd.native"):
        assert not fused_attention.available()
    assert "no-such-compiler" in caplog.text and "torch path" in caplog.text
    q2, k2, v2 = (t.clone().requires_grad_() for t in (q, k, v))
    out = da.dropout_attention(q2, k2, v2, mask, 0.25, 1 / math.sqrt(5), seed=3)
    chunked = [out.detach()] + list(torch.autograd.grad(out, (q2, k2, v2), grad))
    for a, b in zip(fused, chunked):                  # same masks: the two paths agree
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_a_failed_build_names_the_source_and_falls_back(fresh_build, monkeypatch, caplog):
    src = fresh_build / "src"
    src.mkdir()
    (src / "dropout_attention.c").write_text("this is not C;\n")
    monkeypatch.setattr(native, "SOURCE_DIR", src)
    with caplog.at_level(logging.WARNING, logger="dhmd.native"):
        assert native.library("dropout_attention") is None
    assert "dropout_attention.c" in caplog.text
    assert not [p for p in fresh_build.iterdir() if p.suffix == ".so"]     # nothing half-written left


def test_disabled_by_environment(fresh_build, monkeypatch):
    monkeypatch.setenv("DHMD_NATIVE", "0")
    assert native.library("dropout_attention") is None
    assert not fused_attention.usable(torch.zeros(1, 1, 1))


def test_an_unwritable_cache_falls_back_to_a_private_temp_folder(fresh_build, monkeypatch):
    blocker = fresh_build / "not-a-folder"
    blocker.write_text("")
    monkeypatch.delenv("DHMD_KERNEL_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))          # ~/.cache cannot be made: a file is there
    private = fresh_build / "tmp" / "dhmd-kernels-me"
    monkeypatch.setattr(native, "_private_temp_dir", lambda: private)
    assert native.library("dropout_attention") is not None
    assert [p.name.startswith("dropout_attention-") for p in private.iterdir()] == [True]
    assert private.stat().st_mode & 0o077 == 0                  # made private
    # a temp folder others may write to is never trusted: no library is loaded from it or built in it
    native.library.cache_clear()
    for p in private.iterdir():
        p.unlink()
    private.chmod(0o777)
    assert native.library("dropout_attention") is None
    assert not list(private.iterdir())
