"""The assembled DHMD model: interface, padding invariance, variable lengths, losses and their gradients,
overfitting, ablation switches, determinism, and bf16 autocast on CUDA."""
from __future__ import annotations

import pytest
import torch

from dhmd import DHMD, DHMDConfig, DHMDOutput

DIMS = {"text_dim": 12, "audio_dim": 5, "video_dim": 7}
LOSS_KEYS = {"task", "rec", "cyc", "mar", "ort", "dtl_homo", "dtl_hetero", "ctr_homo", "ctr_hetero", "total"}
NO_DROPOUT = dict(attn_dropout=0.0, relu_dropout=0.0, res_dropout=0.0, embed_dropout=0.0, out_dropout=0.0)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def small_cfg(**kw) -> DHMDConfig:
    base = dict(DIMS, hidden_dim=16, num_heads=2, num_layers=1, dictionary_size=16, gd_hidden=8,
                kernel_text=3, kernel_audio=5, kernel_video=4)
    base.update(kw)
    return DHMDConfig(**base)


def random_sample(lengths: tuple[int, int, int], dims=DIMS) -> list[torch.Tensor]:
    return [torch.randn(t, d) for t, d in zip(lengths, dims.values())]


def pad_batch(samples: list[list[torch.Tensor]], junk: float = 100.0):
    """Right-pad like pipeline.training.dataset.collate, but fill padding with random junk."""
    inputs, masks = [], []
    for m in range(3):
        longest = max(s[m].shape[0] for s in samples)
        x = torch.randn(len(samples), longest, samples[0][m].shape[1]) * junk
        mask = torch.zeros(len(samples), longest, dtype=torch.bool)
        for b, s in enumerate(samples):
            x[b, : s[m].shape[0]] = s[m]
            mask[b, : s[m].shape[0]] = True
        inputs.append(x)
        masks.append(mask)
    return inputs, dict(text_mask=masks[0], audio_mask=masks[1], video_mask=masks[2])


