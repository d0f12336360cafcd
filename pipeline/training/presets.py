"""Per-dataset recipes for ``--preset``: the paper's settings, and the public DMD code's where the paper is silent.

Every value is listed with its source in :data:`RECIPES` (``{preset: {dotted key: (value, source)}}``);
:data:`PRESETS` is the same without the sources.  The README's "Presets" table is this table.

Sources:
- "Table 1": the paper's hyper-parameter table, columns [1]-[4] = CMU-MOSI, CMU-MOSEI, UR-FUNNY, MUStARD.
  Its kernel row lists the temporal convolutions in the order language, VISUAL, ACOUSTIC (C_L, C_V, C_A):
  "5,3,5" for MUStARD means text 5, video 3, audio 5.
- "Sec. 4": batch 16, 30 epochs, lambda1..3 = 0.1 / 0.05 / 0.1, gamma 0.1, margin alpha 0.1, GD-Unit
  hidden 32, K = 512.  UR-FUNNY and MUStARD are binary tasks (humor, sarcasm).
- "Eq. N": the paper's equation.
- "DMD config.json": ``config/config.json`` of the public DMD code (mdswyz/DMD), ``dmd.datasetParams.mosi``
  / ``.mosei`` / ``commonParams``; "DMD code": its model and training loop (MulT's transformer for the
  memory depth).  DHMD compares against numbers produced with that recipe.
Where a value stays different from DMD's, the source says "ours" and why.

The CLI applies a preset between the settings file and ``--set``: ``--set`` values always win
(:func:`pipeline.config.load_config`'s ``preset`` argument).  Code that already holds a config uses
:func:`apply_preset`.
"""
from __future__ import annotations

from typing import Any

from pipeline.config import PipelineConfig, with_overrides

Recipe = dict[str, tuple[Any, str]]

_PAPER: Recipe = {
    "model.lambda_dec": (0.1, "Sec. 4 (lambda1)"), "model.lambda_dtl": (0.05, "Sec. 4 (lambda2)"),
    "model.lambda_dic": (0.1, "Sec. 4 (lambda3)"), "model.gamma": (0.1, "Sec. 4"),
    "model.alpha": (0.1, "Sec. 4 (margin)"), "model.gd_hidden": (32, "Sec. 4"),
    "model.dictionary_size": (512, "Table 1 / Sec. 4"),
    "train.batch_size": (16, "Sec. 4"), "train.epochs": (30, "Sec. 4"),
    # Eq. 11 has a plain softmax over the scores: no temperature, no 1/sqrt(d)
    "model.dict_temperature": (1.0, "Eq. 11 (softmax of the raw scores)"),
    "model.dict_learn_temperature": (False, "Eq. 11"),
    "model.dict_scale_sqrt_d": (False, "Eq. 11"),
    "train.modality_dropout": (0.0, "Sec. 4 (no modality dropout)"),
    "train.clip_baseline": ([], "Sec. 4 (features as extracted, no per-clip baseline)"),
    "train.clip_baseline_features": ({}, "Sec. 4 (features as extracted, no per-clip baseline)"),
    "train.modality_swap": (0.0, "Sec. 4 (no modality swap)"),
    "train.ema_decay": (0.0, "Sec. 4 (the weights as trained, no average)"),
}

# DMD's training recipe where the paper says nothing (mosi, mosei)
_DMD_COMMON: Recipe = {
    "model.aux_loss": ("sum", "DMD code: the unimodal task losses are summed"),
    "model.memory_layers": (0, "DMD code / MulT: memory transformer depth max(3, num_layers)"),
    "train.grad_accum": (10, "DMD config.json commonParams.update_epochs = 10"),
    "train.grad_clip": (0.6, "DMD config.json grad_clip"),
    "train.grad_clip_mode": ("value", "DMD code: clip_grad_value_"),
    "train.lr": (1e-4, "DMD config.json learning_rate"),
    "train.lr_factor": (0.5, "DMD code: ReduceLROnPlateau factor 0.5"),
    "train.lr_patience": (5, "DMD config.json patience"),
    "train.early_stop_patience": (10, "DMD config.json commonParams.early_stop"),
}

# Eq. 4 and 13 build triplets from emotion categories; DMD counts two samples as one class only when
# their scores are equal.  MOSI/MOSEI scores are means of several annotators, so "equal" makes nearly
# every other sample a negative, also one 0.2 apart; the 7 rounded classes are the categories the
# paper's Fig. 7 colours by.
_TRIPLETS_REGRESSION = ("round", "ours: Eq. 4/13 emotion categories = the 7 rounded scores (Fig. 7); "
                        "DMD's equal-score rule makes near-equal scores negatives")


