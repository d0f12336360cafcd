"""Training past one process: DDP under torchrun or ``train --nproc N``, and seeds in parallel.

Distributed data parallel (one model replica per process):

* detected from the environment torchrun sets (``WORLD_SIZE`` > 1, ``RANK``, ``LOCAL_RANK``,
  ``MASTER_ADDR``/``MASTER_PORT``), so ``torchrun --nproc_per_node N -m pipeline.cli train ...`` (and
  multi-node ``--nnodes``/``--rdzv-endpoint``) runs the ordinary command; ``train --nproc N`` starts N
  local processes with that environment itself (:func:`launch_local`).  gloo on CPU, NCCL on CUDA
  (each process on GPU ``LOCAL_RANK``).
* ``train.batch_size`` stays the *global* batch: each process takes ``batch_size / world`` samples a
  step (it must divide), drawn by a ``DistributedSampler`` whose permutation is the single-process
  one (seed ``seed * 1000003 + epoch`` via ``set_epoch``), so with equal shares the N processes together
  see the single process's batches and DDP's averaged gradient is the single process's gradient.
  A train split that does not divide by N is padded by the sampler with repeated samples.  Losses
  that are taken over a whole batch (the frame means of L_rec, L_cyc, L_ort; the triplets of L_mar and
  L_ctr) are taken over each process's share, as in any DDP run; the per-sample ones (task, L_dtl) and
  their gradients equal the single process's.
* validation and test run on a strided share per process and are gathered into the whole split in its
  order before any metric is computed (:func:`evaluate_samples`), so every process gets the same
  metrics and takes the same learning-rate and early-stopping decisions.
* only rank 0 writes the run's files and logs (progress messages of the others are silenced); every
  process's RNG state goes into last.pt so that ``--resume`` continues each one exactly.  Every rank
  reads best.pt / last.pt from the run folder: in a multi-node run ``--out`` must be on a file system
  all nodes share.

Seeds in parallel (``train --seeds 1,2,3 --parallel K``, :func:`run_parallel`): K worker processes,
each training one seed at a time; with GPUs, worker i sees only GPU i (CUDA_VISIBLE_DEVICES), on CPU
the cores are split between workers.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from pipeline.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from pipeline.training.dataset import Normalizer
    from pipeline.training.evaluate import PassResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    """Where this process stands in a distributed run (world 1: a plain single-process run)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_STATE = Dist()


def current() -> Dist:
    """This process's place in the run set up by :func:`setup` (world 1 outside one)."""
    return _STATE


def env_world() -> int:
    """WORLD_SIZE from the environment (torchrun or --nproc), 1 when absent."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise UserError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number", exit_code=2) from None


def setup(device: str) -> Dist:
    """Join the process group when the environment describes one (idempotent); the process's Dist.

    ``device`` is train.device: NCCL when it resolves to CUDA, gloo otherwise."""
    global _STATE
    world = env_world()
    if world <= 1 or _STATE.enabled:
        return _STATE
    import torch
    import torch.distributed as dist

    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise UserError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: start distributed training "
                        f"with torchrun or train --nproc N", exit_code=2)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise UserError("train.device = \"cuda\" but no CUDA device is available; use \"auto\" or \"cpu\"",
                        exit_code=2)
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank)
    # torch.distributed.nn.functional binds group.WORLD as a default argument when it is first imported,
    # and DDP imports it: imported after init_process_group, it would hold the group for the life of the
    # process, so destroy_process_group could not free it and the group's native threads (gloo's, and
    # rank 0's TCPStore server) would still run while the interpreter exits, which now and then ended a
    # finished run with "terminate called without an active exception".  Imported first, it binds None.
    import torch.distributed.nn  # noqa: F401
    if not dist.is_initialized():
        dist.init_process_group(backend)
    _STATE = Dist(rank=rank, world=world, local_rank=local_rank, backend=backend)
    if rank != 0:   # one voice: rank 0 logs progress, the others only errors
        for name in ("pipeline", "dhmd_pipeline", "dhmd"):
            logging.getLogger(name).setLevel(logging.ERROR)
    log.info("distributed training: %d processes (%s), this is rank %d", world, backend, rank)
    return _STATE


def teardown() -> None:
    """Leave the process group (after the last collective); the group's threads end here, not at exit."""
    global _STATE
    if _STATE.enabled:
        import gc

        import torch.distributed as dist

        from dhmd.keep_apply import shutdown

        shutdown()          # the dropout kernels' threads end before gloo's
        gc.collect()        # a DDP module left in a reference cycle holds the group through its reducer
        if dist.is_initialized():
            dist.destroy_process_group()
    _STATE = Dist()


