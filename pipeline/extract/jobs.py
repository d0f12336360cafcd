"""One clip job, engine-independent: extract it, store its entry, return its manifest record.

A *job* is a plain dict made by the driver (:mod:`pipeline.extract.batch`): ``path``, ``clip_id``,
``label_text``, ``label``, ``split``, ``video_id``, ``key``, ``entry`` (relative to the cache
folder), ``entry_abs`` and, when the driver probed the file, ``info`` and ``probe_s``.  Every
engine (the in-process loop, the process pool, the Ray actors) runs :func:`extract_job` on it with
models it loaded once, and the driver turns the returned record into a manifest line.
"""
from __future__ import annotations

import logging
import traceback
from pathlib import Path
from typing import Any

from pipeline.extract.cache import save_entry

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- records

def base_record(job: dict[str, Any]) -> dict[str, Any]:
    return {"path": job["path"], "clip_id": job["clip_id"], "status": None, "error": None, "flags": [],
            "label": job.get("label"), "split": job.get("split"), "video_id": job.get("video_id"),
            "transcript": None, "transcript_source": None, "word_times_source": None, "n_words": None,
            "n_tokens": None, "frames": None, "face_frames": None, "audio_frames": None,
            "duration_s": None, "versions": {}, "entry": job.get("entry"), "key": job.get("key"),
            "timings_s": {}}


def record_from_meta(job: dict[str, Any], meta: dict[str, Any], status: str) -> dict[str, Any]:
    """A manifest record for a clip whose entry has ``meta``."""
    rec = base_record(job)
    counts = meta.get("counts", {})
    rec.update(status=status, flags=list(meta.get("flags", [])), transcript=meta.get("transcript"),
               transcript_source=meta.get("transcript_source"), word_times_source=meta.get("word_times_source"),
               n_words=counts.get("n_words", len(meta.get("words", []))), n_tokens=counts.get("n_tokens"),
               frames=counts.get("frames"), face_frames=counts.get("face_frames"),
               audio_frames=counts.get("audio_frames"), duration_s=meta.get("duration_s"),
               versions=meta.get("versions", {}), timings_s=meta.get("timings_s", {}) if status == "ok" else {})
    return rec


def failed_record(job: dict[str, Any], error: str) -> dict[str, Any]:
    rec = base_record(job)
    rec.update(status="failed", error=error, entry=None)
    return rec


# ----------------------------------------------------------------------------- extraction of one job

def extract_job(job: dict[str, Any], cfg: Any, models: Any) -> dict[str, Any]:
    """Extract one clip into its entry and return its manifest record; never raises for a bad clip.

    Raises :class:`~extractors.errors.ModelLoadError` when a model cannot be loaded (the speech
    recogniser loads on the first clip that needs it): that is a configuration problem that would
    fail every clip, so the caller stops the run (exit status 2) instead of failing clips.
    """
    from extractors.errors import ExtractionError, ModelLoadError
    from pipeline.extract.clip import extract_clip

    path = Path(job["path"])
    try:
        clip = extract_clip(path, cfg, models, clip_id=job["clip_id"], label_text=job.get("label_text"),
                            info=job.get("info"), video=job.get("video"))
        if "probe_s" in job:
            timings = clip.meta.setdefault("timings_s", {})
            timings["probe"] = round(job["probe_s"], 4)
            timings["total"] = round(timings.get("total", 0.0) + job["probe_s"], 4)
        save_entry(Path(job["entry_abs"]), clip)
        return record_from_meta(job, clip.meta_dict(), "ok")
    except ModelLoadError:
        raise
    except ExtractionError as e:
        log.debug("%s failed:\n%s", path, traceback.format_exc())
        msg = str(e)
        return failed_record(job, msg if str(path) in msg else f"{path}: {msg}")
    except MemoryError:
        return failed_record(job, f"{path}: out of memory while extracting")
    except Exception as e:  # an unexpected error in one clip must not stop the batch
        log.debug("%s failed unexpectedly:\n%s", path, traceback.format_exc())
        return failed_record(job, f"{path}: unexpected {type(e).__name__}: {' '.join(str(e).split())[:300]} "
                                  "(rerun with -vv for the traceback)")
