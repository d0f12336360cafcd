"""extractors.decode on real clips (espeak-ng speech over a real face) and on broken files."""
from __future__ import annotations

import inspect
import os
import shutil
import subprocess
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from extractors.decode import MediaInfo, iter_frames, load_audio, probe
from extractors.errors import ExtractionError


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory, speech_clip: Path) -> dict[str, Path]:
    """Bad inputs made from the speech clip (or from nothing)."""
    d = tmp_path_factory.mktemp("broken")
    files = {"empty": d / "empty.mp4", "text": d / "notes.mp4", "truncated": d / "truncated.mp4",
             "audio_only": d / "audio only.mp4", "faststart_truncated": d / "fs-truncated.mp4"}
    files["empty"].write_bytes(b"")
    files["text"].write_text("This is a transcript someone saved with the wrong extension.\n" * 20)
    data = speech_clip.read_bytes()
    files["truncated"].write_bytes(data[: len(data) // 2])
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-i", str(speech_clip), "-vn", "-c:a", "copy",
                    str(files["audio_only"])], check=True)
    faststart = d / "faststart.mp4"
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-i", str(speech_clip), "-c", "copy",
                    "-movflags", "+faststart", str(faststart)], check=True)
    fs = faststart.read_bytes()
    files["faststart_truncated"].write_bytes(fs[: len(fs) // 2])
    return files


def _one_line_naming(err: pytest.ExceptionInfo, path: Path) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path) in msg
    return msg.lower()


def test_probe_speech_clip(speech_clip: Path) -> None:
    info = probe(speech_clip)
    assert isinstance(info, MediaInfo)
    assert info.has_video and info.has_audio
    assert info.fps == pytest.approx(25.0)
    assert (info.width, info.height) == (256, 256)
    assert 2.0 < info.duration_s < 6.0


def test_load_audio_is_16k_mono_speech(speech_clip: Path) -> None:
    info = probe(speech_clip)
    audio = load_audio(speech_clip, 16000)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) / 16000 - info.duration_s) < 0.15
    assert np.abs(audio).max() <= 1.0
    assert np.sqrt(np.mean(audio ** 2)) > 0.01          # espeak speech, not silence
    audio8k = load_audio(speech_clip, 8000)
    assert abs(len(audio8k) * 2 - len(audio)) < 200


def test_frames_sampled_at_rate_and_rgb(speech_clip: Path) -> None:
    from pipeline.demo.synth import face_frames

    info = probe(speech_clip)
    frames = iter_frames(speech_clip, 15.0)
    assert inspect.isgenerator(frames)
    times, first = [], None
    for t, f in frames:
        times.append(t)
        if first is None:
            first = f
        assert f.shape == (256, 256, 3) and f.dtype == np.uint8
    times = np.array(times)
    assert np.allclose(np.diff(times), 1 / 15.0)
    assert times[0] == 0.0
    assert abs(len(times) - info.duration_s * 15) <= 2
    assert times[-1] < info.duration_s
    # the first decoded frame is the first frame synth rendered, in RGB order (BGR would differ a lot)
    expected = next(face_frames(1, 25.0, seed=0)).astype(np.float32)
    diff_rgb = np.abs(first.astype(np.float32) - expected).mean()
    diff_bgr = np.abs(first[..., ::-1].astype(np.float32) - expected).mean()
    assert diff_rgb < 8.0 and diff_bgr > 3 * diff_rgb


def test_frames_faster_than_source_repeat_nearest(speech_clip: Path) -> None:
    info = probe(speech_clip)
    frames = list(iter_frames(speech_clip, 50.0))
    assert abs(len(frames) - info.duration_s * 50) <= 3
    # at 50 fps over a 25 fps source every source frame is used, each twice in a row
    same = [np.array_equal(frames[k][1], frames[k + 1][1]) for k in range(len(frames) - 1)]
    assert all(same[0::2]) and not any(same[1::2])
    # at 10 fps every sample is the source frame nearest k/10: frame 2.5k, ties to the earlier one
    source = [f for _, f in iter_frames(speech_clip, 25.0)]
    sampled = list(iter_frames(speech_clip, 10.0))
    for k, (t, f) in enumerate(sampled):
        assert t == pytest.approx(k / 10)
        assert np.array_equal(f, source[int(np.floor(k * 2.5))])


def test_frames_are_streamed_not_loaded(make_clip) -> None:
    clip = make_clip("One two three four five six seven eight nine ten eleven twelve.", name="long.mp4")
    frame_bytes = 256 * 256 * 3
    tracemalloc.start()
    try:
        n = sum(1 for _ in iter_frames(clip, 25.0))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n > 60
    assert peak < 12 * frame_bytes, f"peak {peak / frame_bytes:.1f} frames for a {n}-frame video"


