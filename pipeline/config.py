"""Typed pipeline settings, loaded once from ``pipeline.toml`` and passed down.

Every setting the pipeline has lives in one of the section models below; the
defaults here are the defaults documented in ``pipeline.toml``.  Unknown keys,
wrong types, out-of-range values and inconsistent pairs of settings raise
:class:`ConfigError`, which the CLI turns into one line on stderr and exit status 2.

Types are strict: nothing is converted, so ``epochs = "8"``, ``amp = "yes"`` or ``lr = true``
are refused; the one allowance is an integer where a number (float) is expected (``lr = 1``).
A ``--set`` value is read as a TOML value (``8``, ``1e-3``, ``false``, ``"text"``, ``[0.8, 0.1, 0.1]``);
text that is not valid TOML, or any value given to a text setting, is taken as the string typed,
so ``--set extract.text.model=bert-base-uncased`` needs no quotes.

Settings checked together (at load, exit status 2 naming the keys): ``extract.audio.f0_min <
f0_max``; ``model.hidden_dim`` and ``demo.hidden_dim`` divisible by their ``num_heads``;
``train.split`` three fractions in [0, 1] summing to 1.  Also checked: ``demo.sentences`` is 0 (all)
or at least 4 (as ``demo --sentences``), ``demo.val_metric`` is a regression metric.  An unknown
key's message gives the closest known key, or lists the section's keys.  A problem caused by a
``--set`` value is reported as that ``--set section.key=value``, any other as the settings file's.
"""
from __future__ import annotations

import difflib
import json
import tomllib
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "pipeline.toml"

SPLIT_TOLERANCE = 1e-6        # train.split must sum to 1 within this
MIN_DEMO_SENTENCES = 4        # the smallest shrunk demo (demo --sentences, demo.sentences)

ValMetric = Literal["MAE", "Corr", "Has0_acc_2", "Non0_acc_2", "Has0_F1", "Non0_F1",
                    "Mult_acc_5", "Mult_acc_7", "Acc", "F1", "loss"]
