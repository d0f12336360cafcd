"""The Ray engine (extract --engine ray) against the local engine, on one local Ray instance.

One Ray instance (2 CPUs, no dashboard) is shared by the tests of this module: the engine uses a
Ray that is already initialised as it is.  The clips are real (espeak-ng speech over the moving
astronaut face) and every actor loads the real offline models.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import PipelineConfig
from pipeline.extract.batch import run_extract
from pipeline.extract.cache import load_entry, read_manifest
from pipeline.extract.pool import worker_job

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]

CRASH_STEM = "b_crash"


@pytest.fixture(scope="module")
def local_ray():
    from ray import cloudpickle

    # the actors get this module's job functions by value (they cannot import a test module)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=128 * 1024 ** 2,
             configure_logging=False, log_to_driver=False)
    yield
    ray.shutdown()
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def die_on_one_clip(job: dict) -> dict:
    """An actor's job that notes each attempt (by process id), then kills its own process (as the OOM
    killer or a native crash would) for the clip named CRASH_STEM; every other clip is extracted."""
    path = Path(job["path"])
    if path.stem == CRASH_STEM:
        (path.parent / f".{CRASH_STEM}-try-{os.getpid()}").touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return worker_job(job)


def _without_timings(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k != "timings_s"}


def _assert_same_entry(a, b) -> None:
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and np.array_equal(x, y), f.name
        elif f.name == "meta":
            assert {k: v for k, v in x.items() if k != "timings_s"} == \
                   {k: v for k, v in y.items() if k != "timings_s"}
        else:
            assert x == y, f.name


def test_ray_engine_writes_what_the_local_engine_writes(tmp_path, local_ray, make_clip, speech_clip, capfd):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(speech_clip, videos / "a_speech.mp4")
    shutil.copy(make_clip("Short and sweet.", audio=False, seed=4), videos / "b_face.mp4")
    shutil.copy(make_clip("Another one.", audio=False, seed=7), videos / "c_face.mp4")
    (videos / "d_empty.mp4").write_bytes(b"")
    (videos / "e_corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"not a movie" * 50)

    local, viaray = tmp_path / "local", tmp_path / "ray"
    assert run_extract(PipelineConfig(), videos, local, None, workers=1) == 3
    capfd.readouterr()
    assert run_extract(PipelineConfig(), videos, viaray, None, workers=2, engine="ray") == 3
    err = capfd.readouterr().err
    assert "extracted 5 clips: 3 ok, 0 cached, 2 failed" in err, err[-3000:]

    a, b = read_manifest(local), read_manifest(viaray)
    assert [r["clip_id"] for r in b] == ["a_speech", "b_face", "c_face", "d_empty", "e_corrupt"]
    assert [_without_timings(r) for r in a] == [_without_timings(r) for r in b]
    statuses = {r["clip_id"]: r["status"] for r in b}
    assert statuses == {"a_speech": "ok", "b_face": "ok", "c_face": "ok", "d_empty": "failed", "e_corrupt": "failed"}
    assert "empty" in next(r for r in b if r["clip_id"] == "d_empty")["error"]
    assert sorted(p.name for p in (local / "entries").iterdir()) == sorted(p.name for p in (viaray / "entries").iterdir())
    for ra, rb in zip(a, b):
        if ra["entry"]:
            _assert_same_entry(load_entry(local / ra["entry"]), load_entry(viaray / rb["entry"]))
    speech = load_entry(viaray / b[0]["entry"])
    assert speech.transcript and speech.text_features.shape[0] > 2 and speech.face_mask.any()

    # a rerun finds every entry the actors wrote: nothing is extracted again, no actor is started
    assert run_extract(PipelineConfig(), videos, viaray, None, workers=2, engine="ray") == 3
    assert "extracted 5 clips: 0 ok, 3 cached, 2 failed" in capfd.readouterr().err


def test_a_clip_that_kills_its_actor_is_retried_once_on_a_fresh_actor_then_failed(tmp_path, local_ray, make_clip,
                                                                                   capfd):
    from pipeline.extract.ray_engine import ACTOR_DIED

    videos = tmp_path / "videos"
    videos.mkdir()
    for i, name in enumerate(("a_ok", CRASH_STEM, "c_ok")):
        shutil.copy(make_clip("Short and sweet.", audio=False, seed=20 + i), videos / f"{name}.mp4")
    out = tmp_path / "cache"
    code = run_extract(PipelineConfig(), videos, out, None, workers=2, engine="ray", job_fn=die_on_one_clip)
    err = capfd.readouterr().err
    assert code == 3, err[-3000:]
    assert "extracted 3 clips: 2 ok, 0 cached, 1 failed" in err
    tries = sorted(videos.glob(f".{CRASH_STEM}-try-*"))
    assert len(tries) == 2, tries                  # tried once more, in another (fresh) process
    m = {r["clip_id"]: r for r in read_manifest(out)}
    assert m[CRASH_STEM]["status"] == "failed" and m[CRASH_STEM]["entry"] is None
    assert m[CRASH_STEM]["error"] == f"{videos / (CRASH_STEM + '.mp4')}: {ACTOR_DIED}"
    for cid in ("a_ok", "c_ok"):
        assert m[cid]["status"] == "ok", m[cid]
        assert load_entry(out / m[cid]["entry"]).clip_id == cid


def test_the_actors_device_follows_their_gpus_and_bad_engine_settings_are_refused(tmp_path, speech_clip):
    from pipeline.config import load_config
    from pipeline.errors import UserError
    from pipeline.extract.ray_engine import ray_device

    def ecfg(*sets: str):
        return load_config(None, list(sets)).extract

    assert ray_device(ecfg()) == "cpu"
    assert ray_device(ecfg("extract.ray.num_gpus=1")) == "cuda"       # the driver needs no GPU of its own
    assert ray_device(ecfg("extract.ray.num_gpus=0.5", 'extract.device="cpu"')) == "cpu"
    with pytest.raises(UserError, match="num_gpus is 0") as e:
        ray_device(ecfg('extract.device="cuda"'))
    assert e.value.exit_code == 2
    with pytest.raises(UserError, match="--ray-address 'nohost'") as e:
        run_extract(PipelineConfig(), speech_clip, tmp_path / "c", None, None, engine="ray", ray_address="nohost")
    assert e.value.exit_code == 2
    with pytest.raises(UserError, match="unknown extract engine") as e:
        run_extract(PipelineConfig(), speech_clip, tmp_path / "c", None, None, engine="spark")
    assert e.value.exit_code == 2
    assert not (tmp_path / "c").exists()
