"""The ``extract`` command over a folder: discovery, clip ids, cache reuse, workers, manifest, summary.

One run:

1. Lock ``OUT`` (one extract per cache folder), delete temporary files that a killed run left.
2. Read ``--labels`` (:mod:`pipeline.extract.labels`) and store it normalised as ``OUT/labels.csv``.
3. Find the clips: every non-hidden file under VIDEOS_DIR with an ``extract.video_exts`` suffix
   (case-insensitive, sorted), or VIDEOS_DIR itself when it is a file.
4. Give each its clip id (the labels row it matches, else its stem; duplicates are made unique
   from their folders) and its entry key (:func:`pipeline.extract.cache.entry_key` of the file's content
   hash and :func:`pipeline.extract.clip.clip_settings`: the settings, the versions of the
   libraries and model packages, the ASR compute type on the resolved device).  An entry that
   exists is ``cached`` and is not decoded again, so a rerun skips finished clips and resumes the
   rest.  The others are probed (ffprobe): a file that is not usable media fails here, before any
   model loads.
5. Extract the others in this process (``workers`` = 1) or in a pool of spawned processes, each
   loading the models once, or with ``--engine ray`` on Ray actors (:mod:`pipeline.extract.ray_engine`,
   one machine or a cluster; same jobs, same entries, same records).  Every clip is caught on its own: a failure is recorded with its
   cause and the batch goes on.  A worker process that dies takes no other clip with it: the
   clips it shared the pool with run again, one at a time, and only the clip that kills a process
   running alone is failed (:func:`pipeline.extract.pool.run_pool`).  A model that cannot be loaded (text, face, or the
   speech recogniser on the first clip that needs it) is a configuration error, not a bad clip:
   the run stops with one line naming the model and the setting, exit status 2.
6. Write ``OUT/manifest.jsonl`` (rewritten as clips finish, so an interrupted run leaves a true
   partial one) and print ``extracted N clips: A ok, B cached, C failed`` to stderr, plus one line
   per failure.  Exit status 0 when nothing failed, 3 otherwise.
"""
from __future__ import annotations

import json
import logging
import contextlib
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from pipeline.errors import UserError
from pipeline.extract.cache import entry_key, entry_path, file_hash, read_manifest, write_manifest
from pipeline.extract.jobs import failed_record, record_from_meta
from pipeline.extract.pool import run_in_process, run_pool, worker_job

log = logging.getLogger(__name__)

MANIFEST_EVERY_S = 2.0       # rewrite the manifest at most this often while clips finish
MANIFEST_COST_FACTOR = 10.0  # ... and at most once per this many times the last rewrite's duration


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
    from pipeline.extract.labels import match_row

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


# ----------------------------------------------------------------------------- the run

class _Manifest:
    """Records by clip index; rewritten atomically at most every MANIFEST_EVERY_S and at the end.

    Each rewrite writes every record (23,000 records of a MOSEI-size corpus: ~24 MB, seconds), so the
    interval also grows to MANIFEST_COST_FACTOR times the last rewrite's duration: the driver then spends
    at most ~1/MANIFEST_COST_FACTOR of its time on the manifest, however many clips a cluster finishes.
    """

    def __init__(self, out: Path, n: int):
        self.out = out
        self.records: list[dict[str, Any] | None] = [None] * n
        self.last = 0.0
        self.write_s = 0.0

    def put(self, i: int, rec: dict[str, Any], force: bool = False) -> None:
        self.records[i] = rec
        self.flush(force)

    def flush(self, force: bool = True) -> None:
        now = time.monotonic()
        if force or now - self.last >= max(MANIFEST_EVERY_S, MANIFEST_COST_FACTOR * self.write_s):
            write_manifest(self.out, [r for r in self.records if r is not None])
            self.last = time.monotonic()
            self.write_s = self.last - now


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="clip", desc="extract", file=sys.stderr, disable=None, dynamic_ncols=True)