# the demo always trains a regression: its validation metric is one of the regression metrics
RegressionValMetric = Literal["MAE", "Corr", "Has0_acc_2", "Non0_acc_2", "Has0_F1", "Non0_F1",
                              "Mult_acc_5", "Mult_acc_7", "loss"]


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type, out of range, or inconsistent with another."""


def _cross(rule: str, **values: Any) -> PydanticCustomError:
    """An error about several settings of one section.  ``rule`` names them as ``<field>``;
    :func:`_describe` writes each as ``section.field = value`` and the section prefix in front."""
    return PydanticCustomError("cross_field", "settings do not fit together",
                               {"rule": rule, "values": dict(values)})


def _check_heads(hidden_dim: int, num_heads: int) -> None:
    if hidden_dim % num_heads:
        raise _cross("<hidden_dim> must be divisible by <num_heads> (every attention head gets "
                     "hidden_dim / num_heads dimensions)", hidden_dim=hidden_dim, num_heads=num_heads)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


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
    align_window: Literal["clip", "whisper"] = "clip"
    sources: list[Literal["sidecar", "labels", "asr"]] = ["sidecar", "labels", "asr"]
    ensemble: list[str] = []

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if v.startswith("moonshine:"):
            raise PydanticCustomError("asr_listener", "a Moonshine model gives no word times and cannot be the first "
                                      "recogniser: name it in the ensemble after a Whisper model "
                                      "(extract.asr.ensemble, or demo.asr_ensemble for the demo)")
        return v

    @property
    def models(self) -> list[str]:
        """Every recogniser that hears a clip: ``model``, then the ``ensemble``."""
        return [self.model, *self.ensemble]


class FaceConfig(_Section):
    backend: Literal["mediapipe", "pyfeat"] = "mediapipe"
    min_detection_confidence: float = Field(0.5, ge=0.0, le=1.0)
    max_faces: int = Field(4, ge=1, le=32)
    threads: int = Field(2, ge=1, le=64)


class AudioConfig(_Section):
    hop_ms: float = Field(10.0, gt=0.0, le=100.0)
    win_ms: float = Field(25.0, gt=0.0, le=200.0)
    rate_hz: float = Field(12.5, gt=0.0, le=200.0)
    n_mfcc: int = Field(13, ge=1, le=64)
    f0_min: float = Field(65.0, gt=0.0, le=1000.0)
    f0_max: float = Field(500.0, gt=0.0, le=4000.0)

    @model_validator(mode="after")
    def _f0_range(self) -> "AudioConfig":
        if not self.f0_min < self.f0_max:
            raise _cross("<f0_min> must be less than <f0_max> (the pitch tracking range)",
                         f0_min=self.f0_min, f0_max=self.f0_max)
        return self


class RayConfig(_Section):
    """``extract.ray``: where and how the Ray engine runs (``extract.engine = "ray"``)."""
    address: str = ""
    workers: int = Field(0, ge=0, le=4096)
    num_cpus: float = Field(1.0, gt=0.0, le=256.0)
    num_gpus: float = Field(0.0, ge=0.0, le=16.0)

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        v = v.strip()
        if v not in ("", "auto", "local") and not v.startswith("ray://") and ":" not in v:
            raise PydanticCustomError("ray_address", "must be empty (start a local Ray instance), 'auto', "
                                      "'ray://host:port' or 'host:port'")
        return v


class ExtractConfig(_Section):
    out: str = "data/cache"
    fps: float = Field(15.0, gt=0.0, le=120.0)
    sample_rate: int = Field(16000, ge=8000, le=48000)
    workers: int = Field(1, ge=1, le=64)
    engine: Literal["local", "ray"] = "local"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_duration_s: float = Field(600.0, gt=0.0)
    video_exts: list[str] = [".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"]
    text: TextConfig = TextConfig()
    asr: AsrConfig = AsrConfig()
    face: FaceConfig = FaceConfig()
    audio: AudioConfig = AudioConfig()
    ray: RayConfig = RayConfig()


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
    triplet_classes: Literal["sign", "round", "equal"] = "sign"
    gd_prior: bool = False
    use_fd: bool = True
    use_ca: bool = True
    use_gd: bool = True
    use_dm: bool = True
    finetune_bert: bool = False
    bert_model: str = "builtin:minilm-l6"
    # issue 13: the recipe settings (dhmd.DHMDConfig documents each)
    text_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    attn_dropout_audio: float = Field(-1.0, ge=-1.0, lt=1.0)
    attn_dropout_video: float = Field(-1.0, ge=-1.0, lt=1.0)
    aux_loss: Literal["mean", "sum"] = "mean"
    memory_layers: int = Field(0, ge=-1, le=24)
    dict_temperature: float = Field(1.0, gt=0.0)
    dict_learn_temperature: bool = False
    dict_scale_sqrt_d: bool = False

    @model_validator(mode="after")
    def _heads(self) -> "ModelConfig":
        _check_heads(self.hidden_dim, self.num_heads)
        return self


class TrainConfig(_Section):
    data: str = "data/cache"
    out: str = ""
    batch_size: int = Field(16, ge=1, le=4096)
    epochs: int = Field(30, ge=1, le=10000)
    lr: float = Field(1e-4, gt=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    grad_clip: float = Field(0.6, ge=0.0)
    grad_clip_mode: Literal["norm", "value"] = "norm"
    bert_lr: float = Field(0.0, ge=0.0, le=1.0)
    grad_accum: int = Field(1, ge=1, le=1024)
    lr_factor: float = Field(0.5, gt=0.0, lt=1.0)
    lr_patience: int = Field(5, ge=0, le=1000)
    early_stop_patience: int = Field(10, ge=0, le=10000)
    val_metric: ValMetric = "MAE"
    seed: int = Field(1, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    split: list[float] = Field([0.7, 0.15, 0.15], min_length=3, max_length=3)
    split_seed: int = Field(0, ge=0)
    num_workers: int = Field(0, ge=0, le=64)
    modality_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    clip_baseline: list[Literal["audio", "video"]] = Field(default_factory=list)
    clip_baseline_features: dict[Literal["audio", "video"], list[str]] = Field(default_factory=dict)
    modality_swap: float = Field(0.0, ge=0.0, le=1.0)
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)

    @field_validator("clip_baseline")
    @classmethod
    def _clip_baseline(cls, value: list[str]) -> list[str]:
        return sorted(set(value), key=value.index)

    @model_validator(mode="after")
    def _clip_baseline_features(self) -> "TrainConfig":
        stray = sorted(set(self.clip_baseline_features) - set(self.clip_baseline))
        if stray:
            raise PydanticCustomError(
                "clip_baseline_features", "names {stray}, which train.clip_baseline does not hold: "
                "the features that take the baseline are chosen only for a modality that takes it",
                {"stray": stray})
        return self

    @field_validator("split")
    @classmethod
    def _split_fractions(cls, value: list[float]) -> list[float]:
        if any(not 0.0 <= f <= 1.0 for f in value) or abs(sum(value) - 1.0) > SPLIT_TOLERANCE:
            raise PydanticCustomError(
                "split_fractions", "expected three fractions (train, valid, test), each in [0, 1], "
                "summing to 1 (they sum to {total})", {"total": round(sum(value), 9)})
        return value


class PredictConfig(_Section):
    checkpoint: str = ""
    top_atoms: int = Field(5, ge=1, le=512)


class DemoConfig(_Section):
    workdir: str = "data/demo"
    sentences: int = Field(0, ge=0)
    epochs: int = Field(12, ge=1, le=1000)
    runs_dir: str = "data/runs/demo"
    voices_per_sentence: int = Field(1, ge=1, le=6)
    train_sentences: bool = True
    text_layer: int = Field(-4, ge=-64, le=64)
    asr_model: str = "builtin:base"
    asr_ensemble: list[str] = Field(default_factory=lambda: ["builtin:tiny.en"])
    fps: float = Field(10.0, gt=0.0, le=60.0)
    workers: int = Field(2, ge=1, le=64)
    hidden_dim: int = Field(32, ge=4, le=4096)
    num_heads: int = Field(4, ge=1, le=64)
    num_layers: int = Field(2, ge=1, le=24)
    dictionary_size: int = Field(64, ge=1, le=65536)
    batch_size: int = Field(16, ge=1, le=4096)
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    val_metric: RegressionValMetric = "MAE"
    modality_dropout: float = Field(0.3, ge=0.0, lt=1.0)
    clip_baseline: list[Literal["audio", "video"]] = Field(default_factory=lambda: ["video"])
    clip_baseline_features: dict[Literal["audio", "video"], list[str]] = Field(default_factory=dict)
    modality_swap: float = Field(0.0, ge=0.0, le=1.0)
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)
    finetune_bert: bool = True
    bert_lr: float = Field(5e-5, ge=0.0, le=1.0)

    @field_validator("sentences")
    @classmethod
    def _sentences(cls, value: int) -> int:
        if 0 < value < MIN_DEMO_SENTENCES:
            raise PydanticCustomError("demo_sentences", "expected 0 (all sentences) or at least {least}",
                                      {"least": MIN_DEMO_SENTENCES})
        return value

    _asr_model = field_validator("asr_model")(AsrConfig._model.__func__)

    @model_validator(mode="after")
    def _heads(self) -> "DemoConfig":
        _check_heads(self.hidden_dim, self.num_heads)
        return self


class ServeConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    token: str = ""
    max_upload_mb: float = Field(100.0, gt=0.0, le=10240.0)
    max_duration_s: float = Field(120.0, gt=0.0, le=86400.0)
    max_concurrent: int = Field(1, ge=1, le=64)
    queue_size: int = Field(4, ge=0, le=1024)
    queue_timeout_s: float = Field(300.0, gt=0.0, le=86400.0)


class PipelineConfig(_Section):
    extract: ExtractConfig = ExtractConfig()
    align: AlignConfig = AlignConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    predict: PredictConfig = PredictConfig()
    demo: DemoConfig = DemoConfig()
    serve: ServeConfig = ServeConfig()


# ------------------------------------------------------------------------------- messages

_TOML_TYPE = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
              dict: "a table"}


def _toml(value: Any) -> str:
    """A value as it would be written in TOML (what the user typed)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _kind(value: Any) -> str:
    return next((name for t, name in _TOML_TYPE.items() if type(value) is t), type(value).__name__)