def batch_with_labels(batch=8, lengths=(6, 10, 12), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = [torch.randn(batch, t, d, generator=g) for t, d in zip(lengths, DIMS.values())]
    y = torch.linspace(-2.5, 2.9, batch)                                      # both signs: triplets exist
    return x, y


# ------------------------------------------------------------------------------------ interface
@pytest.mark.parametrize("task,n_classes", [("regression", 2), ("binary", 2), ("classification", 5)])
def test_output_interface(task, n_classes):
    torch.manual_seed(0)
    model = DHMD(small_cfg(task=task, n_classes=n_classes))
    x, y = batch_with_labels(batch=6)
    labels = y if task == "regression" else torch.arange(6) % n_classes
    out = model(*x, labels=labels)
    assert isinstance(out, DHMDOutput)
    shape = (6,) if task == "regression" else (6, n_classes)
    assert out.prediction.shape == shape
    assert set(out.unimodal) == {"text", "audio", "video"}
    assert all(v.shape == shape for v in out.unimodal.values())
    assert set(out.losses) == LOSS_KEYS and all(torch.isfinite(v) for v in out.losses.values())
    for edges in (out.edges_homo, out.edges_hetero):
        assert edges.shape == (6, 3, 3) and torch.all(edges >= 0)
        assert torch.all(torch.diagonal(edges, dim1=1, dim2=2) == 0)
        assert torch.allclose(edges.sum(dim=(1, 2)), torch.ones(6))            # one softmax, 6 edges
    for attn in (out.dict_attn_homo, out.dict_attn_hetero):
        assert attn.shape == (6, 3, 16) and torch.allclose(attn.sum(-1), torch.ones(6, 3))
    assert model(*x).losses == {}                                               # no labels, no losses
    cfg = model.config
    dec = out.losses["rec"] + out.losses["cyc"] + cfg.gamma * (out.losses["mar"] + out.losses["ort"])
    expected = (out.losses["task"] + cfg.lambda_dec * dec
                + cfg.lambda_dtl * (out.losses["dtl_homo"] + out.losses["dtl_hetero"])
                + cfg.lambda_dic * (out.losses["ctr_homo"] + out.losses["ctr_hetero"]))   # Eq. 14
    assert torch.allclose(out.losses["total"], expected)


def test_wrong_input_shapes_are_named():
    model = DHMD(small_cfg())
    x, _ = batch_with_labels(batch=2)
    with pytest.raises(ValueError, match="audio input"):
        model(x[0], torch.randn(2, 10, 4), x[2])
    with pytest.raises(ValueError, match="mask"):
        model(*x, video_mask=torch.ones(2, 3, dtype=torch.bool))


# ---------------------------------------------------------------------------- padding invariance
@pytest.mark.parametrize("switches", [{}, {"use_fd": False}, {"use_ca": False, "use_gd": False}])
def test_prediction_does_not_depend_on_padding(switches):
    torch.manual_seed(0)
    model = DHMD(small_cfg(num_layers=2, **switches)).eval()
    target = random_sample((5, 9, 11))
    others = [random_sample((8, 23, 30)), random_sample((7, 16, 13)), random_sample((2, 30, 4))]
    with torch.no_grad():
        alone = model(*[t.unsqueeze(0) for t in target])
        inputs, masks = pad_batch([target] + others)
        batch = model(*inputs, **masks)
        moved = pad_batch([others[0], target])                                 # second row this time
        batch2 = model(*moved[0], **moved[1])
    for out, row in ((batch, 0), (batch2, 1)):
        assert torch.allclose(out.prediction[row], alone.prediction[0], atol=1e-4)
        for name in ("text", "audio", "video"):
            assert torch.allclose(out.unimodal[name][row], alone.unimodal[name][0], atol=1e-4)
        for key in ("edges_homo", "edges_hetero", "dict_attn_homo", "dict_attn_hetero"):
            if getattr(alone, key) is not None:
                assert torch.allclose(getattr(out, key)[row], getattr(alone, key)[0], atol=1e-4), key


@pytest.mark.parametrize("modality", ["audio", "video"])
def test_sample_without_any_real_frame_does_not_depend_on_its_padding(modality):
    """No face in the whole clip (or no voiced audio): the sample sees one all-zero "nothing observed"
    frame in that modality, whatever its padded frames hold."""
    torch.manual_seed(0)
    model = DHMD(small_cfg(num_layers=2)).eval()
    m = ("text", "audio", "video").index(modality)
    samples = [random_sample((5, 9, 11)), random_sample((4, 6, 8))]
    inputs, masks = pad_batch(samples)                                        # padding = random x100
    masks[f"{modality}_mask"][1] = False                                       # clip 2: nothing real
    zero_inputs = [x.clone() for x in inputs]
    zero_inputs[m][1] = 0.0                                                    # same clip, zero padding
    lone = [t.unsqueeze(0) for t in samples[1]]
    lone[m] = torch.zeros(1, 1, lone[m].shape[-1])                             # one all-zero frame, real
    with torch.no_grad():
        junk = model(*inputs, **masks)
        zero = model(*zero_inputs, **masks)
        alone = model(*lone)
        single = model(*[x[1:] for x in inputs], **{k: v[1:] for k, v in masks.items()})   # alone, padded
    assert torch.isfinite(junk.prediction).all() and torch.isfinite(junk.dict_attn_hetero).all()
    assert torch.allclose(junk.prediction, zero.prediction, atol=1e-5)
    for name in ("text", "audio", "video"):
        assert torch.allclose(junk.unimodal[name], zero.unimodal[name], atol=1e-5), name
    for out in (junk, zero, single):
        row = 1 if out is not single else 0
        assert torch.allclose(out.prediction[row], alone.prediction[0], atol=1e-5)
        for key in ("edges_homo", "edges_hetero", "dict_attn_homo", "dict_attn_hetero"):
            assert torch.allclose(getattr(out, key)[row], getattr(alone, key)[0], atol=1e-5), key
    assert torch.allclose(junk.prediction[0], zero.prediction[0], atol=1e-5)   # the other clip as well


# ---------------------------------------------------------------------------- sequence lengths
def test_aligned_and_unaligned_lengths_with_one_model():
    torch.manual_seed(0)
    model = DHMD(small_cfg(text_dim=16, video_dim=20))
    for lengths in ((50, 50, 50), (50, 375, 500), (3, 1, 2)):
        x = [torch.randn(2, t, d) for t, d in zip(lengths, (16, 5, 20))]
        out = model(*x, labels=torch.tensor([-1.0, 2.0]))
        out.losses["total"].backward()
        assert out.prediction.shape == (2,) and torch.isfinite(out.losses["total"])


def test_paper_default_model_on_mosi_unaligned_shapes():
    torch.manual_seed(0)
    model = DHMD(DHMDConfig(text_dim=768, audio_dim=5, video_dim=20))
    n_params = sum(p.numel() for p in model.parameters())
    assert 3e6 < n_params < 5e6
    assert model.dict_homo.atoms.shape == (512, 50) and model.dict_hetero.atoms.shape == (512, 100)
    assert len(model.crossmodal.cross["0_to_1"].layers) == 4
    x = [torch.randn(2, t, d) for t, d in zip((50, 375, 500), (768, 5, 20))]
    model.eval()
    with torch.no_grad():
        out = model(*x, labels=torch.tensor([0.5, -1.5]))
    assert out.dict_attn_homo.shape == (2, 3, 512) and set(out.losses) == LOSS_KEYS


# ------------------------------------------------------------------------------ loss gradients
def test_each_loss_trains_its_own_parameters():
    torch.manual_seed(0)
    model = DHMD(small_cfg(**NO_DROPOUT))
    x, y = batch_with_labels()
    out = model(*x, labels=y)
    targets = {
        "task": ["fusion.out.weight", "head_homo.weight", "head_hetero.weight", "projections.1.conv.weight"],
        "rec": ["decoupler.decoders.0.weight", "decoupler.shared_encoder.weight"],
        "cyc": ["decoupler.private_encoders.2.weight", "decoupler.decoders.2.weight"],
        "mar": ["decoupler.shared_encoder.weight", "projections.0.conv.weight"],
        "ort": ["decoupler.shared_encoder.weight", "decoupler.private_encoders.1.weight"],
        "dtl_homo": ["gd_homo.edge.weight", "gd_homo.node.weight", "head_homo.weight"],
        "dtl_hetero": ["gd_hetero.edge.weight", "gd_hetero.node.weight", "head_hetero.weight"],
        "ctr_homo": ["dict_homo.atoms", "decoupler.shared_encoder.weight"],
        "ctr_hetero": ["dict_hetero.atoms", "crossmodal.cross.1_to_0.layers.0.to_q.weight"],
    }
    untouched = {"rec": "dict_homo.atoms", "dtl_homo": "gd_hetero.edge.weight",
                 "ctr_homo": "dict_hetero.atoms",
                 "ctr_hetero": "decoupler.shared_encoder.weight", "mar": "crossmodal.memory.0.norm.weight"}
    params = dict(model.named_parameters())
    for name, wanted in targets.items():
        loss = out.losses[name]
        assert torch.isfinite(loss) and loss > 0, name
        grads = torch.autograd.grad(loss, [params[p] for p in wanted], retain_graph=True, allow_unused=True)
        for p, g in zip(wanted, grads):
            assert g is not None and g.abs().sum() > 0, f"{name} does not reach {p}"
        if name in untouched:
            (g,) = torch.autograd.grad(loss, [params[untouched[name]]], retain_graph=True, allow_unused=True)
            assert g is None or g.abs().sum() == 0, f"{name} leaks into {untouched[name]}"


@pytest.mark.parametrize("task,n_classes", [("regression", 2), ("classification", 3)])
def test_every_parameter_gets_a_gradient(task, n_classes):
    """All switches on: one backward pass of the total loss reaches every parameter (nothing unused,
    e.g. no key/value LayerNorm in the self-attention memory layers)."""
    torch.manual_seed(0)
    model = DHMD(small_cfg(num_layers=2, task=task, n_classes=n_classes))
    x, y = batch_with_labels()
    # 5 of 8 labels above the (near-zero) initial prediction, so the L1 signs do not cancel
    labels = y + 0.5 if task == "regression" else torch.arange(8) % n_classes
    model(*x, labels=labels).losses["total"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert all(layer.norm_kv is None for enc in model.crossmodal.memory for layer in enc.layers)
    assert all(layer.norm_kv is not None for enc in model.crossmodal.cross.values() for layer in enc.layers)


def test_checkpoint_with_memory_norm_kv_still_loads():
    """Checkpoints written before the memory layers lost norm_kv hold its (never trained) weights."""
    torch.manual_seed(0)
    model = DHMD(small_cfg())
    state = model.state_dict()
    old = dict(state)
    for m, enc in enumerate(model.crossmodal.memory):
        for i in range(len(enc.layers)):
            old[f"crossmodal.memory.{m}.layers.{i}.norm_kv.weight"] = torch.ones(32)
            old[f"crossmodal.memory.{m}.layers.{i}.norm_kv.bias"] = torch.zeros(32)
    rebuilt = DHMD(small_cfg())
    rebuilt.load_state_dict(old)                                               # strict, no error
    assert all(torch.equal(v, rebuilt.state_dict()[k]) for k, v in state.items())
    with pytest.raises(RuntimeError, match="norm_kv"):                         # cross layers still need it
        rebuilt.load_state_dict({k: v for k, v in state.items() if "cross.0_to_1.layers.0.norm_kv" not in k})


def test_tiny_batch_is_overfitted():
    """The total and the task loss fall by 90% on a tiny batch within 40 steps (a few seconds on one CPU
    thread).  Adam with a short momentum (betas 0.5, 0.9) and a learning rate decayed linearly to 0
    settles the L1 task loss instead of letting it oscillate around its minimum.

    The dictionaries divide their scores by sqrt(d) here: with Eq. 11 as written (the default, fixed
    temperature 1) the heterogeneous dictionary's attention is near one-hot from the start and on this
    batch ctr_hetero stays at 0.94 and the task loss at 0.27 (of 3.8 total at step 0) after 40 steps;
    with sqrt(d) 0.04 and 0.08.  See test_eq11_dictionary_is_sharper_than_sqrt_d_scaling."""
    torch.manual_seed(0)
    model = DHMD(small_cfg(**NO_DROPOUT, dict_scale_sqrt_d=True))
    x, y = batch_with_labels(batch=4, lengths=(4, 6, 5))                      # both label signs
    steps = 40
    opt = torch.optim.Adam(model.parameters(), lr=2e-2, betas=(0.5, 0.9), foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / steps)
    first = None
    for _ in range(steps):
        out = model(*x, labels=y)
        opt.zero_grad()
        out.losses["total"].backward()
        opt.step()
        sched.step()
        first = first or {k: v.item() for k, v in out.losses.items()}
    last = {k: v.item() for k, v in out.losses.items()}
    assert last["total"] < 0.1 * first["total"], (first, last)
    assert last["task"] < 0.1 * first["task"], (first, last)


# ---------------------------------------------------------------------------- ablation switches
TABLE6 = [  # (fd, ca, gd, dm) rows of the paper's Table 6
    (True, True, True, False), (True, True, False, True), (True, True, False, False),
    (False, True, False, True), (True, False, False, False), (False, False, False, False)]


@pytest.mark.parametrize("fd,ca,gd,dm", TABLE6)
def test_ablation_switches_remove_modules_and_losses(fd, ca, gd, dm):
    torch.manual_seed(0)
    full = DHMD(small_cfg(**NO_DROPOUT))
    model = DHMD(small_cfg(use_fd=fd, use_ca=ca, use_gd=gd, use_dm=dm, **NO_DROPOUT))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model) < count(full)
    assert (model.decoupler is not None) == fd and (model.crossmodal is not None) == ca
    assert (model.gd_hetero is not None) == gd and (model.dict_hetero is not None) == dm
    x, y = batch_with_labels()
    out = model(*x, labels=y)
    expected = {"task", "total"}
    expected |= {"rec", "cyc", "mar", "ort"} if fd else set()
    expected |= (({"dtl_homo"} if fd else set()) | {"dtl_hetero"}) if gd else set()
    expected |= (({"ctr_homo"} if fd else set()) | {"ctr_hetero"}) if dm else set()
    assert set(out.losses) == expected
    assert (out.edges_hetero is not None) == gd and (out.dict_attn_hetero is not None) == dm
    assert (out.edges_homo is not None) == (fd and gd) and (out.dict_attn_homo is not None) == (fd and dm)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)                        # and it still trains
    start = out.losses["task"].item()
    for _ in range(25):
        out = model(*x, labels=y)
        opt.zero_grad()
        out.losses["total"].backward()
        opt.step()
    assert out.losses["task"].item() < 0.7 * start


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def fusion_size(blocks: list[int], out: int) -> int:
    """Parameters of a FusionHead over blocks of these widths: a (d x d) gate per block, the residual
    two-layer MLP of the concatenation (width W) and the output layer."""
    width = sum(blocks)
    return sum(d * d + d for d in blocks) + 2 * (width * width + width) + width * out + out