def test_missing_empty_and_directory(tmp_path: Path, broken: dict[str, Path]) -> None:
    with pytest.raises(ExtractionError) as e:
        probe(tmp_path / "nope.mp4")
    assert "not found" in _one_line_naming(e, tmp_path / "nope.mp4")
    with pytest.raises(ExtractionError) as e:
        probe(broken["empty"])
    assert "empty" in _one_line_naming(e, broken["empty"])
    folder = tmp_path / "clip.mp4"
    folder.mkdir()
    with pytest.raises(ExtractionError) as e:
        probe(folder)
    assert "directory" in _one_line_naming(e, folder)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root reads files whatever their permissions (chmod 000 cannot be tested)")
def test_unreadable_file(tmp_path: Path, speech_clip: Path) -> None:
    p = tmp_path / "locked.mp4"
    shutil.copy(speech_clip, p)
    p.chmod(0)
    try:
        with pytest.raises(ExtractionError) as e:
            probe(p)
        assert "permission" in _one_line_naming(e, p)
    finally:
        p.chmod(0o644)


def test_text_file_named_mp4(broken: dict[str, Path]) -> None:
    with pytest.raises(ExtractionError) as e:
        probe(broken["text"])
    assert "not a media file" in _one_line_naming(e, broken["text"])


def test_truncated_files(broken: dict[str, Path]) -> None:
    with pytest.raises(ExtractionError) as e:
        probe(broken["truncated"])
    assert "truncated" in _one_line_naming(e, broken["truncated"])
    # with the index at the front the header is intact, but decoding finds the data cut off
    p = broken["faststart_truncated"]
    assert probe(p).has_video
    with pytest.raises(ExtractionError) as e:
        load_audio(p, 16000)
    assert "truncated" in _one_line_naming(e, p)
    with pytest.raises(ExtractionError) as e:
        list(iter_frames(p, 15.0))
    assert "truncated" in _one_line_naming(e, p)


def test_video_without_audio_stream(make_clip) -> None:
    clip = make_clip("Nothing to hear here.", audio=False, name="silent-video.mp4")
    info = probe(clip)
    assert info.has_video and not info.has_audio
    assert len(list(iter_frames(clip, 15.0))) > 10
    with pytest.raises(ExtractionError) as e:
        load_audio(clip, 16000)
    assert "no audio stream" in _one_line_naming(e, clip)


def test_audio_only_mp4(broken: dict[str, Path]) -> None:
    p = broken["audio_only"]
    info = probe(p)
    assert info.has_audio and not info.has_video
    assert info.fps is None and info.width == 0
    assert len(load_audio(p, 16000)) > 16000
    with pytest.raises(ExtractionError) as e:
        list(iter_frames(p, 15.0))
    assert "video" in _one_line_naming(e, p)


def test_path_with_spaces_and_non_ascii(tmp_path: Path, speech_clip: Path) -> None:
    folder = tmp_path / "my clips — été"
    folder.mkdir()
    p = folder / "café ünïcode 映画 1.mp4"
    shutil.copy(speech_clip, p)
    info = probe(p)
    assert info.has_audio and info.has_video
    assert np.array_equal(load_audio(p, 16000), load_audio(speech_clip, 16000))
    n = sum(1 for _ in iter_frames(p, 15.0))
    assert n == sum(1 for _ in iter_frames(speech_clip, 15.0))


def test_colon_in_a_relative_name_is_a_file_not_a_protocol(tmp_path: Path, speech_clip: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # ffmpeg reads "take:2.mp4" as protocol "take" ("take 1:2.mp4" is safe by luck: the space ends
    # the protocol name); OpenCV hands the name to ffmpeg too
    names = ["take 1:2.mp4", "take:2.mp4", "file:x.mp4"]
    for name in names:
        shutil.copy(speech_clip, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    want_audio = load_audio(speech_clip, 16000)
    want_frames = sum(1 for _ in iter_frames(speech_clip, 15.0))
    for name in names:
        p = Path(name)
        assert not p.is_absolute()
        info = probe(p)
        assert info.has_audio and info.has_video and info.path == p
        assert np.array_equal(load_audio(p, 16000), want_audio)
        assert sum(1 for _ in iter_frames(p, 15.0)) == want_frames


@pytest.mark.parametrize("ext, codec", [(".png", "png"), (".jpg", "mjpeg")])
def test_still_image_named_mp4(tmp_path: Path, ext: str, codec: str) -> None:
    import cv2

    from pipeline.demo.synth import base_face

    picture = tmp_path / f"photo{ext}"
    assert cv2.imwrite(str(picture), base_face()[:, :, ::-1])
    p = tmp_path / "photo.mp4"
    picture.rename(p)
    with pytest.raises(ExtractionError) as e:
        probe(p)
    msg = _one_line_naming(e, p)
    assert f"a still image ({codec}), not a video" in msg
    assert "corrupt" not in msg
