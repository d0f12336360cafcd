"""Typed pipeline settings, loaded once from ``pipeline.toml`` and passed down.

Every setting the pipeline has lives in one of the section models below; the
defaults here are the defaults documented in ``pipeline.toml``.  Unknown keys,
wrong types and out-of-range values raise :class:`ConfigError`, which the CLI
turns into one line on stderr and exit status 2.
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "pipeline.toml"


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type, or out of range."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TextConfig(_Section):
    model: str = "builtin:minilm-l6"
    max_tokens: int = Field(128, ge=8, le=512)
    layer: int = Field(-1, ge=-64, le=64)
    batch_size: int = Field(16, ge=1, le=1024)


class AsrConfig(_Section):
    model: str = "builtin:tiny.en"
    language: str = "en"
    compute_type: str = "int8"
    beam_size: int = Field(5, ge=1, le=20)
    vad_filter: bool = False
    sources: list[Literal["sidecar", "labels", "asr"]] = ["sidecar", "labels", "asr"]


class FaceConfig(_Section):
    backend: Literal["mediapipe", "pyfeat"] = "mediapipe"
    min_detection_confidence: float = Field(0.5, ge=0.0, le=1.0)
    max_faces: int = Field(4, ge=1, le=32)


class AudioConfig(_Section):
    hop_ms: float = Field(10.0, gt=0.0, le=100.0)
    win_ms: float = Field(25.0, gt=0.0, le=200.0)
    rate_hz: float = Field(12.5, gt=0.0, le=200.0)
    n_mfcc: int = Field(13, ge=1, le=64)
    f0_min: float = Field(65.0, gt=0.0, le=1000.0)
    f0_max: float = Field(500.0, gt=0.0, le=4000.0)


class ExtractConfig(_Section):
    out: str = "data/cache"
    fps: float = Field(15.0, gt=0.0, le=120.0)
    sample_rate: int = Field(16000, ge=8000, le=48000)
    workers: int = Field(1, ge=1, le=64)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_duration_s: float = Field(600.0, gt=0.0)
    video_exts: list[str] = [".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"]
    text: TextConfig = TextConfig()
    asr: AsrConfig = AsrConfig()
    face: FaceConfig = FaceConfig()
    audio: AudioConfig = AudioConfig()


class AlignConfig(_Section):
    mode: Literal["aligned", "unaligned"] = "unaligned"


class ModelConfig(_Section):
    """DHMD hyper-parameters; field names match :class:`dhmd.DHMDConfig`."""

    task: Literal["regression", "binary", "classification"] = "regression"
    n_classes: int = Field(2, ge=2, le=1000)
    hidden_dim: int = Field(50, ge=4, le=4096)
    num_heads: int = Field(10, ge=1, le=64)
    num_layers: int = Field(4, ge=1, le=24)
    kernel_text: int = Field(5, ge=1, le=15)
    kernel_audio: int = Field(5, ge=1, le=15)
    kernel_video: int = Field(5, ge=1, le=15)
    attn_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    relu_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    res_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    embed_dropout: float = Field(0.25, ge=0.0, lt=1.0)
    out_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    gd_hidden: int = Field(32, ge=1, le=4096)
    dictionary_size: int = Field(512, ge=1, le=65536)
    lambda_dec: float = Field(0.1, ge=0.0)
    lambda_dtl: float = Field(0.05, ge=0.0)
    lambda_dic: float = Field(0.1, ge=0.0)
    gamma: float = Field(0.1, ge=0.0)
    alpha: float = Field(0.1, ge=0.0)
    triplet_classes: Literal["sign", "round"] = "sign"
    gd_prior: bool = False
    use_fd: bool = True
    use_ca: bool = True
    use_gd: bool = True
    use_dm: bool = True
    finetune_bert: bool = False
    bert_model: str = "bert-base-uncased"


class TrainConfig(_Section):
    data: str = "data/cache"
    out: str = ""
    batch_size: int = Field(16, ge=1, le=4096)
    epochs: int = Field(30, ge=1, le=10000)
    lr: float = Field(1e-4, gt=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    grad_clip: float = Field(0.6, ge=0.0)
    grad_accum: int = Field(1, ge=1, le=1024)
    lr_factor: float = Field(0.5, gt=0.0, lt=1.0)
    lr_patience: int = Field(5, ge=0, le=1000)
    early_stop_patience: int = Field(10, ge=0, le=10000)
    val_metric: Literal["MAE", "Corr", "Has0_acc_2", "Non0_acc_2", "Has0_F1", "Non0_F1",
                        "Mult_acc_5", "Mult_acc_7", "Acc", "F1", "loss"] = "MAE"
    seed: int = Field(1, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    split: list[float] = Field([0.7, 0.15, 0.15], min_length=3, max_length=3)
    split_seed: int = Field(0, ge=0)
    num_workers: int = Field(0, ge=0, le=64)


class PredictConfig(_Section):
    checkpoint: str = ""
    top_atoms: int = Field(5, ge=1, le=512)


class DemoConfig(_Section):
    workdir: str = "data/demo"
    sentences: int = Field(0, ge=0)
    epochs: int = Field(12, ge=1, le=1000)
    runs_dir: str = "data/runs/demo"
    voices_per_sentence: int = Field(2, ge=1, le=6)
    fps: float = Field(15.0, gt=0.0, le=60.0)
    workers: int = Field(2, ge=1, le=64)
    hidden_dim: int = Field(32, ge=4, le=4096)
    num_heads: int = Field(4, ge=1, le=64)
    num_layers: int = Field(2, ge=1, le=24)
    dictionary_size: int = Field(64, ge=1, le=65536)
    batch_size: int = Field(16, ge=1, le=4096)
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    val_metric: str = "MAE"


class PipelineConfig(_Section):
    extract: ExtractConfig = ExtractConfig()
    align: AlignConfig = AlignConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    predict: PredictConfig = PredictConfig()
    demo: DemoConfig = DemoConfig()


def _describe(err: ValidationError) -> str:
    """One readable line per problem: the key, the value given and what is allowed."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown key '{key}' (value {e['input']!r}); check the spelling against pipeline.toml")
        else:
            lines.append(f"'{key}' = {e['input']!r}: {e['msg']}")
    return "; ".join(lines)


