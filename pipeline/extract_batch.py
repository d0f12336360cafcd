"""The ``extract`` command over a folder: discovery, clip ids, cache reuse, workers, manifest, summary.

One run:

1. Lock ``OUT`` (one extract per cache folder), delete temporary files that a killed run left.
2. Read ``--labels`` (:mod:`pipeline.labels`) and store it normalised as ``OUT/labels.csv``.
3. Find the clips: every non-hidden file under VIDEOS_DIR with an ``extract.video_exts`` suffix
   (case-insensitive, sorted), or VIDEOS_DIR itself when it is a file.
4. Give each its clip id (the labels row it matches, else its stem; duplicates are made unique
   from their folders) and its entry key (:func:`pipeline.cache.entry_key` of the file's content
   hash and :func:`pipeline.extract_stage.clip_settings`: the settings, the versions of the
   libraries and model packages, the ASR compute type on the resolved device).  An entry that
   exists is ``cached`` and is not decoded again, so a rerun skips finished clips and resumes the
   rest.  The others are probed (ffprobe): a file that is not usable media fails here, before any
   model loads.
5. Extract the others in this process (``workers`` = 1) or in a pool of spawned processes, each
   loading the models once.  Every clip is caught on its own: a failure is recorded with its
   cause and the batch goes on.  A worker process that dies takes no other clip with it: the
   clips it shared the pool with run again, one at a time, and only the clip that kills a process
   running alone is failed (:func:`_run_pool`).  A model that cannot be loaded (text, face, or the
   speech recogniser on the first clip that needs it) is a configuration error, not a bad clip:
   the run stops with one line naming the model and the setting, exit status 2.
6. Write ``OUT/manifest.jsonl`` (rewritten as clips finish, so an interrupted run leaves a true
   partial one) and print ``extracted N clips: A ok, B cached, C failed`` to stderr, plus one line
   per failure.  Exit status 0 when nothing failed, 3 otherwise.
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import multiprocessing
import os
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from pipeline.cache import entry_key, entry_path, file_hash, save_entry, write_manifest
from pipeline.errors import UserError
from pipeline.logs import current_levels, setup_logging

log = logging.getLogger(__name__)

MANIFEST_EVERY_S = 2.0       # rewrite the manifest at most this often while clips finish


# ----------------------------------------------------------------------------- discovery and ids

def discover_clips(videos: Path, exts: list[str], exclude: Path | None = None) -> list[Path]:
    """Clip files under ``videos`` (recursively, sorted), or ``[videos]`` when it is a file.

    Hidden files and folders (name starting with ".") are skipped; so is ``exclude`` (the cache
    folder, when it lies inside the videos folder).  Non-regular files with a video suffix (a
    FIFO, a dangling link) are kept so that they are reported, not silently ignored.
    """
    videos = Path(videos)
    if not os.path.lexists(videos):
        raise UserError(f"{videos}: no such file or folder", exit_code=2)
    if not videos.is_dir():
        return [videos]
    wanted = {e.lower() if e.startswith(".") else "." + e.lower() for e in exts}
    skip = Path(exclude).resolve() if exclude is not None else None
    found = []
    for root, dirs, files in os.walk(videos):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and (skip is None or (here / d).resolve() != skip))
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in wanted:
                found.append(here / name)
    return sorted(found, key=lambda p: str(p))


def assign_ids(clips: list[Path], rows: list[dict[str, Any]], videos: Path
               ) -> list[tuple[str, dict[str, Any] | None]]:
    """``(clip_id, labels row or None)`` per clip, ids unique.

    The id is the matched row's clip_id, else the file stem.  When several clips share an id
    (the same stem in different folders, e.g. MMSA-FET's Raw/<video>/<n>.mp4 without labels) they
    become ``<folder>_<stem>``, and if that still collides, the path relative to VIDEOS_DIR.
    """
    from pipeline.labels import match_row

    by_id = {r["clip_id"]: r for r in rows}
    out: list[tuple[str, dict[str, Any] | None]] = []
    for p in clips:
        row = match_row(p, by_id)
        out.append((row["clip_id"] if row else p.stem, row))
    counts = Counter(cid for cid, _ in out)
    if any(n > 1 for n in counts.values()):
        first = [f"{p.parent.name}_{p.stem}" if counts[cid] > 1 else cid for p, (cid, _) in zip(clips, out)]
        again = Counter(first)
        base = Path(videos) if Path(videos).is_dir() else Path(videos).parent
        for i, p in enumerate(clips):
            cid, row = out[i]
            if counts[cid] > 1:
                new = first[i] if again[first[i]] == 1 else _relative(p, base)
                log.warning("%s: clip id %r is shared by %d files; using %r", p, cid, counts[cid], new)
                out[i] = (new, row)
    if rows:
        used = {row["clip_id"] for _, row in out if row}
        unmatched = [r["clip_id"] for r in rows if r["clip_id"] not in used]
        if unmatched:
            log.warning("%d labels rows match no clip file (e.g. %s)", len(unmatched), ", ".join(unmatched[:3]))
        n_unlabelled = sum(1 for _, row in out if row is None)
        if n_unlabelled:
            log.warning("%d clips have no labels row; they are extracted with an empty label", n_unlabelled)
    return out


def _relative(p: Path, base: Path) -> str:
    try:
        return p.relative_to(base).as_posix()
    except ValueError:
        return p.as_posix()


# ----------------------------------------------------------------------------- cache folder

class _Lock:
    """An exclusive lock on ``OUT/.extract.lock`` (released by the OS if the run is killed)."""

    def __init__(self, out: Path):
        self.path = out / ".extract.lock"
        self.fh = None

    def __enter__(self) -> "_Lock":
        import fcntl

        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.close()
            raise UserError(f"{self.path.parent}: another 'dhmd-pipeline extract' is writing to this cache "
                            "folder; wait for it or use another --out", exit_code=2) from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fh is not None:
            self.fh.close()


def clean_stale_temp_files(out: Path) -> int:
    """Delete the temporary files a killed run left (``.<name>.<random>.tmp``); returns how many."""
    n = 0
    for folder in (out, out / "entries"):
        if folder.is_dir():
            for p in folder.glob(".*.tmp"):
                if p.is_file():
                    p.unlink(missing_ok=True)
                    n += 1
    if n:
        log.info("removed %d temporary files left by an interrupted run", n)
    return n


def _entry_meta(path: Path) -> dict[str, Any] | None:
    """The meta of an existing entry (only its small JSON member is read), None if unreadable."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(str(z["meta_json"]))
    except Exception as e:  # a damaged entry is extracted again, not trusted
        log.warning("%s: cache entry unreadable (%s); extracting again", path, e)
        return None


# ----------------------------------------------------------------------------- records

def _base_record(job: dict[str, Any]) -> dict[str, Any]:
    return {"path": job["path"], "clip_id": job["clip_id"], "status": None, "error": None, "flags": [],
            "label": job.get("label"), "split": job.get("split"), "video_id": job.get("video_id"),
            "transcript": None, "transcript_source": None, "word_times_source": None, "n_words": None,
            "n_tokens": None, "frames": None, "face_frames": None, "audio_frames": None,
            "duration_s": None, "versions": {}, "entry": job.get("entry"), "key": job.get("key"),
            "timings_s": {}}


def record_from_meta(job: dict[str, Any], meta: dict[str, Any], status: str) -> dict[str, Any]:
    """A manifest record for a clip whose entry has ``meta``."""
    rec = _base_record(job)
    counts = meta.get("counts", {})
    rec.update(status=status, flags=list(meta.get("flags", [])), transcript=meta.get("transcript"),
               transcript_source=meta.get("transcript_source"), word_times_source=meta.get("word_times_source"),
               n_words=counts.get("n_words", len(meta.get("words", []))), n_tokens=counts.get("n_tokens"),
               frames=counts.get("frames"), face_frames=counts.get("face_frames"),
               audio_frames=counts.get("audio_frames"), duration_s=meta.get("duration_s"),
               versions=meta.get("versions", {}), timings_s=meta.get("timings_s", {}) if status == "ok" else {})
    return rec


def failed_record(job: dict[str, Any], error: str) -> dict[str, Any]:
    rec = _base_record(job)
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
    from pipeline.extract_stage import extract_clip

    path = Path(job["path"])
    try:
        clip = extract_clip(path, cfg, models, clip_id=job["clip_id"], label_text=job.get("label_text"),
                            info=job.get("info"))
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


# worker-process state: the models are loaded once per process by the pool initializer
_WORKER: dict[str, Any] = {}


def _init_worker(cfg_json: str, device: str, threads: int, log_levels: tuple[int, int]) -> None:
    # before torch and CTranslate2 (OpenMP) load: each worker gets its share of the cores
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(max(1, threads))
    setup_logging(*log_levels, fmt="%(levelname)s %(name)s[%(process)d]: %(message)s")
    try:
        import cv2
        import torch

        torch.set_num_threads(max(1, threads))
        cv2.setNumThreads(max(1, threads))
        from pipeline.config import ExtractConfig
        from pipeline.extract_stage import ExtractorModels

        cfg = ExtractConfig.model_validate_json(cfg_json)
        _WORKER.update(cfg=cfg, models=ExtractorModels.load(cfg, device))
    except Exception as e:   # reported with the first job, which stops the run with the cause
        _WORKER["error"] = f"{type(e).__name__}: {e}" if not str(e) else str(e)


def _worker_job(job: dict[str, Any]) -> dict[str, Any]:
    """What a worker process runs per clip: :func:`extract_job` with the worker's models.

    A model that cannot be loaded (at start-up, or the speech recogniser on first use) gives a
    record marked ``fatal``: the parent stops the run with its message.
    """
    from extractors.errors import ModelLoadError

    if "error" in _WORKER:
        rec = failed_record(job, _WORKER["error"])
        rec["fatal"] = True
        return rec
    try:
        return extract_job(job, _WORKER["cfg"], _WORKER["models"])
    except ModelLoadError as e:
        rec = failed_record(job, str(e))
        rec["fatal"] = True
        return rec


def _worker_ready() -> str | None:
    """Run first in a fresh worker: None when its models loaded, else why they did not."""
    return _WORKER.get("error")


# ----------------------------------------------------------------------------- the run

class _Manifest:
    """Records by clip index; rewritten atomically at most every MANIFEST_EVERY_S and at the end."""

    def __init__(self, out: Path, n: int):
        self.out = out
        self.records: list[dict[str, Any] | None] = [None] * n
        self.last = 0.0

    def put(self, i: int, rec: dict[str, Any], force: bool = False) -> None:
        self.records[i] = rec
        self.flush(force)

    def flush(self, force: bool = True) -> None:
        now = time.monotonic()
        if force or now - self.last >= MANIFEST_EVERY_S:
            write_manifest(self.out, [r for r in self.records if r is not None])
            self.last = now


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="clip", desc="extract", file=sys.stderr, disable=None, dynamic_ncols=True)