def space_size(dim: int, cfg: DHMDConfig, gd: bool, dm: bool) -> int:
    """Parameters of one feature space of width dim: auxiliary head f, GD-Unit (node embedding + edge
    scorer), dictionary (K x dim)."""
    out, h = cfg.out_dim, cfg.gd_hidden
    head = dim * out + out
    gd_unit = (out + dim) * h + h + 2 * h + 1 if gd else 0
    return head + gd_unit + (cfg.dictionary_size * dim if dm else 0)


# switch -> (top-level modules of the full model it removes, losses it removes)
SINGLE_SWITCHES = {
    "use_fd": ({"decoupler", "head_homo", "gd_homo", "dict_homo"},
               {"rec", "cyc", "mar", "ort", "dtl_homo", "ctr_homo"}),
    "use_ca": ({"crossmodal"}, set()),
    "use_gd": ({"gd_homo", "gd_hetero"}, {"dtl_homo", "dtl_hetero"}),
    "use_dm": ({"dict_homo", "dict_hetero"}, {"ctr_homo", "ctr_hetero"}),
}


@pytest.mark.parametrize("switch", list(SINGLE_SWITCHES))
def test_single_switch_removes_exactly_its_modules_and_losses(switch):
    torch.manual_seed(0)
    cfg_full = small_cfg(**NO_DROPOUT)
    full = DHMD(cfg_full)
    model = DHMD(small_cfg(**{switch: False}, **NO_DROPOUT))
    removed, removed_losses = SINGLE_SWITCHES[switch]
    c, out = cfg_full.hidden_dim, cfg_full.out_dim
    children = dict(full.named_children())
    assert {n for n, m in model.named_children()} == set(children) - removed
    assert all(getattr(model, name) is None for name in removed)

    # the analytic sizes agree with the full model's own modules ...
    homo_w, hetero_w = 2 * c, 2 * (2 * c)                                       # [coarse, fine] blocks
    assert fusion_size([homo_w] * 3 + [hetero_w] * 3, out) == n_params(full.fusion)
    assert space_size(2 * c, cfg_full, True, True) == sum(
        n_params(children[n]) for n in ("head_hetero", "gd_hetero", "dict_hetero"))
    # ... and give what the modules that stay but change width become without the switch
    fd, ca, dm = switch != "use_fd", switch != "use_ca", switch != "use_dm"
    hetero_dim = 2 * c if ca else c
    blocks = ([c * (2 if dm else 1)] * 3 if fd else []) + [hetero_dim * (2 if dm else 1)] * 3
    resized = {"fusion": fusion_size(blocks, out)}
    if not ca:                                                      # the heterogeneous space is C wide
        resized["hetero space"] = space_size(c, cfg_full, True, True)
        full_hetero = sum(n_params(children[n]) for n in ("head_hetero", "gd_hetero", "dict_hetero"))
    else:
        full_hetero = 0
    expected = (n_params(full) - sum(n_params(children[n]) for n in removed)
                - n_params(full.fusion) - full_hetero + sum(resized.values()))
    assert n_params(model) == expected
    if switch == "use_gd":                                                      # nothing else changes
        assert n_params(full) - n_params(model) == n_params(full.gd_homo) + n_params(full.gd_hetero)

    x, y = batch_with_labels()
    outputs = model(*x, labels=y + 0.5)
    assert set(outputs.losses) == LOSS_KEYS - removed_losses
    losses = [outputs.losses["total"]]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)                        # and it still trains
    for step in range(6):
        opt.zero_grad()
        losses[-1].backward()
        if step == 0:
            idle = [n for n, p in model.named_parameters() if p.grad is None]
            assert idle == [], idle                                            # nothing left dangling
        opt.step()
        losses.append(model(*x, labels=y + 0.5).losses["total"])
    values = [v.item() for v in losses]
    assert all(torch.isfinite(torch.tensor(values))) and values[-1] < values[0], values


