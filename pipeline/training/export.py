"""``dhmd-pipeline export --format mmsa``: our extracted features as an MMSA pickle.

Other MMSA-based models (MulT, MISA, DMD, ...) can then train on features made by ``extract``.  The
clips, labels and splits are those training would use (labels.csv split column, else the seeded
by-video split of ``train.split`` / ``train.split_seed``), in the ``[align] mode`` of the settings:

* aligned: ``text``, ``audio``, ``vision`` all at one length (the longest token sequence), no lengths;
  special tokens and words without data (:mod:`pipeline.training.dataset`: no frame within one frame period,
  for vision no face) hold zero rows, which is how training on the pickle tells them apart again;
* unaligned: each modality padded to its own longest sequence, with ``audio_lengths`` and
  ``vision_lengths``; frames without a face stay in place as zero rows (the layout has no face mask).

Padding is zeros at the end; ``text_bert`` holds ids / attention mask / segment ids (padding 0);
features are the raw extracted values (no normalisation), float32.  Ids follow MMSA's
``video$_$clip`` when the labels give a video id, else they are the clip id.  ``regression_labels``
hold the labels as floats; ``annotations`` their sign as Positive / Neutral / Negative.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from pipeline.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config import PipelineConfig
    from pipeline.training.dataset import DataBundle

log = logging.getLogger(__name__)


def mmsa_id(clip_id: str, video_id: str | None) -> str:
    """MMSA's ``video$_$clip`` id of a clip (the clip id alone when there is no video id)."""
    if not video_id:
        return clip_id
    rest = clip_id[len(video_id) + 1:] if clip_id.startswith(f"{video_id}_") else clip_id
    return f"{video_id}$_${rest}"


def _stack(arrays: Sequence[np.ndarray], length: int, dim: int, dtype: Any) -> np.ndarray:
    out = np.zeros((len(arrays), length, dim), dtype=dtype)
    for i, a in enumerate(arrays):
        n = min(a.shape[0], length)
        out[i, :n] = a[:n]
    return out


def _annotation(label: float) -> str:
    return "Positive" if label > 0 else ("Negative" if label < 0 else "Neutral")


def mmsa_layout(bundle: "DataBundle") -> dict[str, dict[str, Any]]:
    """The MMSA dict of splits for the samples of a cache bundle (see the module docstring)."""
    aligned = bundle.align_mode == "aligned"
    all_samples = [s for split in bundle.splits.values() for s in split]
    if not all_samples:
        raise UserError(f"{bundle.path}: nothing to export", exit_code=2)
    dims = bundle.dims
    t_len = max(1, max(s["text"].shape[0] for s in all_samples))
    a_len = t_len if aligned else max(1, max(s["audio"].shape[0] for s in all_samples))
    v_len = t_len if aligned else max(1, max(s["video"].shape[0] for s in all_samples))
    out: dict[str, dict[str, Any]] = {}
    for name, samples in bundle.splits.items():
        split: dict[str, Any] = {
            "id": np.array([mmsa_id(s["id"], s.get("video_id")) for s in samples], dtype=object),
            "raw_text": np.array([s.get("raw_text", "") for s in samples], dtype=object),
            "text": _stack([s["text"] for s in samples], t_len, dims[0], np.float32),
            "text_bert": np.transpose(_stack([s["text_bert"].T for s in samples], t_len, 3, np.int64), (0, 2, 1)),
            "audio": _stack([s["audio"] for s in samples], a_len, dims[1], np.float32),
            "vision": _stack([s["video"] for s in samples], v_len, dims[2], np.float32),
            "regression_labels": np.array([float(s["label"]) for s in samples], dtype=np.float32),
            "annotations": np.array([_annotation(float(s["label"])) for s in samples], dtype=object),
        }
        if not aligned:
            split["audio_lengths"] = np.array([s["audio"].shape[0] for s in samples], dtype=np.int64)
            split["vision_lengths"] = np.array([s["video"].shape[0] for s in samples], dtype=np.int64)
        out[name] = split
    return out


def run_export(cfg: "PipelineConfig", data: Path | None = None, fmt: str = "mmsa", out: Path | None = None) -> int:
    """The ``export`` command: write the cache at ``data`` (default train.data) as ``out``."""
    from pipeline.config import with_overrides
    from pipeline.training.dataset import load_cache
    from pipeline.training.mmsa import write_pickle

    if fmt != "mmsa":
        raise UserError(f"--format {fmt!r}: only 'mmsa' is supported", exit_code=2)
    if out is None:
        raise UserError("export needs --out FILE.pkl", exit_code=2)
    data_path = Path(data) if data else Path(cfg.train.data)
    if not data_path.is_dir():
        raise UserError(f"{data_path}: export reads a cache folder made by 'dhmd-pipeline extract'", exit_code=2)
    # labels are exported as scores whatever task the model section names
    bundle = load_cache(data_path, with_overrides(cfg, {"model.task": "regression"}))
    layout = mmsa_layout(bundle)
    write_pickle(layout, Path(out))
    counts = ", ".join(f"{k} {len(v['id'])}" for k, v in layout.items())
    sys.stdout.write(f"wrote {out}: {bundle.align_mode} MMSA layout, {counts}; text/audio/vision dims "
                     f"{'/'.join(map(str, bundle.dims))}, lengths {layout['train']['text'].shape[1]}/"
                     f"{layout['train']['audio'].shape[1]}/{layout['train']['vision'].shape[1]}\n")
    return 0
