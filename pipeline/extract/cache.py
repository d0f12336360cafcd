"""The feature cache: one ``.npz`` entry per clip, written atomically, plus ``manifest.jsonl``.

Layout of a cache folder (``extract --out``, default ``data/cache``)::

    manifest.jsonl          one JSON object per input clip of the last extract run
    labels.csv              the labels given with --labels, normalised (clip_id,label,text,split,video_id)
    entries/<key>.npz       one entry per clip; key = content hash of the clip + hash of the settings
                            and of the versions that change features (pipeline.extract.clip.clip_settings)

An entry holds the *unaligned* features of every modality with their time stamps; the word-aligned
view is computed from the same entry at load time (``extractors.alignment``), so one extraction
serves both ``[align] mode`` settings.  Arrays in an entry (all numpy, no pickles):

    text_features     (Nt, Dt) float32  per-token hidden states, [CLS] ... [SEP] included
    text_ids          (Nt,) int64       token ids       } so a model can fine-tune BERT
    text_mask         (Nt,) int64       attention mask  } (MMSA's text_bert rows)
    text_segment      (Nt,) int64       segment ids     }
    token_word_index  (Nt,) int32       index into ``words`` of each token, -1 for special tokens
    word_start, word_end (Nw,) float32  word times in seconds
    audio_features    (Ta, Da) float32  acoustic frames at extract.audio.rate_hz
    audio_times       (Ta,) float32     centre time of each acoustic frame (s)
    video_features    (Tv, Dv) float32  face features per sampled frame at extract.fps
    video_times       (Tv,) float32     time of each sampled frame (s)
    face_mask         (Tv,) bool        True where a face was found (else the row is zeros)
    meta_json         0-d str           JSON: clip_id, source, duration_s, transcript,
                                        transcript_source, words (list of str), word_times_source,
                                        audio_names, video_names, flags, versions, settings, spec

Nothing is ever half-written: :func:`save_entry` writes to a temporary file in the same folder and
renames it into place.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.files import atomic_write_bytes, atomic_write_text

ENTRY_ARRAYS = ("text_features", "text_ids", "text_mask", "text_segment", "token_word_index",
                "word_start", "word_end", "audio_features", "audio_times", "video_features",
                "video_times", "face_mask")


@dataclass
class ClipFeatures:
    """Everything extracted from one clip, unaligned, as stored in one cache entry."""

    clip_id: str
    source: str
    duration_s: float
    transcript: str
    transcript_source: str            # "sidecar" | "labels" | "asr" | "none"
    words: list[str]
    word_start: np.ndarray
    word_end: np.ndarray
    word_times_source: str            # "sidecar" | "asr" | "matched" | "spread" | "none"
    text_features: np.ndarray
    text_ids: np.ndarray
    text_mask: np.ndarray
    text_segment: np.ndarray
    token_word_index: np.ndarray
    audio_features: np.ndarray
    audio_times: np.ndarray
    video_features: np.ndarray
    video_times: np.ndarray
    face_mask: np.ndarray
    audio_names: list[str] = field(default_factory=list)
    video_names: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)   # versions, settings, spec, anything else

    def meta_dict(self) -> dict[str, Any]:
        return {"clip_id": self.clip_id, "source": self.source, "duration_s": float(self.duration_s),
                "transcript": self.transcript, "transcript_source": self.transcript_source,
                "words": list(self.words), "word_times_source": self.word_times_source,
                "audio_names": list(self.audio_names), "video_names": list(self.video_names),
                "flags": list(self.flags), **self.meta}


def file_hash(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def settings_hash(settings: dict[str, Any]) -> str:
    """Stable short hash of the extraction settings that affect an entry."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def entry_key(content_hash: str, settings: dict[str, Any]) -> str:
    return f"{content_hash[:20]}-{settings_hash(settings)}"


def entry_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / "entries" / f"{key}.npz"


def save_entry(path: Path, clip: ClipFeatures) -> None:
    """Store ``clip`` at ``path`` (an .npz), atomically."""
    import io

    arrays = {name: np.asarray(getattr(clip, name)) for name in ENTRY_ARRAYS}
    arrays["meta_json"] = np.array(json.dumps(clip.meta_dict(), default=str))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_entry(path: Path) -> ClipFeatures:
    """Read a cache entry written by :func:`save_entry`."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {name: z[name] for name in ENTRY_ARRAYS}
        meta = json.loads(str(z["meta_json"]))
    known = {"clip_id", "source", "duration_s", "transcript", "transcript_source", "words",
             "word_times_source", "audio_names", "video_names", "flags"}
    return ClipFeatures(**{k: meta[k] for k in known}, **arrays,
                        meta={k: v for k, v in meta.items() if k not in known})


def read_manifest(cache_dir: Path) -> list[dict[str, Any]]:
    """The records of ``cache_dir/manifest.jsonl`` (empty list when there is none)."""
    p = Path(cache_dir) / "manifest.jsonl"
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_manifest(cache_dir: Path, records: list[dict[str, Any]]) -> None:
    atomic_write_text(Path(cache_dir) / "manifest.jsonl",
                      "".join(json.dumps(r, default=str) + "\n" for r in records))