# --------------------------------------------------------------------------------- determinism
def test_same_seed_same_result_on_cpu():
    def run():
        torch.manual_seed(123)
        model = DHMD(small_cfg())                                              # dropout on, train mode
        x, y = batch_with_labels(seed=5)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(2):
            out = model(*x, labels=y)
            opt.zero_grad()
            out.losses["total"].backward()
            opt.step()
        return out.prediction.detach(), model.fusion.out.weight.detach().clone()
    (p1, w1), (p2, w2) = run(), run()
    assert torch.equal(p1, p2) and torch.equal(w1, w2)


# ----------------------------------------------------------------------------------- precision
def _not_bf16(x: torch.Tensor) -> torch.Tensor:
    """True where a float32 value is not exactly representable in bfloat16."""
    return x.to(torch.bfloat16).float() != x


def test_predictions_are_float32_under_bf16_autocast():
    """Under bf16 autocast the prediction and the unimodal logits are float32 values computed in float32
    (not bf16-rounded and cast back): the heads match a hand-written fp32 computation on their inputs."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = DHMD(small_cfg(**NO_DROPOUT)).eval()
    x, y = batch_with_labels(batch=16)
    seen: dict[str, list] = {"fusion": [], "head_homo": [], "head_hetero": []}
    for name in seen:
        getattr(model, name).register_forward_hook(
            lambda mod, args, out, name=name: seen[name].append((args[0], out)))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(*x, labels=y)
    blocks, _ = seen["fusion"][0]
    assert any(b.dtype == torch.bfloat16 for b in blocks)                     # autocast was really on
    pred = out.prediction
    assert pred.dtype == torch.float32 and _not_bf16(pred).sum() >= 14         # not confined to bf16 values

    def linear(layer, v):
        return F.linear(v.float(), layer.weight.float(), layer.bias.float())

    with torch.no_grad():                                                      # the fusion head by hand
        fusion = model.fusion
        xs = torch.cat([b.float() * torch.sigmoid(linear(g, b)) for b, g in zip(blocks, fusion.gates)], -1)
        hidden = linear(fusion.mlp[3], torch.relu(linear(fusion.mlp[0], xs)))
        expected = linear(fusion.out, xs + hidden).squeeze(-1)
        rounded = expected.to(torch.bfloat16).float()
    assert torch.allclose(pred, expected, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(pred, rounded, atol=1e-6, rtol=1e-6)             # the test can tell bf16

    for m, name in enumerate(("text", "audio", "video")):
        logits = out.unimodal[name]
        assert logits.dtype == torch.float32 and _not_bf16(logits).sum() >= 14, name
        with torch.no_grad():
            heads = [linear(getattr(model, h), seen[h][m][0]) for h in ("head_homo", "head_hetero")]
        assert torch.allclose(logits, torch.stack(heads).mean(0).squeeze(-1), atol=1e-6, rtol=1e-6), name
    for edges in (out.edges_homo, out.edges_hetero):
        assert edges.dtype == torch.float32
        assert torch.allclose(edges.sum((1, 2)), torch.ones(16), atol=1e-6)


# ------------------------------------------------------------------------------------------ CUDA
def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dimension, q renormalised (a bf16 row need not sum to exactly 1)."""
    p, q = p.float(), q.float()
    q = q / q.sum(-1, keepdim=True)
    return (p * (p.clamp_min(1e-12).log() - q.clamp_min(1e-12).log())).sum(-1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_autocast_agrees_with_fp32_on_cuda():
    torch.manual_seed(0)
    model = DHMD(DHMDConfig(text_dim=768, audio_dim=5, video_dim=20)).cuda().eval()
    x = [torch.randn(4, t, d) for t, d in zip((50, 375, 500), (768, 5, 20))]
    inputs, masks = pad_batch([[s[b] for s in x] for b in range(4)], junk=1.0)
    masks["audio_mask"][1, 300:] = False                                       # real padding: masked SDPA
    masks = {k: v.cuda() for k, v in masks.items()}
    y = torch.tensor([-2.0, -0.5, 0.7, 2.4], device="cuda")
    with torch.no_grad():
        ref = model(*[i.cuda() for i in inputs], **masks, labels=y)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = model(*[i.cuda() for i in inputs], **masks, labels=y)
    assert low.prediction.dtype == torch.float32                               # fp32 head under autocast
    scale = ref.prediction.abs().max().clamp_min(1.0)
    assert torch.allclose(low.prediction, ref.prediction, atol=0.05 * scale)
    # dictionary attention: K = 512 entries of about 1/512 each, so an absolute tolerance says nothing;
    # compare the distributions.  On CPU bf16 autocast the KL is ~2e-4 at most, while two different
    # samples' distributions are 2e-2 (homo) to 1e-1 (hetero) apart.
    for key in ("dict_attn_homo", "dict_attn_hetero"):
        p, q = getattr(ref, key), getattr(low, key)
        assert torch.allclose(q.float().sum(-1), torch.ones_like(p.sum(-1)), atol=1e-2), key
        kl, between = _kl(p, q), _kl(p, p.roll(1, dims=0))                     # (B, 3) each
        assert kl.max() < 2e-3, (key, kl.max().item())
        assert kl.mean() < 0.1 * between.mean(), (key, kl.mean().item(), between.mean().item())
    for key in ("edges_homo", "edges_hetero"):                                 # fp32 GD-Unit, bf16 inputs
        p, q = getattr(ref, key).flatten(1), getattr(low, key).flatten(1)
        assert q.dtype == torch.float32 and _kl(p, q).max() < 1e-3, key
    assert torch.allclose(low.losses["total"], ref.losses["total"], rtol=0.05)
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(*[i.cuda() for i in inputs], **masks, labels=y)
    out.losses["total"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_padding_invariance_with_fused_attention_on_cuda(precision):
    """The paper's C=50 with 10 heads has head size 5, which the fused SDPA kernels refuse; attend() pads
    heads to 8 on CUDA.  With SDPA restricted to the fused kernels (no math fallback: a missing head
    padding raises "no available kernel"), a sample alone equals the sample inside a batch padded with
    random junk: masked (memory-efficient) and unmasked (flash / memory-efficient) kernels agree."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    bf16 = precision == "bf16"
    backends = ([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION] if bf16
                else [SDPBackend.EFFICIENT_ATTENTION])                         # flash has no fp32 kernel
    torch.manual_seed(0)
    model = DHMD(DHMDConfig(**DIMS)).cuda().eval()                             # paper widths: head size 5
    assert model.config.hidden_dim // model.config.num_heads == 5
    target = random_sample((5, 9, 11))
    others = [random_sample((8, 23, 30)), random_sample((7, 16, 13)), random_sample((2, 30, 4))]
    inputs, masks = pad_batch([target] + others)                               # padding = random x100
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False   # exact fp32 convs
    try:
        with torch.no_grad(), sdpa_kernel(backends), torch.autocast("cuda", torch.bfloat16, enabled=bf16):
            alone = model(*[t.unsqueeze(0).cuda() for t in target])
            batch = model(*[i.cuda() for i in inputs], **{k: v.cuda() for k, v in masks.items()})
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    # fp32: exact up to summation order; bf16: rounding differs between kernels and batch shapes, while
    # leaked x100 junk would move the prediction by orders of magnitude more
    atol = 0.05 * float(alone.prediction.abs().max().clamp_min(1.0)) if bf16 else 1e-4
    assert torch.allclose(batch.prediction[0], alone.prediction[0], atol=atol)
    for name in ("text", "audio", "video"):
        assert torch.allclose(batch.unimodal[name][0], alone.unimodal[name][0], atol=atol), name
    for key in ("dict_attn_homo", "dict_attn_hetero"):
        kl = _kl(getattr(alone, key)[0], getattr(batch, key)[0])
        assert kl.max() < (2e-3 if bf16 else 1e-6), (key, kl.max().item())
