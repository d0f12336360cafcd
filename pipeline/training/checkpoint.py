"""Checkpoints: what a trained run stores, how it is written and read back, and spec checks.

A checkpoint is a dict of plain data and tensors, loadable with ``torch.load(weights_only=True)``:

    format          int, CHECKPOINT_FORMAT
    model_state     the DHMD state_dict (in best.pt, with train.ema_decay, the weights' moving average)
    model_config    DHMDConfig.to_dict() (input sizes included)
    pipeline_config the run's resolved PipelineConfig.model_dump() (its .extract = the settings the
                    cache was extracted with, its .align = the alignment mode)
    spec            feature spec of the training data (pipeline.training.dataset.feature_spec / mmsa_spec)
    norm            Normalizer.state(): {"audio"|"video": {"mean": [...], "std": [...]}, plus
                    "clip_baseline": "median" and "clip_baseline_columns": [...] where they apply}
    label_scheme    pipeline.training.dataset.label_scheme(task, n_classes)
    epoch           epochs completed (1-based) when the weights were taken
    val             {"metric": name, "value": float | None} of those weights
    splits          {"train"|"valid"|"test": {"n": samples, "sha256": hash of their ids in order}}
                    (absent in checkpoints written before it; a resume compares it with the data)
  and in last.pt only (resume): optimizer, scheduler, rng, progress (best value, bad epochs, history),
  and with train.ema_decay weight_average ({"decay", "updates", "weights"}; model_state holds the live
  weights there).

Files are written through a temporary file and a rename, so a kill never leaves half a checkpoint.
"""
from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.files import atomic_write_bytes
from pipeline.errors import UserError, one_line

if TYPE_CHECKING:  # pragma: no cover
    from dhmd import DHMD
    from pipeline.config import PipelineConfig
    from pipeline.training.dataset import Normalizer

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
REQUIRED_KEYS = ("model_state", "model_config", "pipeline_config", "spec", "norm", "label_scheme")


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """``torch.save`` ``payload`` to ``path`` atomically."""
    import torch

    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **payload}, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_checkpoint(path: Path, map_location: str = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; UserError (exit 2) naming the file and the cause
    in one line when it is missing or cannot be read as a checkpoint (whatever torch's loader raises:
    a truncated zip, a text file, a pickle of other objects, ...)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found", exit_code=2)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any loader failure means "not a checkpoint we can read"
        raise UserError(f"{path}: not a readable dhmd-pipeline checkpoint ({one_line(e)})", exit_code=2) from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        have = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(f"{path}: not a dhmd-pipeline checkpoint (needs {', '.join(REQUIRED_KEYS)}; has {have})",
                        exit_code=2)
    return ckpt


def config_of(ckpt: dict[str, Any], path: Path) -> "PipelineConfig":
    """The run's PipelineConfig stored in a checkpoint."""
    from pydantic import ValidationError

    from pipeline.config import PipelineConfig

    try:
        return PipelineConfig.model_validate(ckpt["pipeline_config"])
    except ValidationError as e:
        raise UserError(f"{path}: the stored settings do not fit this version of dhmd-pipeline "
                        f"({e.error_count()} problems, e.g. {e.errors()[0]['loc']})", exit_code=2) from None


def bert_path(finetune_bert: bool, bert_model: str) -> str | None:
    """Where to load model.bert_model from: the package folder of a ``builtin:`` name (offline), a
    local folder, or the hub name itself; None when BERT is not fine-tuned.  ModelLoadError when a
    builtin package is missing."""
    if not finetune_bert:
        return None
    from extractors.text import resolve_text_model

    return resolve_text_model(bert_model)[0]


def build_model(ckpt: dict[str, Any], path: Path, device: str = "cpu") -> "DHMD":
    """The DHMD of a checkpoint with its weights, on ``device``, in eval mode."""
    from dhmd import DHMD, DHMDConfig
    from extractors.errors import ModelLoadError

    try:
        mcfg = DHMDConfig.from_dict(dict(ckpt["model_config"]))
        model = DHMD(mcfg, pretrained_bert=False, bert_path=bert_path(mcfg.finetune_bert, mcfg.bert_model))
        model.load_state_dict(ckpt["model_state"])
    except (ValueError, RuntimeError, KeyError, OSError, ModelLoadError) as e:
        raise UserError(f"{path}: the model in the checkpoint cannot be rebuilt ({str(e).splitlines()[0]})",
                        exit_code=2) from None
    return model.to(device).eval()


def _spec_text(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True, default=str)


def check_spec(trained: dict[str, Any], data: dict[str, Any], checkpoint: Path, data_path: Path) -> None:
    """Refuse (UserError, exit 2) data whose feature spec differs from the checkpoint's; the message
    names the differing keys and both full specs."""
    if trained == data:
        return
    from pipeline.training.dataset import spec_difference_text

    raise UserError(f"{checkpoint} was trained on other features than {data_path} has "
                    f"({spec_difference_text(trained, data)}): checkpoint spec {_spec_text(trained)}; "
                    f"data spec {_spec_text(data)}", exit_code=2)


@dataclass
class InferenceBundle:
    """Everything needed to run a trained model on new features."""

    model: "DHMD"
    config: "PipelineConfig"
    spec: dict[str, Any]
    normalizer: "Normalizer"
    label_scheme: dict[str, Any]
    path: Path
    epoch: int


def load_for_inference(path: Path, device: str = "cpu") -> InferenceBundle:
    """Load a best.pt / last.pt for prediction or evaluation (model in eval mode on ``device``)."""
    from pipeline.training.dataset import Normalizer

    path = Path(path)
    ckpt = load_checkpoint(path)
    return InferenceBundle(model=build_model(ckpt, path, device), config=config_of(ckpt, path),
                           spec=dict(ckpt["spec"]), normalizer=Normalizer.from_state(ckpt["norm"]),
                           label_scheme=dict(ckpt["label_scheme"]), path=path, epoch=int(ckpt.get("epoch", 0)))