def _table1(text: int, video: int, audio: int, hidden: int, heads: int, layers: int) -> Recipe:
    return {"model.kernel_text": (text, "Table 1 (C_L)"), "model.kernel_video": (video, "Table 1 (C_V)"),
            "model.kernel_audio": (audio, "Table 1 (C_A)"), "model.hidden_dim": (hidden, "Table 1"),
            "model.num_heads": (heads, "Table 1"), "model.num_layers": (layers, "Table 1")}


def _dmd_dataset(name: str, *, text_dropout: float, attn: float, attn_a: float, attn_v: float,
                 relu: float, embed: float, res: float, out: float, weight_decay: float) -> Recipe:
    src = f"DMD config.json {name}"
    return {
        "model.finetune_bert": (True, "DMD config.json use_bert / use_finetune (BERT fine-tuned from text_bert)"),
        "model.text_dropout": (text_dropout, f"{src}.text_dropout"),
        "model.attn_dropout": (attn, f"{src}.attn_dropout (text target)"),
        "model.attn_dropout_audio": (attn_a, f"{src}.attn_dropout_a"),
        "model.attn_dropout_video": (attn_v, f"{src}.attn_dropout_v"),
        "model.relu_dropout": (relu, f"{src}.relu_dropout"),
        "model.embed_dropout": (embed, f"{src}.embed_dropout"),
        "model.res_dropout": (res, f"{src}.res_dropout"),
        "model.out_dropout": (out, f"{src}.output_dropout"),
        "train.weight_decay": (weight_decay, f"{src}.weight_decay"),
        "train.bert_lr": (0.0, "DMD code: BERT trained with the model's learning rate (0 = train.lr)"),
    }


def _regression() -> Recipe:
    return {"model.task": ("regression", "Sec. 4 (sentiment score in [-3, 3])"),
            "model.n_classes": (2, "unused by regression"),
            "model.triplet_classes": _TRIPLETS_REGRESSION,
            "train.val_metric": ("MAE", "ours: DMD selects on the valid loss, which for the L1 task is MAE "
                                        "plus the auxiliary terms")}


def _binary(metric: str) -> Recipe:
    return {"model.task": ("binary", "Sec. 4 (humor / sarcasm detection)"),
            "model.n_classes": (2, "binary task"),
            "train.val_metric": (metric, "Sec. 4 (reported metric)")}


RECIPES: dict[str, Recipe] = {
    "mosi": {**_PAPER, **_DMD_COMMON, **_table1(5, 5, 5, 50, 10, 4), **_regression(),
             **_dmd_dataset("mosi", text_dropout=0.5, attn=0.3, attn_a=0.2, attn_v=0.0, relu=0.0, embed=0.2,
                            res=0.0, out=0.5, weight_decay=0.005)},
    # Table 1 gives MOSEI kernels 5,3,3 (L, V, A); DMD's config has 5 / 3 / 1: the paper wins
    "mosei": {**_PAPER, **_DMD_COMMON, **_table1(5, 3, 3, 30, 6, 4), **_regression(),
              **_dmd_dataset("mosei", text_dropout=0.3, attn=0.4, attn_a=0.0, attn_v=0.0, relu=0.0, embed=0.0,
                             res=0.0, out=0.5, weight_decay=0.001)},
    # DMD has no UR-FUNNY / MUStARD recipe (and MMSA-style pickles of them need not carry text_bert):
    # the paper's values only, the rest the settings file's
    "urfunny": {**_PAPER, **_table1(5, 5, 5, 50, 10, 4), **_binary("Acc")},
    "mustard": {**_PAPER, **_table1(5, 3, 5, 32, 8, 2), **_binary("F1")},
}

PRESETS: dict[str, dict[str, Any]] = {name: {k: v for k, (v, _) in recipe.items()}
                                      for name, recipe in RECIPES.items()}


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


def recipe_table() -> str:
    """Markdown table of every preset value with its source (the README's "Presets" section)."""
    keys = list(dict.fromkeys(k for r in RECIPES.values() for k in r))
    lines = ["| setting | " + " | ".join(RECIPES) + " | source |", "|---" * (len(RECIPES) + 2) + "|"]
    for key in keys:
        values = [RECIPES[n][key][0] if key in RECIPES[n] else "-" for n in RECIPES]
        sources = list(dict.fromkeys(RECIPES[n][key][1] for n in RECIPES if key in RECIPES[n]))
        lines.append(f"| `{key}` | " + " | ".join(f"`{v}`" if v != "-" else v for v in values)
                     + " | " + "; ".join(sources) + " |")
    return "\n".join(lines)
