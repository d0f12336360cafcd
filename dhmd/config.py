"""DHMDConfig: every hyper-parameter of the DHMD model, as a plain dataclass.

The field names and defaults mirror ``pipeline.config.ModelConfig`` one for one (a test checks it), plus
the three input feature sizes, so the pipeline builds the model with
``DHMDConfig(text_dim=..., audio_dim=..., video_dim=..., **cfg.model.model_dump())``.  The defaults are
the paper's (Table 1, column [1] CMU-MOSI; Sec. 4 implementation details).  It is a plain dataclass of
numbers, strings and booleans so that a checkpoint can store ``to_dict()`` as JSON-able data and load it
back with ``torch.load(weights_only=True)``.  This module imports nothing from ``pipeline``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

TASKS = ("regression", "binary", "classification")
TRIPLET_CLASSES = ("sign", "round", "equal")
AUX_LOSSES = ("mean", "sum")
# what a checkpoint written before a field existed was trained with (from_dict fills these in, so an
# old checkpoint rebuilds the model it was trained as, whatever the new defaults are)
LEGACY_FIELDS: dict[str, Any] = {"text_dropout": 0.0, "attn_dropout_audio": -1.0, "attn_dropout_video": -1.0,
                                 "aux_loss": "mean", "memory_layers": -1, "dict_temperature": 1.0,
                                 "dict_learn_temperature": False, "dict_scale_sqrt_d": True}


@dataclass
class DHMDConfig:
    """Hyper-parameters of :class:`dhmd.DHMD` (see the field comments)."""

    # input feature sizes (per-frame dimension of each modality)
    text_dim: int
    audio_dim: int
    video_dim: int
    # task: "regression" (score in [-3, 3], L1 loss, prediction (B,)), "binary" (2 logits, CE) or
    # "classification" (n_classes logits, CE)
    task: str = "regression"
    n_classes: int = 2
    # common feature dimension C, cross-modal attention heads and layers (Table 1)
    hidden_dim: int = 50
    num_heads: int = 10
    num_layers: int = 4
    # temporal Conv1d kernel per modality (Table 1: 5/5/5 for CMU-MOSI)
    kernel_text: int = 5
    kernel_audio: int = 5
    kernel_video: int = 5
    # dropouts (MulT names): attention weights, FFN hidden, residual branches, transformer input, head
    attn_dropout: float = 0.1
    relu_dropout: float = 0.1
    res_dropout: float = 0.1
    embed_dropout: float = 0.25
    out_dropout: float = 0.1
    # dropout on the text features as they enter the model (after BERT when it is fine-tuned; DMD's
    # text_dropout) and the attention dropout of the cross-modal and memory transformers whose target is
    # audio / video (MulT's attn_dropout_a / _v); -1 = the same as attn_dropout (which then is text's)
    text_dropout: float = 0.0
    attn_dropout_audio: float = -1.0
    attn_dropout_video: float = -1.0
    # GD-Unit node-embedding size (Sec. 4: 32) and dictionary elements K (Table 1: 512)
    gd_hidden: int = 32
    dictionary_size: int = 512
    # loss weights of Eq. 14 (lambda1..3), Eq. 6 (gamma) and the triplet margin alpha (Eq. 4, 13)
    lambda_dec: float = 0.1
    lambda_dtl: float = 0.05
    lambda_dic: float = 0.1
    gamma: float = 0.1
    alpha: float = 0.1
    # classes used to build triplets for regression labels: "sign" (y >= 0 vs y < 0), "round"
    # (round(clip(y, -3, 3)), the 7 emotion classes of Eq. 4/13) or "equal" (DMD's rule: the same class
    # only when the scores are equal); classification tasks use the class label itself
    triplet_classes: str = "sign"
    # the six auxiliary unimodal task losses: "mean" (weight 1/6 each) or "sum" (DMD)
    aux_loss: str = "mean"
    # layers of the self-attention memory transformer: 0 = max(3, num_layers) (MulT, DMD);
    # -1 = min(3, num_layers) (checkpoints from before this setting)
    memory_layers: int = 0
    # dictionary scores A_m are divided by a temperature before the softmax of Eq. 11: 1.0 and fixed is
    # Eq. 11 as written; dict_learn_temperature learns log(temperature) from that start;
    # dict_scale_sqrt_d also divides by sqrt(d) (as attention does; checkpoints before this setting)
    dict_temperature: float = 1.0
    dict_learn_temperature: bool = False
    dict_scale_sqrt_d: bool = False
    # add DMD's fixed edge prior (language teaches audio and video) to both GD-Units
    gd_prior: bool = False
    # Table 6 ablation switches: feature decoupling, cross-modal attention, graph distillation,
    # dictionary matching
    use_fd: bool = True
    use_ca: bool = True
    use_gd: bool = True
    use_dm: bool = True
    # fine-tune a BERT inside the model; then `text` is (B, 3, T) int64 ids / mask / segment ids
    finetune_bert: bool = False
    bert_model: str = "builtin:minilm-l6"

    def __post_init__(self) -> None:
        self.validate()

    @property
    def memory_depth(self) -> int:
        """Layers of the memory transformer that memory_layers asks for."""
        if self.memory_layers == 0:
            return max(3, self.num_layers)
        if self.memory_layers == -1:
            return min(3, self.num_layers)
        return self.memory_layers

    @property
    def attn_dropouts(self) -> tuple[float, float, float]:
        """Attention dropout per target modality (text, audio, video)."""
        return (self.attn_dropout,
                self.attn_dropout if self.attn_dropout_audio == -1.0 else self.attn_dropout_audio,
                self.attn_dropout if self.attn_dropout_video == -1.0 else self.attn_dropout_video)

    @property
    def out_dim(self) -> int:
        """Width of every prediction head: 1 for regression, else the number of classes."""
        return 1 if self.task == "regression" else self.n_classes

    def validate(self) -> None:
        """Raise ValueError naming the field when a value cannot build a working model."""
        problems = []
        for name in ("text_dim", "audio_dim", "video_dim", "hidden_dim", "num_heads", "num_layers",
                     "kernel_text", "kernel_audio", "kernel_video", "gd_hidden", "dictionary_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name}={value!r} must be a positive integer")
        if self.task not in TASKS:
            problems.append(f"task={self.task!r} must be one of {TASKS}")
        if self.triplet_classes not in TRIPLET_CLASSES:
            problems.append(f"triplet_classes={self.triplet_classes!r} must be one of {TRIPLET_CLASSES}")
        if not isinstance(self.n_classes, int) or self.n_classes < 2:
            problems.append(f"n_classes={self.n_classes!r} must be an integer >= 2")
        elif self.task == "binary" and self.n_classes != 2:
            problems.append(f"task='binary' needs n_classes=2, got {self.n_classes}")
        if (isinstance(self.hidden_dim, int) and isinstance(self.num_heads, int) and self.num_heads > 0
                and self.hidden_dim % self.num_heads):
            problems.append(f"hidden_dim={self.hidden_dim} must be divisible by num_heads={self.num_heads}")
        for name in ("attn_dropout", "relu_dropout", "res_dropout", "embed_dropout", "out_dropout",
                     "text_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                problems.append(f"{name}={value!r} must be in [0, 1)")
        for name in ("attn_dropout_audio", "attn_dropout_video"):
            value = getattr(self, name)
            if value != -1.0 and not 0.0 <= value < 1.0:
                problems.append(f"{name}={value!r} must be -1 (same as attn_dropout) or in [0, 1)")
        if self.aux_loss not in AUX_LOSSES:
            problems.append(f"aux_loss={self.aux_loss!r} must be one of {AUX_LOSSES}")
        if isinstance(self.memory_layers, bool) or not isinstance(self.memory_layers, int) \
                or self.memory_layers < -1:
            problems.append(f"memory_layers={self.memory_layers!r} must be -1, 0 or a positive integer")
        if not self.dict_temperature > 0:
            problems.append(f"dict_temperature={self.dict_temperature!r} must be > 0")
        for name in ("lambda_dec", "lambda_dtl", "lambda_dic", "gamma", "alpha"):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)!r} must be >= 0")
        if problems:
            raise ValueError("invalid DHMDConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field (what a checkpoint stores)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DHMDConfig":
        """Rebuild from :meth:`to_dict` output; unknown keys are an error (a different model version).
        Fields the data lacks (a checkpoint older than them) take LEGACY_FIELDS, the behaviour of the
        model it was trained as, not today's defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown DHMDConfig keys {unknown}; known keys are {sorted(known)}")
        return cls(**{**{k: v for k, v in LEGACY_FIELDS.items() if k not in data}, **data})
