"""The paper's settings per dataset (Table 1 and Section 4), as dotted overrides for ``--preset``.

Table 1 columns [1]-[4] are CMU-MOSI, CMU-MOSEI, UR-FUNNY and MUStARD.  Its kernel row lists the
temporal convolutions in the order language, VISUAL, ACOUSTIC (C_L, C_V, C_A): "5,3,5" for MUStARD
means text 5, video 3, audio 5.  Section 4: batch 16, 30 epochs, lambda1..3 = 0.1 / 0.05 / 0.1,
gamma 0.1, margin alpha 0.1, GD-Unit hidden 32, K = 512 dictionary elements.  UR-FUNNY and MUStARD are
binary tasks (humor, sarcasm), selected on validation accuracy / F1.

The CLI applies a preset between the settings file and ``--set``: ``--set`` values always win
(:func:`pipeline.config.load_config`'s ``preset`` argument).  Code that already holds a config uses
:func:`apply_preset`.
"""
from __future__ import annotations

from typing import Any

from pipeline.config import PipelineConfig, with_overrides

_COMMON: dict[str, Any] = {
    "model.lambda_dec": 0.1, "model.lambda_dtl": 0.05, "model.lambda_dic": 0.1,
    "model.gamma": 0.1, "model.alpha": 0.1, "model.gd_hidden": 32, "model.dictionary_size": 512,
    "train.batch_size": 16, "train.epochs": 30,
    "train.modality_dropout": 0.0,   # the paper trains without modality dropout
}


def _preset(text: int, video: int, audio: int, hidden: int, heads: int, layers: int, task: str,
            val_metric: str) -> dict[str, Any]:
    return {**_COMMON, "model.kernel_text": text, "model.kernel_video": video, "model.kernel_audio": audio,
            "model.hidden_dim": hidden, "model.num_heads": heads, "model.num_layers": layers,
            "model.task": task, "model.n_classes": 2, "train.val_metric": val_metric}


PRESETS: dict[str, dict[str, Any]] = {
    "mosi": _preset(5, 5, 5, 50, 10, 4, "regression", "MAE"),
    "mosei": _preset(5, 3, 3, 30, 6, 4, "regression", "MAE"),
    "urfunny": _preset(5, 5, 5, 50, 10, 4, "binary", "Acc"),
    "mustard": _preset(5, 3, 5, 32, 8, 2, "binary", "F1"),
}


def preset_overrides(name: str | None) -> dict[str, Any]:
    """The dotted overrides of preset ``name`` (empty for None); KeyError names the known presets."""
    if name is None:
        return {}
    try:
        return dict(PRESETS[name])
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None


def apply_preset(cfg: PipelineConfig, name: str | None) -> PipelineConfig:
    """``cfg`` with preset ``name`` applied over it (every preset key replaced)."""
    return with_overrides(cfg, preset_overrides(name)) if name else cfg
