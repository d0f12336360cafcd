"""The local engines: clips in this process (one worker) or in a pool of spawned processes.

Both load the extraction models once per process and run :func:`pipeline.extract.jobs.extract_job`
for each clip; the driver (:mod:`pipeline.extract.batch`) gives them the jobs, the manifest and
the progress bar.  A worker process that dies takes no other clip with it (see :func:`run_pool`);
a worker process never outlives this one, however this one dies (see :func:`watch_parent`).
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any, Callable

from pipeline.errors import UserError
from pipeline.extract.jobs import extract_job, failed_record
from pipeline.logs import current_levels, setup_logging

log = logging.getLogger(__name__)


# worker-process state: the models are loaded once per process by the pool initializer
_WORKER: dict[str, Any] = {}


PARENT_POLL_S = 0.5          # how often a worker process checks that the process that started it lives


def watch_parent(parent_pid: int, interval_s: float = PARENT_POLL_S) -> None:
    """Exit this process (``os._exit``) within ``interval_s`` of process ``parent_pid`` dying.

    However the parent dies (SIGKILL by the OOM killer or a scheduler included, when no cleanup
    code runs), this process is re-parented and ``os.getppid()`` changes: a daemon thread polls it.
    Chosen over ``prctl(PR_SET_PDEATHSIG)``, which fires when the *thread* that spawned the process
    exits (ProcessPoolExecutor may spawn from a helper thread) and exists on Linux only.  What the
    worker was writing is lost safely: entries are written atomically, a rerun removes the
    temporary file and extracts the clip again.
    """
    import threading

    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(interval_s)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _init_worker(cfg_json: str, device: str, threads: int, log_levels: tuple[int, int],
                 parent_pid: int | None = None, face_device: str | None = None) -> None:
    if parent_pid is not None:     # no orphans: a worker never outlives the process that started it
        watch_parent(parent_pid)
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
        from pipeline.extract.clip import ExtractorModels

        cfg = ExtractConfig.model_validate_json(cfg_json)
        _WORKER.update(cfg=cfg, models=ExtractorModels.load(cfg, device, face_device=face_device))
    except Exception as e:   # reported with the first job, which stops the run with the cause
        _WORKER["error"] = f"{type(e).__name__}: {e}" if not str(e) else str(e)


def worker_job(job: dict[str, Any]) -> dict[str, Any]:
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


def run_in_process(jobs: list[tuple[int, dict[str, Any]]], cfg: Any, device: str, manifest: Any,
                    bar: Any, acoustic: Any = None) -> None:
    """Extract the jobs in this process, one clip after the other (each clip's video beside its
    audio, and ahead of the next clips' audio); ``acoustic``: a started AcousticProcess to use."""
    from extractors.errors import ModelLoadError
    from pipeline.extract.clip import ExtractorModels, VideoAhead

    try:
        models = ExtractorModels.load(cfg, device, acoustic=acoustic)
    except ModelLoadError as e:
        raise UserError(str(e), exit_code=2) from None
    # the video branch runs ahead of the audio branch, across clips (VideoAhead)
    ahead = VideoAhead([(Path(job["path"]), job["info"].has_video if job.get("info") else False)
                        for _, job in jobs], cfg, models)
    try:
        for n, (i, job) in enumerate(jobs):
            bar.set_postfix_str(Path(job["path"]).name[-30:], refresh=False)
            try:
                rec = extract_job({**job, "video": ahead.get(n)} if job.get("info") else job, cfg, models)
            except ModelLoadError as e:       # the speech recogniser, loaded by the first clip needing it
                raise UserError(str(e), exit_code=2) from None
            manifest.put(i, rec)
            bar.update(1)
    finally:
        ahead.close()
        models.close()


WORKER_DIED = ("the worker process died while extracting this clip on its own (a crash in native code, "
               "or the process was killed, e.g. out of memory)")


def run_pool(jobs: list[tuple[int, dict[str, Any]]], cfg: Any, device: str, workers: int,
              manifest: Any, bar: Any, job_fn: Callable[[dict[str, Any]], dict[str, Any]] = worker_job
              ) -> None:
    """Run jobs in ``workers`` spawned processes; a worker that dies fails its own clip, no other.

    ``job_fn`` is what a worker runs per clip (:func:`worker_job`; it is sent to the processes by
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
    init_args = (cfg.model_dump_json(), device, threads, current_levels(), os.getpid())
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
