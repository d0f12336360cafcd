"""Probe and decode media files: stream facts (ffprobe), audio (ffmpeg) and video frames (OpenCV).

Why three functions: the extraction stage first asks :func:`probe` what a file holds (so a file
without audio or video is handled on purpose, not by accident), then demuxes the audio once to a
16 kHz mono float array with :func:`load_audio` (small: 600 s is 38 MB) and walks the video with
:func:`iter_frames`, which keeps one or two decoded frames in memory at a time, never the video.

Every problem is raised as :class:`~extractors.errors.ExtractionError` with one line that names
the file and the cause (empty, unreadable, not a media file, a still image, corrupt, no audio/video
stream).  Every tool is given the file's absolute path (:func:`media_target`), so a name such as
``x:y.mp4`` is never read as a URL protocol.
"""
from __future__ import annotations

import functools
import math
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from extractors.errors import ExtractionError
from extractors.packaged_models import first_installed

# ffprobe's format names for a single picture: the image2 demuxer (a file named .png, .jpg...) and the
# per-codec image pipes it uses when it recognises a picture by its content (png_pipe, jpeg_pipe, ...)
_STILL_IMAGE_FORMATS = ("image2", "image2pipe")


def media_target(path: Path) -> str:
    """The name to hand ffmpeg, ffprobe and OpenCV for ``path``: the absolute path.

    They read ``x:y.mp4`` as the file ``y.mp4`` of a protocol ``x``; an absolute path starts with
    "/" and is always a plain file.  Messages keep naming ``path`` as the caller gave it.
    """
    return os.path.abspath(os.fspath(path))


OPENCV_DISTS = ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless",
                "opencv-contrib-python")   # distributions that install the cv2 module


