"""Benchmark the extract engines: the local engine and the Ray engine with 1 and 2 workers, same clips.

Makes N clips (as ``bench/extract.py``: espeak-ng demo sentences over the moving face, 3-5 s each,
reused from --workdir), then runs the real command ``dhmd-pipeline extract`` in a fresh process on an
empty cache folder for each engine and worker count, in one run.  The Ray engine starts its own
local Ray instance (empty ``extract.ray.address``), as a user on one machine would.  Prints one
Markdown table:

- ``wall s``: the whole command; ``clips/s``: clips / wall (start-up included).
- ``clip work s``: seconds inside clips summed over clips (each entry's ``timings_s.total``), and
  ``clips/s (work)`` = clips / (clip work / workers): the rate once start-up is amortised.
- ``other s`` = wall - clip work / workers: imports, model loading, and for Ray starting the
  instance and the actors and passing jobs and records.
- Above the table, measured once in a fresh process: the local Ray instance's start (Ray's import
  included) and stop, and Ray's overhead per clip: the mean round trip of an actor call that takes a
  job and returns a manifest record (what the engine adds per clip besides its fixed start-up; the
  entries never pass through Ray).  The wall-clock columns of Ray and local runs differ by far more
  than that only through start-up and the machine's load.

    python bench/extract_engines.py --clips 8 --workers 1 2
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))   # run from a checkout as well
sys.path.insert(0, str(BENCH))

RAY_START = """
import json, os, sys, time
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
t0 = time.perf_counter()
import ray
ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, object_store_memory=256 * 1024 ** 2,
         configure_logging=False)
t1 = time.perf_counter()

@ray.remote(num_cpus=1)
class Echo:
    def run(self, job):
        return dict(job, status="ok")

job, rec = json.loads(sys.argv[1]), None
actor = Echo.remote()
ray.get([actor.run.remote(job) for _ in range(5)])        # started and warm
t2 = time.perf_counter()
for _ in range(CALLS):
    ray.get(actor.run.remote(job))
t3 = time.perf_counter()
ray.shutdown()
print(t1 - t0, time.perf_counter() - t3, (t3 - t2) / CALLS)
"""
CALLS = 200


def ray_costs(record: dict) -> tuple[float, float, float]:
    """In a fresh process: seconds to import Ray and start a local instance, to stop it, and the round
    trip of one actor call carrying a job out and a manifest record back (``record`` as both)."""
    out = subprocess.run([sys.executable, "-c", RAY_START.replace("CALLS", str(CALLS)), json.dumps(record)],
                         capture_output=True, text=True, check=True)
    start, stop, call = out.stdout.split()[-3:]
    return float(start), float(stop), float(call)


def run_engine(videos: Path, out: Path, engine: str, workers: int) -> tuple[float, list[dict]]:
    """Wall seconds of one ``extract`` run, and its records."""
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "pipeline.cli", "extract", str(videos), "--out", str(out), "--engine", engine,
           "--workers", str(workers), "--quiet", "--set", 'extract.device="cpu"']
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"extract --engine {engine} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line.strip()]
    return wall, records


def main() -> None:
    from extract import make_clips     # bench/extract.py

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=8, help="clips in the batch (default 8)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default 1 2)")
    ap.add_argument("--workdir", type=Path, default=Path("bench/out/extract"), help="clips and caches go here")
    args = ap.parse_args()

    videos = make_clips(args.workdir / "videos", args.clips)[0].parent
    rows = []
    for w in args.workers:
        for engine in ("local", "ray"):
            load = os.getloadavg()[0]
            wall, recs = run_engine(videos, args.workdir / f"cache_{engine}_w{w}", engine, w)
            work = sum(r["timings_s"].get("total", 0.0) for r in recs)
            rows.append({"engine": engine, "workers": w, "clips": len(recs), "load": load, "wall_s": wall,
                         "work_s": work, "other_s": wall - work / w})
    record = json.loads((args.workdir / f"cache_local_w{args.workers[0]}" / "manifest.jsonl").read_text().splitlines()[0])
    ray_start, ray_stop, ray_call = ray_costs(record)
    print(f"extract engines benchmark, {datetime.date.today()}, {os.cpu_count()} CPU cores "
          f"({platform.processor() or platform.machine()}), device cpu, {args.clips} clips; "
          f"local Ray instance: start {ray_start:.1f} s (import included), stop {ray_stop:.1f} s; "
          f"Ray overhead per clip (one actor call, job out, record back; mean of {CALLS}): {ray_call * 1000:.1f} ms")
    print()
    head = ["engine", "workers", "clips", "load", "wall s", "clips/s", "clip work s", "clips/s (work)",
            "other s"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        n, w = r["clips"], r["workers"]
        print("| " + " | ".join([r["engine"], str(w), str(n), f"{r['load']:.1f}", f"{r['wall_s']:.1f}",
                                 f"{n / r['wall_s']:.3f}", f"{r['work_s']:.1f}",
                                 f"{n / (r['work_s'] / w):.3f}", f"{r['other_s']:.1f}"]) + " |")


if __name__ == "__main__":
    main()
