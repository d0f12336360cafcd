"""No orphans: when ``extract`` is killed with SIGKILL (as the OOM killer or a cluster scheduler does),
every process it started (pool workers; the local Ray instance and its actors) exits within seconds.

Each test runs the real command in its own session, waits until its workers have loaded their
models and are extracting, notes every descendant process, kills the main process with SIGKILL and
checks that none of the descendants is left.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

pytestmark = pytest.mark.slow

READY = "extraction models ready"      # logged by each pool worker once its models are loaded
GONE_WITHIN_S = 10.0


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                out += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def _descendants(pid: int) -> dict[int, str]:
    """pid -> command line of every process below ``pid``."""
    found: dict[int, str] = {}
    todo = _children(pid)
    while todo:
        p = todo.pop()
        try:
            found[p] = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
        except OSError:
            continue
        todo += _children(p)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"      # a zombie has exited (only its entry waits to be reaped)


def _kill_extract_and_check(tmp_path: Path, clip: Path, args: list[str], busy: Callable[[str, dict[int, str]], bool],
                            n_clips: int = 6) -> dict[int, str]:
    """Run extract with ``args`` on ``n_clips`` copies of ``clip``; once ``busy(stderr so far, descendants)``,
    kill it with SIGKILL and check that every descendant exits within GONE_WITHIN_S.  Returns them."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(n_clips):
        shutil.copy(clip, videos / f"clip{i}.mp4")
    log = tmp_path / "stderr.txt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[2])] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "extract", str(videos), "--out",
                                 str(tmp_path / "cache"), *args], stdout=subprocess.DEVNULL, stderr=err,
                                env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not busy(log.read_text(), _descendants(proc.pid)):
            assert proc.poll() is None, f"extract ended early ({proc.returncode}):\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(0.5)                             # the workers are extracting now
        started = _descendants(proc.pid)
        assert proc.poll() is None, "extract finished before it could be killed: give it more clips"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        deadline = time.monotonic() + GONE_WITHIN_S
        while any(_alive(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = {p: cmd for p, cmd in started.items() if _alive(p)}
        assert not left, f"left running {GONE_WITHIN_S:g} s after the kill: {left}"
        return started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_no_pool_worker_outlives_a_killed_extract(tmp_path, make_clip):
    clip = make_clip("Short and sweet.", audio=False, seed=4)
    started = _kill_extract_and_check(tmp_path, clip, ["--workers", "2"],
                                      busy=lambda err, procs: err.count(READY) >= 2)
    assert sum("multiprocessing" in cmd for cmd in started.values()) >= 2, started


def test_no_ray_process_outlives_a_killed_extract(tmp_path, make_clip):
    pytest.importorskip("ray")
    clip = make_clip("Short and sweet.", audio=False, seed=4)
    # an actor's process title is ray::ExtractWorker.run while it extracts a clip
    started = _kill_extract_and_check(tmp_path, clip, ["--engine", "ray", "--workers", "2"], n_clips=8,
                                      busy=lambda err, procs: any("ExtractWorker.run" in c for c in procs.values()))
    cmds = list(started.values())
    assert sum("ExtractWorker" in c for c in cmds) == 2, cmds       # the actors, and Ray's own processes
    assert any("raylet" in c for c in cmds) and any("gcs_server" in c for c in cmds), cmds
