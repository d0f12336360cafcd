"""A guard process that ends the local Ray instance we started when the ``extract`` process dies.

``ray.init()`` started in this process runs a GCS server, a raylet, agents and the actors' worker
processes as its descendants.  A clean exit (or Ctrl-C) stops them with ``ray.shutdown()``; but a
driver killed with SIGKILL (the OOM killer, a cluster scheduler) runs no code, and Ray's dashboard
and runtime-env agents were measured to stay alive, orphaned, for good.  So before starting Ray the
engine starts this small process (:func:`start_reaper`, stdlib only, in its own session so that a
Ctrl-C at the terminal does not reach it).  It holds the read end of a pipe whose write end only
the driver holds; every ``POLL_S`` it notes the driver's descendants that are Ray's (started after
it, with ``ray`` in their command line, and everything below them, e.g. an actor's ffmpeg).  When
the pipe reads end-of-file (the driver closed it, or the kernel did because the driver died,
however), it sends SIGTERM to those still alive (the same process: pid and start time), SIGKILL
after ``GRACE_S``, and exits.

Run as ``python -m pipeline.extract.reaper DRIVER_PID`` with the pipe as standard input.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from typing import Iterator

POLL_S = 0.25          # how often the driver's descendants are listed
GRACE_S = 2.0          # SIGTERM, then SIGKILL after this many seconds


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/children") as fh:
                    out.extend(int(c) for c in fh.read().split())
            except OSError:
                pass
    except OSError:
        pass
    return out


def _start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks): tells a pid reused from ours."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[19] if fields[0] != "Z" else None     # a zombie is dead already


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _tree(pid: int, tracked_parent: bool, skip: set[int]) -> Iterator[tuple[int, bool]]:
    for child in _children(pid):
        if child in skip:
            continue
        ours = tracked_parent or "ray" in _cmdline(child)
        yield child, ours
        yield from _tree(child, ours, skip)


def reap(driver: int, pipe_fd: int = 0) -> int:
    """The guard's loop (see the module docstring); returns how many processes it had to end."""
    skip = {os.getpid()} | {pid for pid, _ in _tree(driver, False, set())}   # what ran before Ray
    tracked: dict[int, str] = {}
    while True:
        for pid, ours in _tree(driver, False, skip):
            if ours and pid not in tracked:
                start = _start_time(pid)
                if start is not None:
                    tracked[pid] = start
        ready, _, _ = select.select([pipe_fd], [], [], POLL_S)
        if ready and not os.read(pipe_fd, 4096):
            break
        if _start_time(driver) is None:          # belt and braces: the driver is gone
            break
    alive = {pid: s for pid, s in tracked.items() if _start_time(pid) == s}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + (GRACE_S if sig == signal.SIGTERM else 0.5)
        while time.monotonic() < deadline:
            alive = {pid: s for pid, s in alive.items() if _start_time(pid) == s}
            if not alive:
                break
            time.sleep(0.05)
        if not alive:
            break
    return len(tracked)


class Reaper:
    """The running guard: :meth:`close` after ``ray.shutdown()`` ends it (and whatever Ray left)."""

    def __init__(self, proc: subprocess.Popen, write_fd: int):
        self.proc = proc
        self.write_fd: int | None = write_fd

    def close(self, timeout_s: float = GRACE_S + 3.0) -> None:
        if self.write_fd is not None:
            os.close(self.write_fd)
            self.write_fd = None
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_reaper() -> Reaper:
    """Start the guard for this process (Linux: it reads /proc); call before ``ray.init``."""
    read_fd, write_fd = os.pipe()          # not inheritable: Ray's processes do not get the write end
    try:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.extract.reaper", str(os.getpid())],
                                stdin=read_fd, start_new_session=True, close_fds=True)
    finally:
        os.close(read_fd)
    return Reaper(proc, write_fd)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reap(int(sys.argv[1]))