def train_device(device: str) -> str:
    """The device of this process: ``cuda:LOCAL_RANK`` in a distributed CUDA run, else ``device``."""
    if _STATE.enabled and device.startswith("cuda"):
        return f"cuda:{_STATE.local_rank}"
    return device


def barrier() -> None:
    if _STATE.enabled:
        import torch.distributed as dist

        dist.barrier()


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order (``[obj]`` outside a distributed run)."""
    if not _STATE.enabled:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * _STATE.world
    dist.all_gather_object(out, obj)
    return out


def sum_over_ranks(sums: dict[str, float], n: int) -> tuple[dict[str, float], int]:
    """Per-sample loss sums and the sample count added over every rank (the same keys on every rank)."""
    if not _STATE.enabled:
        return sums, n
    parts = all_gather((sums, n))
    total = {k: sum(p[0].get(k, 0.0) for p in parts) for k in parts[0][0]}
    return total, sum(p[1] for p in parts)


def local_batch_size(batch_size: int) -> int:
    """Each process's share of the global train.batch_size."""
    if not _STATE.enabled:
        return batch_size
    if batch_size % _STATE.world:
        raise UserError(f"train.batch_size = {batch_size} does not divide by the {_STATE.world} processes: "
                        f"the global batch is split evenly between them; choose a multiple of "
                        f"{_STATE.world}", exit_code=2)
    return batch_size // _STATE.world


def train_sampler(dataset: Any, seed: int, epoch: int) -> Any:
    """The epoch's shuffling: the single-process permutation (randperm seeded ``seed * 1000003 + epoch``),
    in a distributed run split between the ranks by a DistributedSampler (``set_epoch``)."""
    import torch
    from torch.utils.data import DistributedSampler, RandomSampler

    if not _STATE.enabled:
        gen = torch.Generator()
        gen.manual_seed(seed * 1_000_003 + epoch)
        return RandomSampler(dataset, generator=gen)
    sampler = DistributedSampler(dataset, num_replicas=_STATE.world, rank=_STATE.rank, shuffle=True,
                                 seed=seed * 1_000_003, drop_last=False)
    sampler.set_epoch(epoch)
    return sampler


def wrap_model(model: "torch.nn.Module", device: str) -> "torch.nn.Module":
    """The module the training step calls: DDP around ``model`` in a distributed run, else ``model``.

    DDP broadcasts rank 0's weights at construction and averages gradients in backward."""
    if not _STATE.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [_STATE.local_rank] if device.startswith("cuda") else None
    return DistributedDataParallel(model, device_ids=device_ids)


def seed_rank(seed: int) -> None:
    """Give ranks > 0 torch RNG streams of their own (dropout masks differ between the shares of a
    batch); rank 0 keeps the single-process stream."""
    if _STATE.enabled and _STATE.rank > 0:
        import torch

        torch.manual_seed(seed * 1_000_003 + 7_919 * _STATE.rank)