@functools.lru_cache(maxsize=1)
def ffmpeg_version() -> str:
    """The version of the ``ffmpeg`` program (it decodes and resamples the audio), or "unknown"."""
    try:
        out = subprocess.run(["ffmpeg", "-hide_banner", "-version"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    words = out.split()
    return words[2] if len(words) > 2 and words[:2] == ["ffmpeg", "version"] else "unknown"


def decode_versions() -> dict[str, str]:
    """What changes decoded audio and frames (for the cache key): the ffmpeg program and OpenCV."""
    return {"ffmpeg": ffmpeg_version(), "opencv": first_installed(*OPENCV_DISTS)}


@dataclass
class MediaInfo:
    """What a media file holds, as ffprobe reports it."""

    path: Path
    duration_s: float
    has_video: bool
    has_audio: bool
    fps: float | None          # container frame rate of the video stream (None without video)
    width: int                 # 0 without video
    height: int                # 0 without video


def _ffmpeg_cause(stderr: bytes | str | None) -> str:
    """The most telling line of an ffmpeg/ffprobe error output, made readable."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else (stderr or "")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    known = (
        ("moov atom not found", "corrupt or truncated file (mp4 index 'moov' missing)"),
        ("invalid data found when processing input", "not a media file or corrupt (ffmpeg cannot parse it)"),
        ("does not contain any stream", "no audio stream"),
        ("matches no streams", "no audio stream"),
        ("permission denied", "unreadable file (permission denied)"),
        ("no such file or directory", "file not found"),
    )
    for line in lines:
        low = line.lower()
        for needle, cause in known:
            if needle in low:
                return cause
    return f"ffmpeg failed: {lines[-1]}" if lines else "ffmpeg failed without a message"


def _looks_like_text(path: Path) -> bool:
    """True when the file's first KiB is plain text (a transcript or note saved as .mp4)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1024)
    except OSError:
        return False
    if not head or b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:        # a multi-byte character cut at the end is still text
            return False
    return True


def _check_readable(path: Path) -> None:
    """Raise for the cheap-to-detect problems before ffmpeg is started."""
    if not path.exists():
        raise ExtractionError(f"{path}: file not found")
    if path.is_dir():
        raise ExtractionError(f"{path}: is a directory, not a media file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            fh.read(1)
    except PermissionError:
        raise ExtractionError(f"{path}: unreadable file (permission denied)") from None
    except OSError as e:
        raise ExtractionError(f"{path}: unreadable file ({e.strerror or e})") from None
    if size == 0:
        raise ExtractionError(f"{path}: empty file (0 bytes)")


def _rate(text: str | None) -> float | None:
    """Parse an ffprobe rate like '30000/1001' into frames per second (None if unknown)."""
    if not text:
        return None
    try:
        num, _, den = text.partition("/")
        value = float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _float(value: object) -> float | None:
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f >= 0 else None


def probe(path: Path) -> MediaInfo:
    """Describe ``path`` with ffprobe; raise ExtractionError if it is not usable media.

    Raised for: missing file, directory, unreadable file, empty file, a file ffprobe cannot parse
    (text named .mp4, truncated mp4), a still picture (PNG, JPEG... named .mp4: ffprobe reads it with
    its image demuxer, ``image2`` or ``<codec>_pipe``), and media with neither an audio nor a video
    stream.  A file
    with only one of the two is *not* an error here: ``has_audio``/``has_video`` say so and the
    caller decides.  Cover art (attached pictures) in audio files does not count as video.
    """
    import ffmpeg

    path = Path(path)
    _check_readable(path)
    try:
        info = ffmpeg.probe(media_target(path))
    except ffmpeg.Error as e:
        if _looks_like_text(path):
            raise ExtractionError(f"{path}: not a media file (it holds plain text)") from None
        raise ExtractionError(f"{path}: {_ffmpeg_cause(e.stderr)}") from None
    except FileNotFoundError:
        raise ExtractionError(f"{path}: ffprobe is not installed (apt-get install ffmpeg)") from None

    streams = info.get("streams", [])
    video = [s for s in streams if s.get("codec_type") == "video"
             and not (s.get("disposition") or {}).get("attached_pic")]
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    if not video and not audio:
        raise ExtractionError(f"{path}: no audio or video stream (not a media file)")
    fmt = str((info.get("format") or {}).get("format_name") or "")
    if video and not audio and (fmt in _STILL_IMAGE_FORMATS or fmt.endswith("_pipe")):
        raise ExtractionError(f"{path}: a still image ({video[0].get('codec_name') or fmt}), not a video")

    durations = [_float((info.get("format") or {}).get("duration"))]
    durations += [_float(s.get("duration")) for s in video + audio]
    known = [d for d in durations if d]
    if not known:
        raise ExtractionError(f"{path}: corrupt file (no duration can be read)")
    duration = known[0]

    fps = width = height = None
    if video:
        v = video[0]
        fps = _rate(v.get("avg_frame_rate")) or _rate(v.get("r_frame_rate"))
        width, height = int(v.get("width") or 0), int(v.get("height") or 0)
        if width <= 0 or height <= 0:
            raise ExtractionError(f"{path}: corrupt video stream (no frame size)")
    return MediaInfo(path=path, duration_s=float(duration), has_video=bool(video), has_audio=bool(audio),
                     fps=fps, width=width or 0, height=height or 0)


def load_audio(path: Path, sample_rate: int) -> np.ndarray:
    """The first audio stream of ``path`` as float32 mono at ``sample_rate`` Hz, in [-1, 1].

    ffmpeg resamples and downmixes; the raw f32le samples are read from its stdout pipe.  A
    stream that decodes to nothing gives an empty array.  No audio stream, or a file ffmpeg
    cannot decode, raises ExtractionError.
    """
    import ffmpeg

    path = Path(path)
    _check_readable(path)
    try:
        out, err = (ffmpeg.input(media_target(path))["a:0"]
                  .output("pipe:", format="f32le", acodec="pcm_f32le", ac=1, ar=int(sample_rate))
                  .global_args("-nostdin", "-loglevel", "error")
                  .run(capture_stdout=True, capture_stderr=True))
    except ffmpeg.Error as e:
        raise ExtractionError(f"{path}: cannot decode audio: {_ffmpeg_cause(e.stderr)}") from None
    except FileNotFoundError:
        raise ExtractionError(f"{path}: ffmpeg is not installed (apt-get install ffmpeg)") from None
    if b"partial file" in (err or b""):
        raise ExtractionError(f"{path}: corrupt or truncated file (ffmpeg: partial file)")
    audio = np.frombuffer(out, dtype="<f4").astype(np.float32)
    audio = np.nan_to_num(audio, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(audio, -1.0, 1.0)


def iter_frames(path: Path, fps: float) -> Iterator[tuple[float, np.ndarray]]:
    """Yield ``(t, frame)`` for ``t = k / fps`` (k = 0, 1, ...): the decoded frame nearest ``t``.

    Frames are read one by one with OpenCV and dropped as soon as no later sample time can want
    them, so memory holds at most two frames whatever the video's length.  Source timestamps come
    from ``CAP_PROP_POS_MSEC`` (falling back to index / container fps when the container gives
    none).  The yielded time is the sampling time k/fps, a regular grid of period 1/fps; samples
    stop after the last frame's display interval.  ``frame`` is RGB uint8 (H, W, 3).

    Raises ExtractionError when no frame decodes (no video stream, not a video) and, after the
    last frame, when far fewer frames decoded than the container announces (truncated file).
    """
    import cv2

    path = Path(path)
    if not fps or fps <= 0 or not math.isfinite(fps):
        raise ValueError(f"fps must be positive, got {fps!r}")
    _check_readable(path)
    cap = cv2.VideoCapture(media_target(path))
    try:
        if not cap.isOpened():
            raise ExtractionError(f"{path}: cannot open video (no video stream, or not a video file)")
        src_fps = cap.get(cv2.CAP_PROP_FPS)
        src_period = 1.0 / src_fps if src_fps and math.isfinite(src_fps) and src_fps > 0 else 1.0 / fps
        step = 1.0 / fps
        k = 0                                  # index of the next sample time to fill
        prev: tuple[float, np.ndarray] | None = None
        last_t = -math.inf
        n_read = 0
        while True:
            ok, bgr = cap.read()
            if not ok or bgr is None:
                break
            t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if not math.isfinite(t) or t < 0 or (n_read > 0 and t <= last_t):
                t = last_t + src_period if n_read > 0 else 0.0   # container gave no usable timestamp
            n_read += 1
            last_t = t
            cur = (t, bgr)
            # every sample time up to t is now decided between prev and cur
            while k * step <= t:
                target = k * step
                # nearest frame; a tie goes to the earlier frame, the one on screen at `target`
                pick = cur if prev is None or abs(t - target) < abs(target - prev[0]) - 1e-6 else prev
                yield target, cv2.cvtColor(pick[1], cv2.COLOR_BGR2RGB)
                k += 1
            prev = cur
        if n_read == 0:
            raise ExtractionError(f"{path}: no video frames could be decoded (no video stream, or corrupt)")
        expected = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        if expected and math.isfinite(expected) and n_read < 0.9 * expected - 1:
            raise ExtractionError(f"{path}: corrupt or truncated video (decoded {n_read} of {int(expected)} frames)")
        assert prev is not None
        # the last frame is shown until last_t + src_period
        last_rgb = None
        while k * step < prev[0] + src_period - 1e-9:
            if last_rgb is None:
                last_rgb = cv2.cvtColor(prev[1], cv2.COLOR_BGR2RGB)
            yield k * step, last_rgb.copy()
            k += 1
    finally:
        cap.release()