def _parse_value(text: str) -> Any:
    """Read a --set value as a TOML value, falling back to a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(raw: dict, assignment: str) -> None:
    """Apply one ``section.key=value`` override to a raw settings dict in place."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected section.key=value")
    dotted, value = assignment.split("=", 1)
    parts = [p.strip() for p in dotted.strip().split(".")]
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"--set {assignment!r}: the key must name a section, e.g. train.epochs=8")
    node = raw
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {assignment!r}: '{p}' is a setting, not a section")
        node = child
    node[parts[-1]] = _parse_value(value.strip())


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                preset: dict[str, Any] | None = None) -> PipelineConfig:
    """Read ``path`` (default: the repository's pipeline.toml), apply ``preset`` (dotted keys ->
    values, e.g. ``pipeline.presets.PRESETS["mosi"]``), then the ``--set`` overrides, which win; validate."""
    path = Path(path) if path else DEFAULT_CONFIG
    raw: dict = {}
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
    elif path != DEFAULT_CONFIG:
        raise ConfigError(f"{path}: config file not found")
    for dotted, value in (preset or {}).items():
        node = raw
        *sections, last = dotted.split(".")
        for sec in sections:
            node = node.setdefault(sec, {})
        node[last] = value
    for a in overrides:
        apply_override(raw, a)
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{path}: {_describe(e)}") from None


def with_overrides(cfg: PipelineConfig, overrides: dict[str, Any]) -> PipelineConfig:
    """A copy of ``cfg`` with dotted-key overrides applied and validated (for presets)."""
    raw = cfg.model_dump()
    for k, v in overrides.items():
        node = raw
        *sections, last = k.split(".")
        for s in sections:
            node = node[s]
        node[last] = v
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_describe(e)) from None
