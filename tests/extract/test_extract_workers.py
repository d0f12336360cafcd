"""The extract batch when things go wrong around the clips: a worker process that dies, a model that
cannot load, a clip over extract.max_duration_s, odd names given relatively.

The clips are real (espeak-ng speech over the moving astronaut face, pipeline.demo.synth) and every
run loads the real offline models.  Clips without an audio stream are used where speech is not the
point: they need no speech recogniser, which keeps the worker processes quick to start.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.extract.cache import load_entry, read_manifest
from pipeline.config import PipelineConfig, with_overrides
from pipeline.errors import UserError
from pipeline.extract.batch import run_extract
from pipeline.extract.pool import WORKER_DIED, worker_job

pytestmark = pytest.mark.usefixtures("torch_one_thread")

CRASH_STEM = "b_crash"
FIRST_STEM = "a_ok"


def die_on_one_clip(job: dict) -> dict:
    """A worker's job that kills its own process (as the OOM killer or a native crash would) for the
    clip named CRASH_STEM, and extracts every other clip as usual.  Runs in spawned worker processes,
    which import it from this module by name.

    The first time it is given FIRST_STEM it blocks (until the broken pool terminates its process),
    so that clip is certainly in flight when the crash breaks the pool; run again later, it extracts
    the clip.  The death must be noticed while the other clip still runs: a pool that noticed it only
    at its next result (as a ProcessPoolExecutor does for a process it spawned after its manager
    thread last woke) would leave this test waiting out the sleep."""
    path = Path(job["path"])
    if path.stem == CRASH_STEM:
        os.kill(os.getpid(), signal.SIGKILL)
    first_try = path.parent / f".{FIRST_STEM}-tried"
    if path.stem == FIRST_STEM and not first_try.exists():
        first_try.touch()
        time.sleep(600)
    return worker_job(job)


@pytest.fixture(scope="module")
def short_clip(make_clip) -> Path:
    """A clip of about 1.3 s: the face, no audio stream."""
    return make_clip("Short and sweet.", audio=False, seed=4)


def test_a_worker_that_dies_fails_only_its_own_clip(tmp_path, make_clip, short_clip, capfd, caplog):
    caplog.set_level(logging.WARNING, logger="pipeline.extract.pool")
    videos = tmp_path / "videos"
    videos.mkdir()
    for i, name in enumerate((FIRST_STEM, CRASH_STEM, "c_ok", "d_ok")):
        shutil.copy(make_clip("Short and sweet.", audio=False, seed=10 + i) if i else short_clip,
                    videos / f"{name}.mp4")
    out = tmp_path / "cache"
    code = run_extract(PipelineConfig(), videos, out, None, workers=2, job_fn=die_on_one_clip)
    err = capfd.readouterr().err
    assert code == 3, err[-3000:]
    assert "extracted 4 clips: 3 ok, 0 cached, 1 failed" in err
    m = {r["clip_id"]: r for r in read_manifest(out)}
    assert [r["clip_id"] for r in read_manifest(out)] == ["a_ok", CRASH_STEM, "c_ok", "d_ok"]
    bad = m[CRASH_STEM]
    assert bad["status"] == "failed" and bad["entry"] is None
    assert bad["error"] == f"{videos / (CRASH_STEM + '.mp4')}: {WORKER_DIED}"
    assert "on its own" in bad["error"] and "died" in bad["error"]
    for cid in ("a_ok", "c_ok", "d_ok"):
        rec = m[cid]
        assert rec["status"] == "ok" and rec["error"] is None, rec
        clip = load_entry(out / rec["entry"])
        assert clip.clip_id == cid and clip.face_mask.mean() >= 0.9 and clip.flags == ["no_audio"]
    # the clip in flight with the crash was run again, not failed
    assert any("a worker process died with 2 clips in flight" in r.getMessage() for r in caplog.records)


def test_a_speech_model_that_cannot_load_stops_the_run_with_exit_2(tmp_path, speech_clip):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(speech_clip, videos / "speech.mp4")          # no transcript: needs the recogniser
    out = tmp_path / "cache"
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "extract", str(videos), "--set",
                           "extract.asr.model=/nonexistent/folder", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if "/nonexistent/folder" in ln]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "extract.asr.model" in lines[0] and "folder not found" in lines[0]
    assert "extracted" not in proc.stderr                     # no summary: no clip is blamed for it
    assert not list((out / "entries").glob("*.npz"))


def test_a_speech_model_that_cannot_load_in_a_worker_stops_the_run(tmp_path, speech_clip, short_clip):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(speech_clip, videos / "speech.mp4")
    shutil.copy(short_clip, videos / "silent.mp4")
    cfg = with_overrides(PipelineConfig(), {"extract.asr.model": "small.en"})   # a hub name, offline
    with pytest.raises(UserError) as e:
        run_extract(cfg, videos, tmp_path / "cache", None, workers=2)
    assert e.value.exit_code == 2
    msg = str(e.value)
    assert "'small.en'" in msg and "extract.asr.model" in msg and "\n" not in msg


def test_max_duration_fails_the_long_clip_and_odd_relative_names_extract(tmp_path, speech_clip, short_clip,
                                                                          monkeypatch, capfd):
    """extract.max_duration_s below one clip's length; the others named with a colon, given as "."."""
    from extractors.decode import probe

    long_s, short_s = probe(speech_clip).duration_s, probe(short_clip).duration_s
    limit = round((long_s + short_s) / 2, 1)
    assert short_s < limit < long_s
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(speech_clip, videos / "long.mp4")
    names = ["take 1:2", "take:3"]          # "take:3.mp4" is what ffmpeg would read as protocol "take"
    for name in names:
        shutil.copy(short_clip, videos / f"{name}.mp4")
    cfg = with_overrides(PipelineConfig(), {"extract.max_duration_s": limit})
    monkeypatch.chdir(videos)
    out = tmp_path / "cache"
    code = run_extract(cfg, Path("."), out, None, workers=1)
    err = capfd.readouterr().err
    assert code == 3, err[-3000:]
    assert "extracted 3 clips: 2 ok, 0 cached, 1 failed" in err
    m = {r["clip_id"]: r for r in read_manifest(out)}
    rec = m["long"]
    assert rec["status"] == "failed" and rec["path"] == "long.mp4"
    assert rec["error"] == (f"long.mp4: too long ({long_s:.1f} s; extract.max_duration_s is {limit:g} s): "
                            "cut it into clips or raise the limit")
    for name in names:
        rec = m[name]
        assert rec["status"] == "ok" and rec["path"] == f"{name}.mp4", rec
        clip = load_entry(out / rec["entry"])
        assert clip.face_mask.mean() >= 0.9 and abs(clip.duration_s - short_s) < 0.01
