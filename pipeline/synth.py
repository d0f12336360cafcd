"""Synthetic but real media: espeak-ng speech over a video of a real face photograph.

Used by the tests and by the demo corpus.  The face is scikit-image's astronaut photograph (a real
face, public domain) with gentle head motion; ``expression`` in [-1, 1] is passed to
:func:`face_frames` so the demo can make the face carry signal.  Nothing here downloads anything.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from pathlib import Path
from typing import Iterator

import numpy as np

FACE_SIZE = 256  # output frame is FACE_SIZE x FACE_SIZE pixels


def speak(text: str, wav_path: Path, voice: str = "en-us", rate: int = 150, pitch: int = 50) -> float:
    """Speak ``text`` with espeak-ng into ``wav_path``; returns the duration in seconds."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "-w", str(wav_path), text],
                   check=True, capture_output=True)
    with wave.open(str(wav_path)) as w:
        return w.getnframes() / float(w.getframerate())


def base_face() -> np.ndarray:
    """The astronaut photograph cropped around the face, RGB uint8, FACE_SIZE square."""
    import cv2
    from skimage import data

    img = data.astronaut()  # 512x512 RGB; the face sits around rows 20-260, cols 120-360
    crop = img[10:290, 100:380]
    return cv2.resize(crop, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)


def face_frames(n_frames: int, fps: float, expression: float = 0.0, seed: int = 0) -> Iterator[np.ndarray]:
    """``n_frames`` RGB frames of the face with gentle motion (small sway, nod and zoom)."""
    import cv2

    face = base_face()
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    centre = (FACE_SIZE / 2, FACE_SIZE / 2)
    for i in range(n_frames):
        t = i / fps
        angle = 2.0 * np.sin(2 * np.pi * 0.4 * t + phase[0])
        scale = 1.0 + 0.02 * np.sin(2 * np.pi * 0.3 * t + phase[1])
        m = cv2.getRotationMatrix2D(centre, angle, scale)
        m[0, 2] += 3.0 * np.sin(2 * np.pi * 0.5 * t + phase[2])
        m[1, 2] += 2.0 * np.sin(2 * np.pi * 0.7 * t + phase[0])
        yield cv2.warpAffine(face, m, (FACE_SIZE, FACE_SIZE), borderMode=cv2.BORDER_REFLECT)


def blank_frames(n_frames: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Frames without any face: smooth coloured noise."""
    rng = np.random.default_rng(seed)
    for _ in range(n_frames):
        yield (rng.random((FACE_SIZE, FACE_SIZE, 3)) * 40 + 100).astype(np.uint8)


def write_video(frames: Iterator[np.ndarray], fps: float, out_path: Path, wav_path: Path | None = None) -> Path:
    """Encode RGB frames (and optionally a wav) to an H.264/AAC mp4 at ``out_path``."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["ffmpeg", "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{FACE_SIZE}x{FACE_SIZE}", "-r", str(fps), "-i", "-"]
    if wav_path is not None:
        cmd += ["-i", str(wav_path), "-c:a", "aac", "-b:a", "64k"]
    cmd += ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-shortest" if wav_path else "-an",
            str(out_path)]
    cmd = [c for c in cmd if c]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    for f in frames:
        proc.stdin.write(np.ascontiguousarray(f, dtype=np.uint8).tobytes())
    proc.stdin.close()
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.wait() != 0:
        raise RuntimeError(f"ffmpeg failed writing {out_path}: {err.strip()}")
    return out_path


def make_clip(out_path: Path, text: str, voice: str = "en-us", rate: int = 150, pitch: int = 50,
              fps: float = 25.0, expression: float = 0.0, face: bool = True, audio: bool = True,
              seed: int = 0, pad_s: float = 0.3) -> Path:
    """Make an mp4 of ``text`` spoken by espeak-ng over the moving face (or a faceless video).

    ``audio=False`` gives a video with no audio stream; the video lasts as long as the speech plus
    ``pad_s`` of silence-free margin.
    """
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        dur = speak(text, wav, voice=voice, rate=rate, pitch=pitch) if text else 1.0
        n = max(1, int(round((dur + pad_s) * fps)))
        frames = face_frames(n, fps, expression=expression, seed=seed) if face else blank_frames(n, seed)
        if audio and text:
            padded = Path(tmp) / "padded.wav"
            subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-i", str(wav), "-af",
                            f"apad=pad_dur={pad_s}", str(padded)], check=True)
            wav = padded
        return write_video(frames, fps, out_path, wav if (audio and text) else None)