def _expected(annotation: Any) -> str:
    """What a field of this type accepts, in words (for wrong-type messages)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(_toml(a) for a in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return f"a list of {_expected(item).removeprefix('a ').removeprefix('an ')}s"
    return {bool: "true or false", int: "an integer", float: "a number (integer or decimal)",
            str: "a string in quotes"}.get(annotation, str(annotation))


def _section_model(parts: list[str]) -> type[BaseModel] | None:
    """The section model at dotted ``parts`` (e.g. ["extract", "audio"]), None if there is none."""
    model: type[BaseModel] = PipelineConfig
    for part in parts:
        field = model.model_fields.get(part)
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _field_annotation(parts: list[str]) -> Any:
    """The annotation of the setting at dotted ``parts``, None if there is no such setting."""
    model = _section_model(parts[:-1])
    field = model.model_fields.get(parts[-1]) if model else None
    return field.annotation if field else None


def _key(loc: tuple) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _problem(e: dict) -> tuple[str, list[str]]:
    """One readable problem (key, value, what is allowed) and the dotted keys it is about."""
    loc = tuple(e["loc"])
    names = [str(p) for p in loc if not isinstance(p, int)]
    key = _key(loc)
    if e["type"] == "extra_forbidden":
        section = _section_model(names[:-1])
        allowed = sorted(section.model_fields) if section else []
        where = f"[{'.'.join(names[:-1])}]" if names[:-1] else "the top level"
        close = difflib.get_close_matches(names[-1], allowed, n=1)
        hint = (f"did you mean '{'.'.join(names[:-1] + close)}'?" if close
                else f"allowed keys in {where}: {', '.join(allowed)}")
        return f"unknown key '{key}' (value {_toml(e['input'])}): {hint}", [".".join(names)]
    if e["type"] == "cross_field":
        rule: str = e["ctx"]["rule"]
        values: dict[str, Any] = e["ctx"]["values"]
        keys = [".".join(names + [f]) for f in values]
        for f, k in zip(values, keys):
            rule = rule.replace(f"<{f}>", f"{k} = {_toml(values[f])}")
        return rule, keys
    annotation = _field_annotation(names) if names else None
    if e["type"].endswith("_type") and annotation is not None and not isinstance(e["input"], BaseModel):
        if any(isinstance(p, int) for p in loc):    # an item of a list: the item's type
            annotation = (typing.get_args(annotation) or (annotation,))[0]
        return (f"'{key}' = {_toml(e['input'])} is {_kind(e['input'])}, expected {_expected(annotation)}",
                [".".join(names)])
    return f"'{key}' = {_toml(e['input'])}: {e['msg']}", [".".join(names)]


def _describe(err: ValidationError, source: str = "", origins: dict[str, str] | None = None) -> str:
    """One readable line per problem, each led by where the bad value came from: the ``--set``
    that gave it (``origins``: dotted key -> that --set text) or ``source`` (the settings file)."""
    origins = origins or {}
    lines = []
    for e in err.errors():
        text, keys = _problem(e)
        blamed = [src for k in keys for o, src in origins.items()
                  if o == k or o.startswith(k + ".") or k.startswith(o + ".")]
        where = ", ".join(dict.fromkeys(blamed)) if blamed else source
        lines.append(f"{where}: {text}" if where else text)
    return "; ".join(lines)


# ------------------------------------------------------------------------------- loading

def _parse_value(text: str, annotation: Any = None) -> Any:
    """Read a --set value as a TOML value; text that is not TOML, or any value for a text setting
    (``annotation`` str), is the string as typed."""
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    if annotation is str and not isinstance(value, str):
        return text
    return value


def apply_override(raw: dict, assignment: str) -> str:
    """Apply one ``section.key=value`` override to a raw settings dict in place; returns the key."""
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
    node[parts[-1]] = _parse_value(value.strip(), _field_annotation(parts))
    return ".".join(parts)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                preset: dict[str, Any] | None = None) -> PipelineConfig:
    """Read ``path`` (default: the repository's pipeline.toml), apply ``preset`` (dotted keys ->
    values, e.g. ``pipeline.training.presets.PRESETS["mosi"]``), then the ``--set`` overrides, which win; validate."""
    path = Path(path) if path else DEFAULT_CONFIG
    raw: dict = {}
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
    elif path != DEFAULT_CONFIG:
        raise ConfigError(f"{path}: config file not found")
    origins: dict[str, str] = {}
    for dotted, value in (preset or {}).items():
        node = raw
        *sections, last = dotted.split(".")
        for sec in sections:
            node = node.setdefault(sec, {})
        node[last] = value
        origins[dotted] = "--preset"
    for a in overrides:
        origins[apply_override(raw, a)] = f"--set {a.strip()}"
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_describe(e, str(path), origins)) from None


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
