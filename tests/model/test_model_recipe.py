"""The recipe settings of DHMDConfig (issue 13): each changes the model the way its comment says, and a
checkpoint written before they existed rebuilds the model it was trained as."""
from __future__ import annotations

import math

import pytest
import torch

from dhmd import DHMD, DHMDConfig
from dhmd.losses import task_loss, triplet_classes

pytestmark = pytest.mark.usefixtures("torch_one_thread")

DIMS = dict(text_dim=6, audio_dim=5, video_dim=4)
NO_DROPOUT = dict(attn_dropout=0.0, relu_dropout=0.0, res_dropout=0.0, embed_dropout=0.0, out_dropout=0.0)


def cfg(**kw) -> DHMDConfig:
    base = dict(DIMS, hidden_dim=8, num_heads=2, num_layers=1, dictionary_size=8, gd_hidden=4)
    base.update(kw)
    return DHMDConfig(**base)


def inputs(batch: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, t, d, generator=g) for t, d in ((7, 6), (9, 5), (5, 4))]


def test_aux_loss_sum_is_the_fused_loss_plus_all_six_head_losses():
    x, y = inputs(), torch.linspace(-2.5, 2.5, 6)
    results = {}
    for mode in ("mean", "sum"):
        torch.manual_seed(0)
        model = DHMD(cfg(aux_loss=mode, **NO_DROPOUT)).eval()
        with torch.no_grad():
            out = model(*x, labels=y)
        heads = [task_loss(out_space[m], y, "regression") for out_space in (out.unimodal_homo, out.unimodal_hetero)
                 for m in ("text", "audio", "video")]
        fused = task_loss(out.prediction, y, "regression")
        expected = fused + (sum(heads) if mode == "sum" else sum(heads) / 6)
        torch.testing.assert_close(out.losses["task"], expected)
        results[mode] = out.losses["task"]
    assert results["sum"] > results["mean"]


def test_triplet_class_rules():
    y = torch.tensor([-2.6, -0.4, 0.0, 0.4, 0.4, 2.2])
    assert triplet_classes(y, "regression", "sign").tolist() == [0, 0, 1, 1, 1, 1]
    assert triplet_classes(y, "regression", "round").tolist() == [-3, 0, 0, 0, 0, 2]
    equal = triplet_classes(y, "regression", "equal").tolist()       # DMD: one class per distinct score
    assert equal[3] == equal[4] and len(set(equal)) == 5
    with pytest.raises(ValueError, match="triplet_classes"):
        cfg(triplet_classes="emotions")


@pytest.mark.parametrize("layers,setting,depth", [(1, 0, 3), (4, 0, 4), (4, -1, 3), (2, -1, 2), (4, 2, 2)])
def test_memory_depth_rule(layers, setting, depth):
    model = DHMD(cfg(num_layers=layers, memory_layers=setting))
    assert all(len(enc.layers) == depth for enc in model.crossmodal.memory)
    assert all(len(enc.layers) == layers for enc in model.crossmodal.cross.values())


def test_attention_dropout_per_target_modality():
    model = DHMD(cfg(attn_dropout=0.3, attn_dropout_audio=0.2, attn_dropout_video=0.0))
    targets = {"0": 0.3, "1": 0.2, "2": 0.0}
    for key, enc in model.crossmodal.cross.items():
        assert all(layer.attn_dropout == targets[key.split("_to_")[1]] for layer in enc.layers), key
    assert [enc.layers[0].attn_dropout for enc in model.crossmodal.memory] == [0.3, 0.2, 0.0]
    same = DHMD(cfg(attn_dropout=0.3))                                  # -1: as attn_dropout
    assert {layer.attn_dropout for enc in same.crossmodal.memory for layer in enc.layers} == {0.3}


def test_text_dropout_acts_on_the_text_input_in_training_only():
    x = inputs()
    torch.manual_seed(0)
    model = DHMD(cfg(text_dropout=0.5, **NO_DROPOUT))
    model.train()
    a, b = model(*x).prediction, model(*x).prediction
    assert not torch.allclose(a, b)                                     # only dropout is random here
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(*x).prediction, model(*x).prediction)
    torch.manual_seed(0)
    plain = DHMD(cfg(**NO_DROPOUT)).train()
    assert torch.allclose(plain(*x).prediction, plain(*x).prediction)


def test_dictionary_temperature_reaches_the_model():
    model = DHMD(cfg(dict_temperature=2.0, dict_learn_temperature=True))
    names = dict(model.named_parameters())
    assert "dict_homo.log_temperature" in names and "dict_hetero.log_temperature" in names
    assert model.dict_hetero.temperature == pytest.approx(2.0) and model.dict_hetero.scale == 1.0
    legacy = DHMD(cfg(dict_scale_sqrt_d=True))
    assert legacy.dict_hetero.scale == pytest.approx(1 / math.sqrt(16))          # hetero width 2C = 16
    assert "dict_homo.log_temperature" not in dict(legacy.named_parameters())


def test_eq11_dictionary_is_sharper_than_sqrt_d_scaling():
    """At the paper's sizes (C = 50, K = 512), with the sqrt(d) scaling the initial dictionary attention
    is nearly uniform (what the old default did); Eq. 11 as written is far from uniform."""
    torch.manual_seed(0)
    x = [torch.randn(8, 20, d) for d in (6, 5, 4)]

    def entropy(**kw) -> float:
        torch.manual_seed(0)
        model = DHMD(cfg(hidden_dim=50, num_heads=10, dictionary_size=512, **kw)).eval()
        with torch.no_grad():
            a = model(*x).dict_attn_hetero
        return float(-(a * a.clamp_min(1e-30).log()).sum(-1).mean())

    flat = math.log(512)
    assert entropy(dict_scale_sqrt_d=True) > 0.95 * flat
    assert entropy() < 0.8 * flat


def test_old_checkpoint_config_rebuilds_the_old_model():
    """A model_config from before the recipe settings has none of their keys: from_dict fills the
    behaviour of that time (min(3, L) memory layers, sqrt(d) dictionary scaling, mean aux losses)."""
    new = cfg(num_layers=4)
    old = {k: v for k, v in new.to_dict().items()
           if k not in ("text_dropout", "attn_dropout_audio", "attn_dropout_video", "aux_loss", "memory_layers",
                        "dict_temperature", "dict_learn_temperature", "dict_scale_sqrt_d")}
    rebuilt = DHMDConfig.from_dict(old)
    assert rebuilt.memory_depth == 3 and rebuilt.dict_scale_sqrt_d and rebuilt.aux_loss == "mean"
    assert new.memory_depth == 4 and not new.dict_scale_sqrt_d
    model = DHMD(rebuilt)
    assert all(len(enc.layers) == 3 for enc in model.crossmodal.memory)
    state = model.state_dict()
    assert not any("log_temperature" in k for k in state)              # a fixed temperature is not stored
    DHMD(DHMDConfig.from_dict(old)).load_state_dict(state)             # strict load of the old layout