def _run_in_process(jobs: list[tuple[int, dict[str, Any]]], cfg: Any, device: str, manifest: _Manifest,
                    bar: Any) -> None:
    from extractors.errors import ModelLoadError
    from pipeline.extract_stage import ExtractorModels

    try:
        models = ExtractorModels.load(cfg, device)
    except ModelLoadError as e:
        raise UserError(str(e), exit_code=2) from None
    try:
        for i, job in jobs:
            bar.set_postfix_str(Path(job["path"]).name[-30:], refresh=False)
            try:
                rec = extract_job(job, cfg, models)
            except ModelLoadError as e:       # the speech recogniser, loaded by the first clip needing it
                raise UserError(str(e), exit_code=2) from None
            manifest.put(i, rec)
            bar.update(1)
    finally:
        models.close()


WORKER_DIED = ("the worker process died while extracting this clip on its own (a crash in native code, "
               "or the process was killed, e.g. out of memory)")


def _run_pool(jobs: list[tuple[int, dict[str, Any]]], cfg: Any, device: str, workers: int,
              manifest: _Manifest, bar: Any, job_fn: Callable[[dict[str, Any]], dict[str, Any]] = _worker_job
              ) -> None:
    """Run jobs in ``workers`` spawned processes; a worker that dies fails its own clip, no other.

    ``job_fn`` is what a worker runs per clip (:func:`_worker_job`; it is sent to the processes by
    name, so it must be a module-level function).  At most ``workers`` clips are in flight.

    When a worker process dies (a crash in native code, ``os._exit``, the OOM killer),
    concurrent.futures fails every clip in flight with BrokenProcessPool, whichever process ran
    it.  Those clips are not failed: they become suspects and run again one at a time in a fresh
    pool of one process.  Every pool first has its processes answer :func:`_worker_ready` (models
    loaded), so a suspect runs in a process known to work.
    A suspect that kills the process while running alone is the cause and is failed
    (:data:`WORKER_DIED`); a fresh process takes the next suspect.  Once the suspects are done, the
    remaining clips go on in a fresh pool of ``workers`` processes.  A process that dies while
    loading the models (before it answers :func:`_worker_ready`) stops the run (exit status 1): no
    clip could be extracted.
    """
    from collections import deque
    from concurrent.futures.process import BrokenProcessPool

    threads = max(1, (os.cpu_count() or 1) // workers)
    init_args = (cfg.model_dump_json(), device, threads, current_levels())
    ctx = multiprocessing.get_context("spawn")
    pending = deque(jobs)
    suspects: deque[tuple[int, dict[str, Any]]] = deque()

    def finish(i: int, rec: dict[str, Any]) -> None:
        if rec.pop("fatal", False):
            raise UserError(rec["error"], exit_code=2)
        manifest.put(i, rec)
        bar.update(1)

    while pending or suspects:
        solo = bool(suspects)          # find which suspect kills its process: one at a time
        queue, limit = (suspects, 1) if solo else (pending, min(workers, len(pending)))
        pool = cf.ProcessPoolExecutor(max_workers=limit, mp_context=ctx, initializer=_init_worker,
                                      initargs=init_args)
        in_flight: dict[cf.Future, tuple[int, dict[str, Any]]] = {}
        broken = False
        try:
            # every process starts and loads its models before any clip is sent.  Besides reporting a
            # model that cannot load once, up front, this makes a later death noticed at once: the
            # pool's manager thread watches the processes it knew when it last woke, and a process
            # spawned on demand by submit() joins that set only at the manager's next wake-up (a
            # result); without it, a worker dying on its first clip went unnoticed until the clip
            # beside it was done.
            try:
                errors = [f.result() for f in [pool.submit(_worker_ready) for _ in range(limit)]]
            except BrokenProcessPool:
                raise UserError("a worker process died while loading the extraction models (a crash in "
                                "native code, or out of memory); no clip can be extracted", exit_code=1) from None
            error = next((e for e in errors if e), None)
            if error:
                raise UserError(error, exit_code=2)
            while (queue or in_flight) and not broken:
                while queue and len(in_flight) < limit:
                    i, job = queue.popleft()
                    try:
                        in_flight[pool.submit(job_fn, job)] = (i, job)
                    except BrokenProcessPool:
                        queue.appendleft((i, job))
                        broken = True
                        break
                if broken:
                    break
                done, _ = cf.wait(in_flight, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    i, job = in_flight[fut]
                    try:
                        rec = fut.result()
                    except BrokenProcessPool:
                        broken = True          # the clip stays in flight: it is handled below
                        continue
                    except Exception as e:
                        rec = failed_record(job, f"{job['path']}: unexpected {type(e).__name__}: {e}")
                    del in_flight[fut]
                    finish(i, rec)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if not broken:
            continue
        crashed = []
        for fut, (i, job) in in_flight.items():      # after shutdown every future is done
            exc = None if fut.cancelled() else fut.exception()
            if fut.cancelled() or isinstance(exc, BrokenProcessPool):
                crashed.append((i, job))
            elif exc is None:
                finish(i, fut.result())               # finished just before the crash
            else:
                finish(i, failed_record(job, f"{job['path']}: unexpected {type(exc).__name__}: {exc}"))
        if solo:
            for i, job in crashed:                    # it ran alone in a process that loaded its models
                log.warning("%s: %s", job["path"], WORKER_DIED)
                finish(i, failed_record(job, f"{job['path']}: {WORKER_DIED}"))
        elif crashed:
            suspects.extend(sorted(crashed, key=lambda c: c[0]))
            log.warning("a worker process died with %d clips in flight (%s); extracting them again one at a "
                        "time to find the cause", len(crashed), ", ".join(Path(j["path"]).name for _, j in crashed))


def run_batch(cfg: Any, videos_dir: Path, out: Path | None, labels: Path | None, workers: int | None,
              *, job_fn: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> int:
    """See the module docstring.  ``cfg`` is the whole PipelineConfig; returns the exit status.

    ``job_fn`` replaces what each worker process runs per clip (default :func:`_worker_job`, see
    :func:`_run_pool`); with one worker the clips are extracted in this process and it is not used.
    """
    from extractors.errors import ExtractionError
    from pipeline.extract_stage import check_regular_file, clip_settings, probe_clip, resolve_device
    from pipeline.labels import read_labels, write_labels

    ecfg = cfg.extract
    videos_dir = Path(videos_dir)
    out = Path(out) if out is not None else Path(ecfg.out)
    workers = int(workers or ecfg.workers)
    if not os.path.lexists(videos_dir):
        raise UserError(f"{videos_dir}: no such file or folder (give the folder of video clips)", exit_code=2)
    rows = read_labels(labels) if labels is not None else []
    clips = discover_clips(videos_dir, ecfg.video_exts, exclude=out)
    if not clips:
        raise UserError(f"{videos_dir}: no video files found (looked for {', '.join(ecfg.video_exts)}; "
                        "set extract.video_exts for others)", exit_code=2)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "entries").mkdir(exist_ok=True)
    except OSError as e:
        raise UserError(f"{out}: cannot create the cache folder ({e.strerror or e})", exit_code=2) from None

    try:   # the entry keys need it (the ASR compute type differs on CUDA); imports torch for "auto"
        device = resolve_device(ecfg.device)
    except ValueError as e:
        raise UserError(str(e), exit_code=2) from None

    with _Lock(out):
        clean_stale_temp_files(out)
        if rows:
            write_labels(rows, out / "labels.csv")
        ids = assign_ids(clips, rows, videos_dir)
        manifest = _Manifest(out, len(clips))
        todo: list[tuple[int, dict[str, Any]]] = []
        with _progress(len(clips)) as bar:
            for i, (path, (clip_id, row)) in enumerate(zip(clips, ids)):
                label_text = row.get("text") if row else None
                job = {"path": str(path), "clip_id": clip_id, "label_text": label_text,
                       "label": row.get("label") if row else None, "split": row.get("split") if row else None,
                       "video_id": row.get("video_id") if row else None}
                try:
                    check_regular_file(path)
                    key = entry_key(file_hash(path), clip_settings(path, ecfg, clip_id, label_text, device))
                except (ExtractionError, OSError) as e:
                    msg = str(e) if isinstance(e, ExtractionError) else f"{path}: unreadable ({e.strerror or e})"
                    manifest.put(i, failed_record(job, msg))
                    bar.update(1)
                    continue
                entry = entry_path(out, key)
                job.update(key=key, entry=entry.relative_to(out).as_posix(), entry_abs=str(entry))
                meta = _entry_meta(entry) if entry.exists() else None
                if meta is not None:
                    manifest.put(i, record_from_meta(job, meta, "cached"))
                    bar.update(1)
                    continue
                t0 = time.perf_counter()
                try:   # bad files fail here, before any model is loaded
                    job["info"] = probe_clip(path, ecfg)
                    job["probe_s"] = time.perf_counter() - t0
                except ExtractionError as e:
                    manifest.put(i, failed_record(job, str(e)))
                    bar.update(1)
                    continue
                todo.append((i, job))
            if todo:
                n_workers = min(workers, len(todo))
                log.info("extracting %d clips (%d cached) on %s with %d worker%s", len(todo),
                         len(clips) - len(todo), device, n_workers, "s" if n_workers > 1 else "")
                try:
                    if n_workers <= 1:
                        _run_in_process(todo, ecfg, device, manifest, bar)
                    else:
                        _run_pool(todo, ecfg, device, n_workers, manifest, bar, job_fn or _worker_job)
                finally:
                    manifest.flush()
        manifest.flush()
    return summarize([r for r in manifest.records if r is not None])


def summarize(records: list[dict[str, Any]]) -> int:
    """Print the summary line and the failures to stderr; the exit status (0, or 3 if any failed)."""
    counts = Counter(r["status"] for r in records)
    print(f"extracted {len(records)} clips: {counts['ok']} ok, {counts['cached']} cached, "
          f"{counts['failed']} failed", file=sys.stderr)
    flagged = Counter(f for r in records if r["status"] != "failed" for f in r.get("flags", []))
    if flagged:
        print("flags: " + ", ".join(f"{n} {f}" for f, n in sorted(flagged.items())), file=sys.stderr)
    for r in records:
        if r["status"] == "failed":
            print(f"  failed: {r['error']}", file=sys.stderr)
    return 3 if counts["failed"] else 0
