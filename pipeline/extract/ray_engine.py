"""The Ray engine (``extract --engine ray``): clips extracted by Ray actors, on this machine or a cluster.

The driver (:mod:`pipeline.extract.batch`) does what it does for the local engine: discovery, ids,
cache reuse, probing, the manifest and the summary.  This module gives the remaining jobs to
``workers`` Ray actors.  Each actor loads the extraction models once (the same worker set-up as
the local process pool, :func:`pipeline.extract.pool._init_worker`) and runs
:func:`pipeline.extract.jobs.extract_job` for one clip at a time, writing the clip's entry
atomically into the cache folder itself; only the small manifest record comes back to the
driver, which writes the manifest.  Same code per clip, same settings, same cache keys: the
entries equal those of the local engine.

Why Ray Core actors and not Ray Data (``map_batches`` with an actor pool):

* One clip in flight per actor, so when an actor dies (a crash in native code, the OOM killer)
  the clip that killed it is known exactly: it is given once more to a *fresh* actor, and failed
  with its cause only if that one dies too; no other clip is touched.  Ray Data retries whole
  tasks/blocks and reports errors per batch, so a poisonous clip would be hard to isolate.
* Records stream back one by one, as clips finish, to the same driver code as the local engine
  (manifest rewritten as it goes, progress bar), so an interrupted run resumes from the cache.
* The features never travel through Ray's object store (actors write entries to the shared
  cache folder), so Ray Data's block format (pyarrow) would only add a dependency and copies.

Where things run: an actor reserves ``extract.ray.num_cpus`` CPUs and ``extract.ray.num_gpus``
GPUs.  With GPUs, the text encoder and the speech recogniser run on the actor's GPU (Ray sets
``CUDA_VISIBLE_DEVICES`` for it) and the face backend and acoustic features on its CPUs.

Connecting: ``extract.ray.address`` empty starts a local Ray instance sized to this machine (no
dashboard), guarded by :mod:`pipeline.extract.reaper` so that it dies with this process however
this process dies; ``auto`` or ``ray://host:port`` joins a running cluster, where Ray itself ends
the actors we started when the driver goes away (they are owned by it and not detached).  A Ray
instance already initialised in this process (a notebook, the tests) is used as it is.
"""
from __future__ import annotations

import logging
import os
from collections import Counter, deque
from typing import Any, Callable

from pipeline.errors import UserError
from pipeline.extract.jobs import failed_record
from pipeline.extract.pool import _init_worker, _worker_ready, worker_job
from pipeline.logs import current_levels

log = logging.getLogger(__name__)

OBJECT_STORE_BYTES = 256 * 1024 ** 2    # a local instance's object store: only jobs and records pass through it
ACTOR_DIED = ("the Ray worker died while extracting this clip, and again on a fresh worker (a crash in native "
              "code, or the process was killed, e.g. out of memory)")


