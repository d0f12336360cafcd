"""Read and write feature pickles in the MMSA layout (the published CMU-MOSI / MOSEI / CH-SIMS files).

Layout (see the reference notes): ``{"train": split, "valid": split, "test": split}``, each split a dict
of numpy arrays with one row per sample:

    text               (N, T, Dt)  float   token features (BERT hidden states)
    text_bert          (N, 3, T)   ids / attention mask / segment ids
    audio              (N, Ta, Da) float   may hold -inf (COVAREP): read as 0
    vision             (N, Tv, Dv) float
    audio_lengths, vision_lengths (N,)     only in unaligned files
    regression_labels  (N,)        scores in [-3, 3]
    id, raw_text       (N,)        "video$_$clip" ids and transcripts

Variants accepted on read: ``classification_labels``; ``labels`` as an array or a dict ``{"M": ...}``;
``valid`` also spelled ``val``/``dev``.  Pickles are Python objects: only open files you trust.
"""
from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.files import atomic_write_bytes
from pipeline.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
_SPLIT_ALIASES = {"train": "train", "valid": "valid", "val": "valid", "dev": "valid", "test": "test"}


def is_pickle(path: Path) -> bool:
    """Whether ``path`` looks like an MMSA pickle (a file, not a cache folder)."""
    path = Path(path)
    return path.is_file() and path.suffix.lower() in (".pkl", ".pickle", ".pk", "")


def read_pickle(path: Path) -> dict[str, dict[str, Any]]:
    """The splits of an MMSA pickle, with split names normalised and required keys checked."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = pickle.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: data file not found", exit_code=2) from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ModuleNotFoundError, ValueError) as e:
        raise UserError(f"{path}: not a readable MMSA pickle ({type(e).__name__}: {e})", exit_code=2) from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: an MMSA pickle holds a dict of splits, found {type(raw).__name__}", exit_code=2)
    data: dict[str, dict[str, Any]] = {}
    for name, split in raw.items():
        norm = _SPLIT_ALIASES.get(str(name).lower())
        if norm is None or not isinstance(split, dict):
            continue
        data[norm] = split
    if not data:
        raise UserError(f"{path}: no train/valid/test splits found (keys: {sorted(map(str, raw))})", exit_code=2)
    for name, split in data.items():
        missing = [k for k in ("audio", "vision") if k not in split]
        if "text" not in split and "text_bert" not in split:
            missing.insert(0, "text")
        if missing:
            raise UserError(f"{path}: split '{name}' lacks {', '.join(missing)} (MMSA layout needs text, "
                            f"audio, vision)", exit_code=2)
    return data


def clean(array: Any) -> np.ndarray:
    """float32 copy with -inf / inf / NaN replaced by 0 (COVAREP audio has -inf)."""
    return np.nan_to_num(np.asarray(array, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)


def split_labels(split: dict[str, Any], task: str, where: str) -> np.ndarray:
    """The labels of one split for ``task``: float scores (regression) or int classes."""
    labels = split.get("labels")
    if isinstance(labels, dict):
        labels = labels.get("M")
    if task == "regression":
        for value in (split.get("regression_labels"), labels):
            if value is not None:
                return np.asarray(value, dtype=np.float64).reshape(-1)
        raise UserError(f"{where}: no regression_labels (or labels) in the pickle", exit_code=2)
    for value in (split.get("classification_labels"), labels, split.get("regression_labels")):
        if value is not None:
            arr = np.asarray(value, dtype=np.float64).reshape(-1)
            if not np.all(arr == np.round(arr)) or np.any(arr < 0):
                raise UserError(f"{where}: the labels are scores, not class indices (e.g. {arr[:3].tolist()}); "
                                f"train with model.task=\"regression\"", exit_code=2)
            return arr.astype(np.int64)
    raise UserError(f"{where}: no classification labels in the pickle", exit_code=2)


def is_aligned(data: dict[str, dict[str, Any]]) -> bool:
    """Aligned files have no *_lengths and all three modalities at one length."""
    for split in data.values():
        if "audio_lengths" in split or "vision_lengths" in split:
            return False
        lengths = {np.asarray(split["audio"]).shape[1], np.asarray(split["vision"]).shape[1]}
        if "text" in split:
            lengths.add(np.asarray(split["text"]).shape[1])           # (N, T, D)
        else:
            lengths.add(np.asarray(split["text_bert"]).shape[2])      # (N, 3, T)
        if len(lengths) != 1:
            return False
    return True


def write_pickle(data: dict[str, dict[str, Any]], path: Path) -> None:
    """Write ``data`` as a pickle, atomically (temporary file + rename)."""
    buf = io.BytesIO()
    pickle.dump(data, buf, protocol=4)
    atomic_write_bytes(Path(path), buf.getvalue())
