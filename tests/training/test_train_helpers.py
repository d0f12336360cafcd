"""Builders of small real data for the training / dataset / export tests (no tests in this module).

* :func:`make_pickle`: a pickle in the MMSA layout (aligned or unaligned) whose labels are a planted
  function of the features, so a model can learn them.
* :func:`make_cache`: a cache folder as ``extract`` writes it (entries via pipeline.extract.cache.save_entry,
  manifest.jsonl, labels.csv), with word times, a face mask with gaps and a planted signal; no video
  decoding is needed.
"""
from __future__ import annotations

import csv
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.extract.cache import ClipFeatures, entry_key, entry_path, save_entry, write_manifest

TINY = ["model.hidden_dim=16", "model.num_heads=2", "model.num_layers=1", "model.dictionary_size=16",
        "model.gd_hidden=8", "train.batch_size=16", "train.lr=0.002"]


def set_args(overrides: list[str]) -> list[str]:
    return [a for s in overrides for a in ("--set", s)]


def make_pickle(path: Path, n_train: int = 120, aligned: bool = False, seed: int = 0, t_len: int = 8,
                dims: tuple[int, int, int] = (12, 5, 6), labels_key: str = "regression_labels",
                binary: bool = False) -> Path:
    """An MMSA-layout pickle; the label drives text feature 0 and audio feature 0 (scaled, with noise).
    ``binary``: the stored labels are 0/1 (score > 0) under ``labels_key``.

    Audio holds -inf (as COVAREP files do) in feature 1 of frame 0; text_bert masks vary in length.
    """
    rng = np.random.default_rng(seed)
    dt, da, dv = dims
    data: dict[str, Any] = {}
    for split, n in (("train", n_train), ("valid", max(n_train // 4, 4)), ("test", max(n_train // 4, 4))):
        y = np.round(rng.uniform(-3, 3, n), 1)
        ta, tv = (t_len, t_len) if aligned else (t_len + 6, t_len + 3)
        text = rng.normal(size=(n, t_len, dt)).astype(np.float32)
        audio = rng.normal(size=(n, ta, da)).astype(np.float32)
        vision = rng.normal(size=(n, tv, dv)).astype(np.float32)
        text[:, :, 0] += 0.8 * y[:, None]
        audio[:, :, 0] = audio[:, :, 0] * 5.0 + 8.0 * y[:, None] + 40.0     # far from zero mean / unit std
        audio[:, 0, 1] = -np.inf
        bert = np.zeros((n, 3, t_len), dtype=np.float64)
        lengths = rng.integers(3, t_len + 1, n)
        for i, k in enumerate(lengths):
            bert[i, 0, :k] = 1000 + np.arange(k)
            bert[i, 1, :k] = 1
        split_data = {"text": text, "text_bert": bert, "audio": audio, "vision": vision,
                      "id": np.array([f"vid{i % 7}$_${split}{i}" for i in range(n)], dtype=object),
                      "raw_text": np.array([f"sentence {i}" for i in range(n)], dtype=object)}
        stored = (y > 0).astype(np.int64) if binary else y.astype(np.float32)
        if labels_key == "labels_M":
            split_data["labels"] = {"M": stored}
        else:
            split_data[labels_key] = stored
        if not aligned:
            split_data["audio_lengths"] = rng.integers(4, ta + 1, n)
            split_data["vision_lengths"] = rng.integers(4, tv + 1, n)
        data[split] = split_data
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return Path(path)


SPEC = {"text_model": "test-encoder", "text_dim": 8, "audio_dim": 5, "video_dim": 6,
        "audio_names": [f"a{i}" for i in range(5)], "video_names": [f"v{i}" for i in range(6)],
        "face_backend": "mediapipe", "fps": 15.0, "audio_rate_hz": 12.5}


def make_clip_features(clip_id: str, label: float, rng: np.random.Generator, n_words: int | None = None,
                       spec: dict[str, Any] | None = None, source: str | None = None) -> ClipFeatures:
    """One clip's unaligned features: words with times, [CLS] tokens [SEP], audio at 12.5 Hz, video at
    15 fps with a face missing in some frames; text feature 0 and audio feature 0 carry the label.
    ``source`` is the clip file's path (default ``/videos/<clip_id>.mp4``)."""
    from pipeline.config import ExtractConfig
    from pipeline.extract.clip import extraction_settings

    spec = dict(spec or SPEC)
    n_words = int(n_words if n_words is not None else rng.integers(2, 6))
    duration = 0.4 * n_words + 0.4
    starts = 0.2 + 0.4 * np.arange(n_words)
    ends = starts + 0.3
    word_index = np.concatenate([[-1], np.repeat(np.arange(n_words), 1 + (np.arange(n_words) % 2)), [-1]])
    n_tok = word_index.shape[0]
    text = rng.normal(size=(n_tok, spec["text_dim"])).astype(np.float32)
    text[:, 0] += 0.8 * label
    a_times = np.arange(0.04, duration, 1 / spec["audio_rate_hz"]).astype(np.float32)
    audio = rng.normal(size=(a_times.size, spec["audio_dim"])).astype(np.float32)
    audio[:, 0] = audio[:, 0] * 3 + 6 * label + 20
    v_times = np.arange(0.0, duration, 1 / spec["fps"]).astype(np.float32)
    video = rng.normal(size=(v_times.size, spec["video_dim"])).astype(np.float32)
    face = np.ones(v_times.size, dtype=bool)
    face[1::4] = False
    video[~face] = 0.0
    settings = extraction_settings(ExtractConfig())
    settings["fps"] = spec["fps"]
    return ClipFeatures(
        clip_id=clip_id, source=source or f"/videos/{clip_id}.mp4", duration_s=duration,
        transcript=" ".join(["w"] * n_words),
        transcript_source="labels", words=[f"w{i}" for i in range(n_words)],
        word_start=starts.astype(np.float32), word_end=ends.astype(np.float32), word_times_source="matched",
        text_features=text, text_ids=np.arange(n_tok, dtype=np.int64) + 100,
        text_mask=np.ones(n_tok, dtype=np.int64), text_segment=np.zeros(n_tok, dtype=np.int64),
        token_word_index=word_index.astype(np.int32), audio_features=audio, audio_times=a_times,
        video_features=video, video_times=v_times, face_mask=face, audio_names=list(spec["audio_names"]),
        video_names=list(spec["video_names"]), meta={"spec": spec, "settings": settings})


def make_cache(root: Path, n_clips: int = 40, with_split: bool = True, seed: int = 0,
               spec: dict[str, Any] | None = None, unlabelled: int = 0, with_video_id: bool = True,
               layout: str = "flat") -> Path:
    """A cache folder: entries, manifest.jsonl (with "entry" and "path" fields) and labels.csv.

    Clips ``vidK_J`` come from source videos ``vidK`` (4 clips each).  With ``with_split`` the labels
    give a split per video; ``unlabelled`` extra clips get entries but no label; ``with_video_id=False``
    leaves the labels' video_id column empty.  ``layout``: "flat" clip files ``/videos/vidK_J.mp4``, or
    "folders" as MMSA-FET keeps them, ``/data/Raw/vidK/J.mp4``.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    records, rows = [], []
    for i in range(n_clips + unlabelled):
        video_id, clip_id = f"vid{i // 4}", f"vid{i // 4}_{i % 4}"
        label = float(np.round(rng.uniform(-3, 3), 1))
        source = f"/data/Raw/{video_id}/{i % 4}.mp4" if layout == "folders" else f"/videos/{clip_id}.mp4"
        clip = make_clip_features(clip_id, label, rng, spec=spec, source=source)
        key = entry_key(f"{seed:04d}{i:016d}", {"clip": clip_id})
        path = entry_path(root, key)
        save_entry(path, clip)
        records.append({"path": clip.source, "clip_id": clip_id, "status": "ok", "entry": f"entries/{key}.npz",
                        "key": key})
        if i < n_clips:
            split = ("train", "train", "train", "valid", "test")[(i // 4) % 5] if with_split else ""
            rows.append([clip_id, repr(label), clip.transcript, split, video_id if with_video_id else ""])
    write_manifest(root, records)
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip_id", "label", "text", "split", "video_id"])
        w.writerows(rows)
    return root