def require_ray() -> None:
    """UserError (exit status 2) when Ray is not installed, before any clip is probed."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise UserError("extract --engine ray needs Ray: run `make install` (it installs ray[client]==2.60.0), "
                        "or use --engine local", exit_code=2)


def ray_device(ecfg: Any) -> str:
    """The device of the actors' text encoder and speech recogniser (it enters the cache keys).

    Decided by the actors' resources, not by this machine (the driver may have no GPU): "cuda" when
    ``extract.ray.num_gpus`` > 0 (unless ``extract.device`` is "cpu"), else "cpu".
    """
    gpus = float(ecfg.ray.num_gpus)
    if ecfg.device == "cuda" and gpus <= 0:
        raise UserError("extract.device is 'cuda' but extract.ray.num_gpus is 0: give each Ray worker a GPU "
                        "(--set extract.ray.num_gpus=1) or use extract.device = 'auto'", exit_code=2)
    if ecfg.device == "cpu" and gpus > 0:
        log.warning("extract.device is 'cpu': the GPUs reserved by extract.ray.num_gpus stay unused")
    return "cuda" if gpus > 0 and ecfg.device != "cpu" else "cpu"


def _connect(ecfg: Any) -> tuple[bool, Any]:
    """Initialise Ray unless it is already; returns (we started it, the reaper guarding it or None)."""
    import ray

    if ray.is_initialized():
        return False, None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")    # offline clusters: no usage report
    address = ecfg.ray.address
    if address in ("", "local"):
        from pipeline.extract.reaper import start_reaper

        reaper = start_reaper()
        try:
            ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
                     object_store_memory=OBJECT_STORE_BYTES, configure_logging=False, log_to_driver=True)
        except BaseException:
            reaper.close()
            raise
        return True, reaper
    try:
        ray.init(address=address, configure_logging=False, log_to_driver=True)
    except ImportError as e:        # ray:// needs the client extra (grpcio)
        raise UserError(f"extract.ray.address {address!r}: Ray Client is not installed ({e}); "
                        "run `make install` (ray[client]) or use --ray-address auto on a cluster node",
                        exit_code=2) from None
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UserError(f"extract.ray.address {address!r}: cannot join the Ray cluster: "
                        f"{' '.join(str(e).split())[:300]}", exit_code=2) from None
    return True, None


def _n_workers(ecfg: Any, workers: int | None, n_jobs: int) -> int:
    """``workers`` (the --workers option), else ``extract.ray.workers``, else as many actors as the
    cluster's CPUs (and GPUs, when each actor needs some) hold; never more than the clips."""
    import ray

    n = workers or ecfg.ray.workers
    if not n:
        res = ray.cluster_resources()
        n = int(res.get("CPU", 1) // ecfg.ray.num_cpus)
        if ecfg.ray.num_gpus > 0:
            n = min(n, int(res.get("GPU", 0) // ecfg.ray.num_gpus))
        if n < 1:
            raise UserError(f"the Ray cluster has {res.get('CPU', 0):g} CPUs and {res.get('GPU', 0):g} GPUs: "
                            f"not enough for one worker (extract.ray.num_cpus = {ecfg.ray.num_cpus:g}, "
                            f"num_gpus = {ecfg.ray.num_gpus:g})", exit_code=2)
    return max(1, min(int(n), n_jobs))


def _actor_class() -> Any:
    import ray

    class ExtractWorker:
        """One Ray worker: the models loaded once, then one clip per :meth:`run` call."""

        def __init__(self, cfg_json: str, device: str, threads: int, log_levels: tuple[int, int], cwd: str,
                     job_fn: Callable[[dict[str, Any]], dict[str, Any]]):
            try:     # relative clip paths mean the same on every node that has the driver's folder
                os.chdir(cwd)
            except OSError:
                pass
            _init_worker(cfg_json, device, threads, log_levels, face_device="cpu")
            self.job_fn = job_fn

        def ready(self) -> dict[str, Any]:
            ctx = ray.get_runtime_context()
            return {"error": _worker_ready(), "pid": os.getpid(), "node": ctx.get_node_id(),
                    "gpus": [str(g) for g in ray.get_gpu_ids()]}

        def run(self, job: dict[str, Any]) -> dict[str, Any]:
            return self.job_fn(job)

    return ray.remote(max_restarts=0, max_task_retries=0)(ExtractWorker)


def run_ray(jobs: list[tuple[int, dict[str, Any]]], ecfg: Any, device: str, workers: int | None,
            manifest: Any, bar: Any,
            job_fn: Callable[[dict[str, Any]], dict[str, Any]] = worker_job) -> None:
    """Extract ``jobs`` ((index, job) pairs) on Ray actors; each record goes to ``manifest.put``.

    ``device`` is :func:`ray_device`'s.  ``job_fn`` is what an actor runs per clip (default
    :func:`pipeline.extract.pool.worker_job`; tests give one that kills its actor).  A model that
    cannot load stops the run (exit status 2), as an actor dying while loading does (exit status
    1); an actor dying on a clip is replaced, the clip retried once on the new actor, then failed
    with :data:`ACTOR_DIED`.
    """
    import ray
    from ray.exceptions import RayActorError, RayError

    died_errors: tuple[type[BaseException], ...] = (RayActorError,)
    for name in ("WorkerCrashedError", "OutOfMemoryError", "NodeDiedError"):
        if hasattr(ray.exceptions, name):
            died_errors += (getattr(ray.exceptions, name),)

    started, reaper = _connect(ecfg)
    actors: list[Any] = []
    try:
        n = _n_workers(ecfg, workers, len(jobs))
        threads = max(1, int(ecfg.ray.num_cpus))
        cls = _actor_class().options(num_cpus=ecfg.ray.num_cpus, num_gpus=ecfg.ray.num_gpus)
        init_args = (ecfg.model_dump_json(), device, threads, current_levels(), os.getcwd(), job_fn)
        counts = Counter(r["status"] for r in manifest.records if r is not None)
        log.info("ray: %d workers (%g CPU, %g GPU each) on a cluster of %s", n, ecfg.ray.num_cpus,
                 ecfg.ray.num_gpus, ", ".join(f"{v:g} {k}" for k, v in sorted(ray.cluster_resources().items())
                                              if k in ("CPU", "GPU")))

        queue: deque[tuple[int, dict[str, Any], int]] = deque((i, job, 0) for i, job in jobs)
        idle: list[Any] = []
        pinned: dict[Any, tuple[int, dict[str, Any], int]] = {}     # a retry waits for its fresh actor
        in_flight: dict[Any, tuple[Any, tuple[int, dict[str, Any], int] | None]] = {}

        def start_actor(retry: tuple[int, dict[str, Any], int] | None = None) -> None:
            actor = cls.remote(*init_args)
            actors.append(actor)
            if retry is not None:
                pinned[actor] = retry
            in_flight[actor.ready.remote()] = (actor, None)

        def finish(i: int, rec: dict[str, Any]) -> None:
            if rec.pop("fatal", False):
                raise UserError(rec["error"], exit_code=2)
            manifest.put(i, rec)
            counts[rec["status"]] += 1
            bar.set_postfix_str(f"{counts['ok']} ok, {counts['cached']} cached, {counts['failed']} failed",
                                refresh=False)
            bar.update(1)

        def drop(actor: Any) -> None:
            actors.remove(actor)
            ray.kill(actor, no_restart=True)

        for _ in range(n):
            start_actor()
        while queue or in_flight or pinned:
            for actor in list(idle):                 # a retry goes to the fresh actor started for it
                if actor in pinned:
                    item = pinned.pop(actor)
                elif queue:
                    item = queue.popleft()
                else:
                    continue
                idle.remove(actor)
                in_flight[actor.run.remote(item[1])] = (actor, item)
            done, _ = ray.wait(list(in_flight), num_returns=1)
            ref = done[0]
            actor, item = in_flight.pop(ref)
            if item is None:                         # an actor answered ready() (models loaded), or died
                try:
                    info = ray.get(ref)
                except died_errors:
                    raise UserError("a Ray worker died while loading the extraction models (a crash in native "
                                    "code, or out of memory); no clip can be extracted", exit_code=1) from None
                if info["error"]:
                    raise UserError(info["error"], exit_code=2)
                log.debug("ray worker ready: pid %s on node %s, GPUs %s", info["pid"], info["node"], info["gpus"])
                if actor in pinned or queue:
                    idle.append(actor)
                else:
                    drop(actor)
                continue
            i, job, tries = item
            try:
                rec = ray.get(ref)
            except died_errors as e:
                drop(actor)
                if tries == 0:
                    log.warning("%s: the Ray worker extracting it died (%s); trying once more on a fresh worker",
                                job["path"], type(e).__name__)
                    start_actor(retry=(i, job, 1))
                else:
                    log.warning("%s: %s", job["path"], ACTOR_DIED)
                    finish(i, failed_record(job, f"{job['path']}: {ACTOR_DIED}"))
                    if queue:
                        start_actor()
                continue
            except RayError as e:
                cause = getattr(e, "cause", None) or e
                rec = failed_record(job, f"{job['path']}: unexpected {type(cause).__name__}: "
                                         f"{' '.join(str(cause).split())[:300]}")
            finish(i, rec)
            if queue:
                idle.append(actor)
            else:
                drop(actor)
    finally:
        for actor in actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:       # already gone
                pass
        if started:
            ray.shutdown()
        if reaper is not None:
            reaper.close()