def gather_rng(state: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Every rank's RNG state (for last.pt), None outside a distributed run."""
    return all_gather(state) if _STATE.enabled else None


def rank_rng(resume: dict[str, Any]) -> dict[str, Any] | None:
    """This rank's RNG state from a last.pt of a distributed run of the same size, else None."""
    states = resume.get("rng_ranks")
    if not _STATE.enabled or not states:
        return None
    if len(states) != _STATE.world:
        log.warning("last.pt was written by %d processes, this run has %d: the RNG streams of ranks > 0 "
                    "start afresh", len(states), _STATE.world)
        return None
    return states[_STATE.rank]


def _merge(parts: Sequence["PassResult"], counts: Sequence[int]) -> "PassResult":
    """Per-rank passes over samples[r::world] -> one pass over the whole split in its order."""
    from pipeline.training.evaluate import PassResult

    world, total = len(parts), sum(counts)
    order = [(i % world, i // world) for i in range(total)]      # sample i is item i // world of rank i % world
    preds = np.stack([parts[r].predictions[j] for r, j in order]) if total else parts[0].predictions
    labels = None
    if all(p.labels is not None for p in parts if len(p.ids)):
        labels = np.stack([parts[r].labels[j] for r, j in order]) if total else None
    losses = {k: sum(p.losses.get(k, 0.0) * c for p, c in zip(parts, counts)) / max(total, 1)
              for k in parts[0].losses}
    edges: dict[str, np.ndarray | None] = {}
    for space in parts[0].edges:
        shares = [(p.edges.get(space), c) for p, c in zip(parts, counts) if c]
        edges[space] = None if any(e is None for e, _ in shares) else \
            sum(e * c for e, c in shares) / max(total, 1)
    return PassResult(predictions=preds, labels=labels, ids=[parts[r].ids[j] for r, j in order],
                      losses=losses, edges=edges)


def evaluate_samples(model: "torch.nn.Module", samples: Sequence[dict], normalizer: "Normalizer | None",
                     task: str, batch_size: int, device: str, amp: bool = True, desc: str = "eval"
                     ) -> tuple[dict[str, float], "PassResult"]:
    """pipeline.training.evaluate.evaluate_samples over the whole split: in a distributed run each rank
    predicts samples[rank::world], the passes are gathered and merged in the split's order, and the
    metrics computed from all of it (the same values on every rank)."""
    from pipeline.training import evaluate
    from pipeline.training.metrics import task_metrics

    if not _STATE.enabled:
        return evaluate.evaluate_samples(model, samples, normalizer, task, batch_size, device, amp, desc)
    share = list(samples[_STATE.rank::_STATE.world])
    res = evaluate.run_model(model, share, normalizer, batch_size, device, amp, desc,
                             progress=_STATE.is_main) if share else None
    gathered = all_gather((res, len(share)))
    parts = [p for p, c in gathered if c]
    merged = _merge(parts, [c for _, c in gathered if c])
    return task_metrics(task, merged.predictions, merged.labels), merged


# ---------------------------------------------------------------------------------------- processes

def _die_with_parent() -> None:
    """In a child: get SIGKILL when the parent dies (Linux), so no worker outlives a killed launcher."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _threads_each(k: int) -> str:
    return os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // k))


def launch_local(nproc: int, argv: list[str]) -> int:
    """``train --nproc N``: run ``python -m pipeline.cli <argv>`` in N local processes with the
    environment torchrun would give them; wait for all.  The first failing process ends the others;
    an interrupt or SIGTERM ends them all; they die with this process.  Exit status: 0 when all
    succeeded, else the first non-zero one."""
    if env_world() > 1:
        raise UserError("--nproc inside a distributed run (WORLD_SIZE is set, e.g. by torchrun): use one "
                        "or the other", exit_code=2)
    port = _free_port()
    procs: list[subprocess.Popen] = []

    def stop(*_: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        for rank in range(nproc):
            env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(nproc),
                   "RANK": str(rank), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(nproc),
                   "OMP_NUM_THREADS": _threads_each(nproc)}
            procs.append(subprocess.Popen([sys.executable, "-m", "pipeline.cli", *argv], env=env,
                                          preexec_fn=_die_with_parent))
        code = 0
        while any(p.poll() is None for p in procs):
            failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
            if failed:
                code = failed[0]
                break
            time.sleep(0.2)
        if code == 0:
            code = next((p.returncode for p in procs if p.returncode), 0)
        return code
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        signal.signal(signal.SIGTERM, previous)


def _init_worker(devices: Any, threads: str, level: int) -> None:
    """A seed worker: one GPU of its own (when there are GPUs), its share of the CPU threads."""
    _die_with_parent()
    os.environ["OMP_NUM_THREADS"] = threads
    gpu = devices.get() if devices is not None else None
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    logging.basicConfig(level=level, format=f"[worker{'' if gpu is None else f' gpu {gpu}'}] %(message)s")
    import torch

    torch.set_num_threads(int(threads))


def cuda_count() -> int:
    """Visible CUDA devices in this process (0 without torch CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_parallel(fn: Callable[..., Any], jobs: Sequence[tuple], k: int, use_cuda: bool) -> list[Any]:
    """``fn(*job)`` for every job in K spawned worker processes; the results in job order.

    With ``use_cuda`` the workers are at most the number of GPUs and each owns one.  A failing job
    re-raises its error here after the running ones finished; the workers end with this process."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    devices = None
    if use_cuda:
        n_gpu = cuda_count()
        if k > n_gpu:
            log.warning("--parallel %d with %d GPUs: running %d seeds at once, one GPU each", k, n_gpu, n_gpu)
            k = n_gpu
        devices = ctx.Manager().Queue()
        for i in range(k):
            devices.put(i)
    k = max(1, min(k, len(jobs)))
    level = logging.getLogger("pipeline").getEffectiveLevel()
    with ProcessPoolExecutor(max_workers=k, mp_context=ctx, initializer=_init_worker,
                             initargs=(devices, _threads_each(k), level)) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        return [f.result() for f in futures]