def run_extract(cfg: Any, videos_dir: Path, out: Path | None, labels: Path | None, workers: int | None,
              *, job_fn: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
              engine: str | None = None, ray_address: str | None = None) -> int:
    """See the module docstring.  ``cfg`` is the whole PipelineConfig; returns the exit status.

    ``job_fn`` replaces what each worker process runs per clip (default :func:`pipeline.extract.pool.worker_job`, see
    :func:`pipeline.extract.pool.run_pool`); with one local worker the clips are extracted in this process and it is
    not used.  ``engine`` ("local"/"ray", default ``extract.engine``) and ``ray_address`` (default
    ``extract.ray.address``) are the --engine and --ray-address options; with the Ray engine, ``workers`` (the
    --workers option) overrides ``extract.ray.workers``.
    """
    from extractors.errors import ExtractionError
    from pipeline.extract.clip import check_regular_file, clip_settings, resolve_device
    from pipeline.extract.labels import read_labels, write_labels

    ecfg = cfg.extract
    engine = engine or ecfg.engine
    if engine not in ("local", "ray"):
        raise UserError(f"unknown extract engine {engine!r}: use 'local' or 'ray'", exit_code=2)
    if ray_address is not None:
        ecfg = _with_ray_address(ecfg, ray_address)
    videos_dir = Path(videos_dir)
    out = Path(out) if out is not None else Path(ecfg.out)
    ray_workers = workers                  # the Ray engine: --workers, else extract.ray.workers
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

    helper = None
    if engine == "local" and workers <= 1:
        # acoustic features are computed in a helper process (pipeline/extract/acoustic_process.py),
        # started now so that librosa warms up there while this process imports torch, probes the
        # clips and loads the models; closed unused when every clip is cached
        from pipeline.extract.acoustic_process import AcousticProcess

        helper = AcousticProcess(int(ecfg.sample_rate), ecfg.audio)
    try:   # the entry keys need it (the ASR compute type differs on CUDA); imports torch for "auto"
        if engine == "ray":                # the actors' device, not this machine's
            from pipeline.extract.ray_engine import ray_device, require_ray

            require_ray()
            device = ray_device(ecfg)
        else:
            device = resolve_device(ecfg.device)
    except BaseException as e:
        if helper is not None:
            helper.close()
        if isinstance(e, ValueError):
            raise UserError(str(e), exit_code=2) from None
        raise

    with _Lock(out), contextlib.closing(helper) if helper is not None else contextlib.nullcontext():
        clean_stale_temp_files(out)
        if rows:
            write_labels(rows, out / "labels.csv")
        ids = assign_ids(clips, rows, videos_dir)
        previous = {str(r.get("clip_id")): r for r in read_manifest(out) if r.get("status") in ("ok", "cached")}
        manifest = _Manifest(out, len(clips))
        todo: list[tuple[int, dict[str, Any]]] = []
        outdated: list[dict[str, Any]] = []   # clips whose earlier entry was made with other settings/versions
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
                old = previous.get(clip_id)
                if old is not None and old.get("entry") and old.get("entry") != job["entry"]:
                    outdated.append(old)
                todo.append((i, job))
            todo = _probed(todo, ecfg, manifest, bar)   # bad files fail here, before any model is loaded
            if outdated:
                log.warning("%s", outdated_message(outdated))
            if todo:
                n_workers = min(workers, len(todo))
                if engine == "local":
                    log.info("extracting %d clips (%d cached) on %s with %d worker%s", len(todo),
                             len(clips) - len(todo), device, n_workers, "s" if n_workers > 1 else "")
                else:
                    log.info("extracting %d clips (%d cached) on %s with the Ray engine", len(todo),
                             len(clips) - len(todo), device)
                try:
                    if engine == "ray":
                        from pipeline.extract.ray_engine import run_ray

                        run_ray(todo, ecfg, device, ray_workers, manifest, bar, job_fn or worker_job)
                    elif n_workers <= 1:
                        run_in_process(todo, ecfg, device, manifest, bar, acoustic=helper)
                    else:
                        run_pool(todo, ecfg, device, n_workers, manifest, bar, job_fn or worker_job)
                finally:
                    manifest.flush()
        manifest.flush()
    return summarize([r for r in manifest.records if r is not None])


def _probed(todo: list[tuple[int, dict[str, Any]]], ecfg: Any, manifest: Any, bar: Any
            ) -> list[tuple[int, dict[str, Any]]]:
    """The jobs whose clip ffprobe can use, each with its ``info``; the others are failed in the
    manifest.  The probes (one ffprobe process each) run four at a time."""
    from concurrent.futures import ThreadPoolExecutor

    from extractors.errors import ExtractionError
    from pipeline.extract.clip import probe_clip

    def probe(job: dict[str, Any]) -> tuple[Any, float, ExtractionError | None]:
        t0 = time.perf_counter()
        try:
            return probe_clip(Path(job["path"]), ecfg), time.perf_counter() - t0, None
        except ExtractionError as e:
            return None, time.perf_counter() - t0, e

    kept = []
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="probe") as pool:
        for (i, job), (info, seconds, error) in zip(todo, pool.map(probe, [job for _, job in todo])):
            if error is not None:
                manifest.put(i, failed_record(job, str(error)))
                bar.update(1)
                continue
            job["info"], job["probe_s"] = info, seconds
            kept.append((i, job))
    return kept


def _with_ray_address(ecfg: Any, address: str) -> Any:
    """``ecfg`` with ``extract.ray.address`` = ``address`` (the --ray-address option), validated."""
    from pydantic import ValidationError

    try:
        ray_cfg = type(ecfg.ray).model_validate({**ecfg.ray.model_dump(), "address": address})
    except ValidationError as e:
        raise UserError(f"--ray-address {address!r}: {e.errors()[0]['msg']}", exit_code=2) from None
    return ecfg.model_copy(update={"ray": ray_cfg})


def outdated_message(outdated: list[dict[str, Any]]) -> str:
    """One line saying that clips cached with other settings or versions are extracted again (never
    mixed with the new ones), naming the earlier face features when those were what changed."""
    faces = sorted({str((r.get("versions") or {}).get("face")) for r in outdated} - {"None"})
    cause = f" (earlier face features: {', '.join(faces)})" if faces else ""
    return (f"{len(outdated)} clip{'s' if len(outdated) != 1 else ''} cached with other extraction settings "
            f"or versions{cause}: extracting again")


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
