"""DHMDConfig: same fields and defaults as pipeline's ModelConfig, JSON/checkpoint round trip, validation."""
from __future__ import annotations

import dataclasses
import io
import json

import pytest
import torch

from dhmd import DHMD, DHMDConfig
from pipeline.config import ModelConfig

DIMS = {"text_dim": 768, "audio_dim": 5, "video_dim": 20}


def test_fields_and_defaults_match_pipeline_model_config():
    ours = {f.name: f.default for f in dataclasses.fields(DHMDConfig)}
    theirs = ModelConfig().model_dump()
    assert set(ours) == set(theirs) | set(DIMS)
    for name, default in theirs.items():
        assert ours[name] == default, name
    # the pipeline builds the model exactly this way
    cfg = DHMDConfig(**DIMS, **ModelConfig().model_dump())
    assert cfg == DHMDConfig(**DIMS)


def test_paper_defaults():
    cfg = DHMDConfig(**DIMS)
    assert (cfg.hidden_dim, cfg.num_heads, cfg.num_layers) == (50, 10, 4)          # Table 1 [1]
    assert (cfg.kernel_text, cfg.kernel_audio, cfg.kernel_video) == (5, 5, 5)
    assert cfg.dictionary_size == 512 and cfg.gd_hidden == 32
    weights = (cfg.lambda_dec, cfg.lambda_dtl, cfg.lambda_dic, cfg.gamma, cfg.alpha)
    assert weights == (0.1, 0.05, 0.1, 0.1, 0.1)
    assert cfg.use_fd and cfg.use_ca and cfg.use_gd and cfg.use_dm and not cfg.finetune_bert


def test_round_trip_through_json_and_weights_only_checkpoint():
    cfg = DHMDConfig(**DIMS, task="classification", n_classes=4, hidden_dim=16, num_heads=2,
                     triplet_classes="round", use_dm=False)
    assert DHMDConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    torch.manual_seed(0)
    model = DHMD(DHMDConfig(text_dim=8, audio_dim=3, video_dim=4, hidden_dim=8, num_heads=2,
                            num_layers=1, dictionary_size=8))
    buf = io.BytesIO()
    torch.save({"config": model.config.to_dict(), "state": model.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    rebuilt = DHMD(DHMDConfig.from_dict(ckpt["config"]))
    rebuilt.load_state_dict(ckpt["state"])
    x = (torch.randn(2, 5, 8), torch.randn(2, 7, 3), torch.randn(2, 6, 4))
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(model(*x).prediction, rebuilt(*x).prediction)


def test_unknown_key_and_bad_values_are_rejected():
    with pytest.raises(ValueError, match="hidden_size"):
        DHMDConfig.from_dict({**DIMS, "hidden_size": 3})
    with pytest.raises(ValueError, match="divisible"):
        DHMDConfig(**DIMS, hidden_dim=50, num_heads=8)
    with pytest.raises(ValueError, match="task"):
        DHMDConfig(**DIMS, task="ranking")
    with pytest.raises(ValueError, match="n_classes=2"):
        DHMDConfig(**DIMS, task="binary", n_classes=3)
    with pytest.raises(ValueError, match="audio_dim"):
        DHMDConfig(text_dim=768, audio_dim=0, video_dim=20)
